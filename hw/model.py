"""The two attention units as trees of components, and their evaluation.

A :class:`Design` fixes the workload (n keys, d_head, heads, N), the technology (node,
clock) and the architecture choices (lanes, CAM readout, top-N algorithm, exp kind,
storage, power mode). :func:`evaluate` builds

- SA (standard bf16 attention): ``qk`` (MAC array), ``softmax``, ``av`` (MAC array),
  [``storage``: K and V SRAM];
- HAD: ``qk`` (CAM + readout, or XNOR-popcount lanes), ``topn``, ``softmax`` over N,
  ``av`` (sparse MAC array over N value rows), [``storage``: V SRAM, plus binary K when
  the scores are digital],

and returns per block: area (m^2), energy per query (J), power (W), cycles per query.

Conventions (all per query token, all heads):
- a :class:`Part` is ``instances`` copies of one component, each doing one ``action``
  per clock cycle when busy, ``count`` actions per query;
- energy per query = sum over parts of count x energy(action);
- area = sum over parts of instances x area;
- cycles per query = max over parts of ceil(count / busy) (parts pipeline), where busy
  = actions per cycle (one per instance unless stated: an SRAM delivers the bits its
  lanes read per cycle; idle provisioned lanes are not busy);
- power: ``peak`` = clock x sum over parts of busy x energy(action) (every
  instance acts every cycle: what a synthesis report at full activity gives; provisioned
  but idle lanes are clock-gated); ``matched`` = energy per query x one query rate for
  every block of both units (default: the slowest block's rate).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from hadref.errors import HadrefError

from . import components as C
from .tables import TechLibrary, library

BLOCKS = ("qk", "topn", "softmax", "av", "storage")
CHOICES = {
    "accumulate": ("bf16", "fp32"),
    "qk_impl": ("cam", "xnor"),
    "readout": ("comparator", "adc"),
    "topn": ("threshold", "counting", "heap", "insertion"),
    "exp": ("poly", "lut"),
    "power_mode": ("peak", "matched"),
}


@dataclass(frozen=True)
class Design:
    """One design point. Sizes are counts, ``node_nm`` in nm, ``clock_hz`` in Hz.

    seq: keys per query row (n); dim: head size d (bits per binary key); heads: heads
    computed per query token (h); top_n: N selected keys per row; av_rows_provisioned:
    value rows the sparse A V lanes are built for (>= N; None = N).
    mac_lanes: bf16 MAC lanes of each SA matmul. Every other block is sized to keep up
    with the query rate those lanes give, r0 = mac_lanes x clock / (n d h):
    softmax lanes = ceil(r0 x elements / clock) unless ``softmax_lanes`` is given (the
    same count in SA and HAD), HAD A V lanes = ceil(mac_lanes x N / n) busy, and
    ceil(mac_lanes x av_rows_provisioned / n) built.
    cam_cell_f2, cam_search_fj_per_bit: None = the published tables.
    calibration: {"sa.softmax": (k_area, k_energy), ...} multiplies a block's area and
    energies (the paper preset's fitted factors for blocks the paper does not describe).
    """

    seq: int = 256
    dim: int = 1024
    heads: int = 1
    top_n: int = 30
    av_rows_provisioned: int | None = None
    node_nm: float = 65.0
    clock_hz: float = 1e9
    mac_lanes: int = 4096
    softmax_lanes: int | None = None
    accumulate: str = "bf16"
    qk_impl: str = "cam"
    readout: str = "comparator"
    topn: str = "threshold"
    exp: str = "poly"
    storage: bool = False
    power_mode: str = "peak"
    query_rate: float | None = None
    cam_cell_f2: float | None = None
    cam_search_fj_per_bit: float | None = None
    calibration: dict = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self):
        for opt, value in (("--seq", self.seq), ("--dim", self.dim), ("--heads", self.heads),
                           ("--top-n", self.top_n), ("--lanes", self.mac_lanes),
                           ("--softmax-lanes", 1 if self.softmax_lanes is None
                            else self.softmax_lanes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HadrefError(f"{opt} {value!r}: expected a positive integer")
        if self.top_n > self.seq:
            raise HadrefError(f"--top-n {self.top_n}: expected at most --seq ({self.seq})")
        prov = self.av_rows_provisioned
        if prov is not None and not (self.top_n <= prov <= self.seq):
            raise HadrefError(f"av_rows_provisioned {prov}: expected between --top-n "
                              f"({self.top_n}) and --seq ({self.seq})")
        for opt, value in (("--node", self.node_nm), ("--clock", self.clock_hz)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise HadrefError(f"{opt} {value!r}: expected a positive number")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise HadrefError(f"--{key.replace('_', '-')} {getattr(self, key)!r}: "
                                  f"expected one of {', '.join(allowed)}")
        if self.query_rate is not None and not (self.query_rate > 0):
            raise HadrefError(f"--rate {self.query_rate!r}: expected a positive number")
        if self.query_rate is not None and self.power_mode != "matched":
            raise HadrefError(f"--rate {self.query_rate:g}: applies only with --power matched")
        for key, value in (("cam_cell_f2", self.cam_cell_f2),
                           ("cam_search_fj_per_bit", self.cam_search_fj_per_bit)):
            if value is not None and not value > 0:
                raise HadrefError(f"{key} {value!r}: expected a positive number")
        for block, factors in self.calibration.items():
            if block not in ("sa.qk", "sa.softmax", "sa.av", "had.qk", "had.topn",
                             "had.softmax", "had.av") or len(factors) != 2 or \
                    not all(f > 0 for f in factors):
                raise HadrefError(f"calibration {block!r}: expected (k_area > 0, k_energy > 0)"
                                  " for one of sa.qk/softmax/av, had.qk/topn/softmax/av")

    def replace(self, **changes) -> "Design":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_provisioned(self) -> int:
        return self.top_n if self.av_rows_provisioned is None else self.av_rows_provisioned

    @property
    def baseline_rate(self) -> float:
        """r0 = mac_lanes x clock / (n d h): queries/s the SA MAC lanes sustain."""
        return self.mac_lanes * self.clock_hz / (self.seq * self.dim * self.heads)

    def lanes_for(self, actions_per_query: int) -> int:
        """Lanes that keep up with r0: ceil(r0 x actions / clock) (exact integer form)."""
        return -(-self.mac_lanes * actions_per_query // (self.seq * self.dim * self.heads))


@dataclass(frozen=True)
class Part:
    """``instances`` copies of ``component``; ``count`` actions per query; ``busy``
    actions per cycle when working (default: one per instance); area of all instances."""

    label: str
    component: C.Component
    instances: int
    action: str
    count: int
    busy: int | None = None

    @property
    def area(self) -> float:
        return self.instances * self.component.area

    @property
    def energy_per_query(self) -> float:
        return self.count * self.component.energy(self.action)

    def peak_energy_per_cycle(self) -> float:
        busy = self.instances if self.busy is None else self.busy
        return busy * self.component.energy(self.action)

    @property
    def cycles_per_query(self) -> int:
        busy = self.instances if self.busy is None else self.busy
        return -(-self.count // busy) if self.count else 0


@dataclass
class Block:
    """A unit's block (qk, topn, softmax, av, storage): parts and a calibration."""

    name: str
    parts: list[Part]
    k_area: float = 1.0
    k_energy: float = 1.0

    @property
    def area(self) -> float:
        """m^2."""
        return self.k_area * sum(p.area for p in self.parts)

    @property
    def energy_per_query(self) -> float:
        """J per query."""
        return self.k_energy * sum(p.energy_per_query for p in self.parts)

    def peak_power(self, clock_hz: float) -> float:
        """W with every busy instance acting every cycle."""
        return self.k_energy * clock_hz * sum(p.peak_energy_per_cycle() for p in self.parts)

    @property
    def cycles_per_query(self) -> int:
        return max((p.cycles_per_query for p in self.parts), default=0)

    def max_rate(self, clock_hz: float) -> float:
        """Queries/s this block sustains (inf for an empty block)."""
        cyc = self.cycles_per_query
        return clock_hz / cyc if cyc else math.inf


# ---------------------------------------------------------------------------- builders

def _sa_blocks(d: Design, lib: TechLibrary) -> dict[str, Block]:
    n, dh, h = d.seq, d.dim, d.heads
    mac = C.MacUnit(lib, d.accumulate)
    sm_lanes = d.lanes_for(n * h) if d.softmax_lanes is None else d.softmax_lanes
    blocks = {
        # Q K^T: n x d x h MACs per query on mac_lanes lanes
        "qk": Block("qk", [Part("mac", mac, d.mac_lanes, "mac", n * dh * h)]),
        "topn": Block("topn", []),
        # softmax over n scores per head: n x h elements, h reciprocals (2 iterations each)
        "softmax": Block("softmax", [
            Part("lane", C.SoftmaxLane(lib, C.ExpUnit(lib, "poly")), sm_lanes, "element", n * h),
            Part("reciprocal", C.Reciprocal(lib), 1, "iteration", C.Reciprocal.ITERATIONS * h)]),
        # A V: n x d x h MACs per query
        "av": Block("av", [Part("mac", mac, d.mac_lanes, "mac", n * dh * h)]),
    }
    parts = []
    if d.storage:
        # K and V as bf16: n x d x h x 16 bits each, all read once per query
        kv_bits = n * dh * h * C.BF16_BITS
        per_cycle = d.mac_lanes * C.BF16_BITS  # bits the MAC lanes consume per cycle
        parts = [Part("k_sram", C.SRAM(lib, kv_bits), 1, "read_bit", kv_bits, busy=per_cycle),
                 Part("v_sram", C.SRAM(lib, kv_bits), 1, "read_bit", kv_bits, busy=per_cycle)]
    blocks["storage"] = Block("storage", parts)
    return blocks


def _topn_parts(d: Design, lib: TechLibrary, digital_scores: bool) -> list[Part]:
    n, dh, h, N = d.seq, d.dim, d.heads, d.top_n
    b = C.score_bits(dh)          # score levels: d+1
    cbits = C.score_bits(n)       # a count of up to n keys
    entry = b + cbits             # (score, key index)
    mask = C.Register(lib, n)     # the selected set, written once per row
    if d.topn == "threshold":
        # binary search of the score threshold over d+1 levels: b steps; each step counts
        # the keys at or above the trial threshold (popcount of n flags) and compares the
        # count with N; then the flags at the final threshold are the selected set.
        parts = [Part("popcount", C.Popcount(lib, n), h, "count", b * h),
                 Part("count_cmp", C.DigitalComparator(lib, cbits), h, "compare", b * h),
                 Part("threshold_reg", C.Register(lib, b), h, "write", b * h),
                 Part("mask", mask, h, "write", h)]
        if digital_scores:  # no analog comparators: n digital b-bit compares per step
            parts.append(Part("score_cmp", C.DigitalComparator(lib, b), n * h, "compare",
                              n * h * b))
        return parts
    if not digital_scores:
        raise HadrefError(f"--topn {d.topn}: needs digital scores; with the CAM use "
                          "--readout adc (or --qk xnor), or --topn threshold")
    if d.topn == "counting":
        # histogram of the n scores over d+1 levels (one increment per score), a prefix
        # sum from the top level down to find the N-th score, then n compares to select
        return [Part("histogram", C.Register(lib, cbits), (dh + 1) * h, "write", n * h,
                     busy=h),
                Part("adder", C.IntAdder(lib, cbits), h, "add", (n + dh + 1) * h),
                Part("select_cmp", C.DigitalComparator(lib, b), h, "compare", n * h),
                Part("mask", mask, h, "write", h)]
    if d.topn == "heap":
        # min-heap of N (score, index) entries; each of the n scores is compared with the
        # root and, worst case, sifted down ceil(log2 N) levels (2 compares, 1 write each)
        levels = max(1, math.ceil(math.log2(N))) if N > 1 else 1
        return [Part("entries", C.Register(lib, entry), N * h, "write", n * h * (levels + 1),
                     busy=h),
                Part("cmp", C.DigitalComparator(lib, b), h, "compare", n * h * (2 * levels + 1)),
                Part("mask", mask, h, "write", h)]
    # insertion: a systolic sorted array of N cells; every cell compares each incoming
    # score and (worst case) shifts its entry: n x N compares and writes per row
    return [Part("cmp", C.DigitalComparator(lib, b), N * h, "compare", n * N * h),
            Part("entries", C.Register(lib, entry), N * h, "write", n * N * h),
            Part("mask", mask, h, "write", h)]


def _had_blocks(d: Design, lib: TechLibrary) -> dict[str, Block]:
    n, dh, h, N = d.seq, d.dim, d.heads, d.top_n
    b = C.score_bits(dh)
    if d.qk_impl == "cam":
        cam = C.CAMArray(lib, n, dh, cell_area_f2=d.cam_cell_f2,
                         search_energy_per_bit=(None if d.cam_search_fj_per_bit is None
                                                else d.cam_search_fj_per_bit * 1e-15))
        qk = [Part("cam", cam, h, "search", h)]   # one array per head, one search each
        if d.readout == "comparator":
            # one latch comparator per match line; one compare per threshold step
            steps = b if d.topn == "threshold" else 1
            qk.append(Part("readout", C.LatchComparator(lib), n * h, "compare", n * h * steps))
            digital = False
        else:
            # one ADC per match line, b bits, one conversion per query
            qk.append(Part("readout", C.ADC(lib, b), n * h, "convert", n * h))
            digital = True
    else:
        # XNOR + popcount lanes, one key score per lane per cycle; keys as bits in SRAM
        qk = [Part("xnor_popcount", C.XnorPopcount(lib, dh), d.lanes_for(n * h), "score",
                   n * h)]
        digital = True
    exp = C.ExpUnit(lib, d.exp, lut_entries=dh + 1)
    lane = C.SoftmaxLane(lib, exp, integer_score_bits=b)  # max - s in [0, d]
    mac = C.MacUnit(lib, d.accumulate)
    av_active = d.lanes_for(N * dh * h)
    av_built = d.lanes_for(d.n_provisioned * dh * h)
    blocks = {
        "qk": Block("qk", qk),
        "topn": Block("topn", _topn_parts(d, lib, digital)),
        # softmax over the N survivors: N x h elements, h reciprocals
        "softmax": Block("softmax", [
            Part("lane", lane, d.lanes_for(N * h) if d.softmax_lanes is None
                 else d.softmax_lanes, "element", N * h),
            Part("reciprocal", C.Reciprocal(lib), 1, "iteration", C.Reciprocal.ITERATIONS * h)]),
        # sparse A V: N x d x h MACs (only the N selected value rows are read)
        "av": Block("av", [Part("mac", mac, av_built, "mac", N * dh * h, busy=av_active)]),
    }
    parts = []
    if d.storage:
        v_bits = n * dh * h * C.BF16_BITS
        parts.append(Part("v_sram", C.SRAM(lib, v_bits), 1, "read_bit", N * dh * h * C.BF16_BITS,
                          busy=av_active * C.BF16_BITS))
        if d.qk_impl == "xnor":  # binary keys live in SRAM instead of the CAM
            k_bits = n * dh * h
            parts.append(Part("k_bits", C.SRAM(lib, k_bits), 1, "read_bit", k_bits,
                              busy=qk[0].instances * dh))
    blocks["storage"] = Block("storage", parts)
    return blocks


# -------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class BlockResult:
    """One block's figures: area (m^2), energy per query (J), power (W), max rate (1/s)."""

    area: float
    energy_per_query: float
    power: float
    max_rate: float


@dataclass(frozen=True)
class Result:
    """SA and HAD per block (``sa``/``had``: {block: BlockResult}, plus ``total``),
    the query rate used for ``matched`` power, and the design."""

    design: Design
    sa: dict
    had: dict
    query_rate: float
    bottleneck: str
    units: dict  # {"sa": {block: Block}, "had": {...}} for inspection

    @property
    def area_reduction(self) -> float:
        """1 - HAD total area / SA total area."""
        return 1.0 - self.had["total"].area / self.sa["total"].area

    @property
    def power_reduction(self) -> float:
        """1 - HAD total power / SA total power."""
        return 1.0 - self.had["total"].power / self.sa["total"].power

    @property
    def energy_reduction(self) -> float:
        """1 - HAD energy per query / SA energy per query."""
        return 1.0 - (self.had["total"].energy_per_query / self.sa["total"].energy_per_query)


def build(design: Design, lib: TechLibrary | None = None) -> dict:
    """The component trees: {"sa": {block: Block}, "had": {block: Block}}."""
    lib = library(design.node_nm) if lib is None else lib
    units_ = {"sa": _sa_blocks(design, lib), "had": _had_blocks(design, lib)}
    for key, (ka, ke) in design.calibration.items():
        unit, block = key.split(".")
        units_[unit][block].k_area, units_[unit][block].k_energy = ka, ke
    return units_


def evaluate(design: Design, lib: TechLibrary | None = None) -> Result:
    """Area, energy per query and power of every block of SA and HAD for ``design``."""
    units_ = build(design, lib)
    f = design.clock_hz
    rates = {f"{u}.{b}": blk.max_rate(f) for u, blocks in units_.items()
             for b, blk in blocks.items()}
    bottleneck = min(rates, key=rates.get)
    rate = design.query_rate if design.query_rate is not None else rates[bottleneck]
    if design.power_mode == "matched" and rate > rates[bottleneck] * (1 + 1e-12):
        raise HadrefError(f"--rate {rate:.4g} queries/s: exceeds what {bottleneck} sustains "
                          f"({rates[bottleneck]:.4g}/s); add lanes or lower the rate")
    out = {}
    for u, blocks in units_.items():
        res = {}
        for b, blk in blocks.items():
            e = blk.energy_per_query
            p = blk.peak_power(f) if design.power_mode == "peak" else e * rate
            res[b] = BlockResult(blk.area, e, p, blk.max_rate(f))
        res["total"] = BlockResult(sum(r.area for r in res.values()),
                                   sum(r.energy_per_query for r in res.values()),
                                   sum(r.power for r in res.values()),
                                   min(r.max_rate for r in res.values()))
        out[u] = res
    return Result(design, out["sa"], out["had"], rate, bottleneck, units_)

"""The two attention units as trees of components, and their evaluation.

A :class:`Design` fixes the workload (n keys, d_head, query heads h, key/value heads h_kv,
layers L, N), the technology (node, clock) and the architecture choices (lanes, CAM
readout, top-N algorithm, exp kind, storage, leakage, power mode). :func:`evaluate` builds

- SA (standard bf16 attention): ``qk`` (MAC array), ``softmax``, ``av`` (MAC array),
  [``storage``: K and V SRAM];
- HAD: ``qk`` (CAM + readout, or XNOR-popcount lanes), ``topn``, ``softmax`` over N,
  ``av`` (sparse MAC array over N value rows), [``storage``: V SRAM, plus binary K when
  the scores are digital],

and returns per block: area (m^2), energy per query (J), power (W), leakage (W), cycles
per query; and the per-token ``write`` of the decode path (the new key into the CAM or the
K SRAM, the new value into the V SRAM), whose arrays' area is counted in qk / storage.

Conventions (all per query token, all heads of all layers):
- a query is one token's attention: h x L head-queries against n keys each; the compute
  blocks (lanes, softmax, top-N) serve one layer at a time (layers are sequential), the
  arrays (CAM, K/V SRAM) hold all L layers: h_kv x L CAMs of n x d cells; with grouped
  query heads (g = h / h_kv) one CAM serves its g query heads;
- a :class:`Part` is ``instances`` copies of one component, each doing one ``action``
  per clock cycle when busy, ``count`` actions per query;
- energy per query = sum over parts of count x energy(action);
- area = sum over parts of instances x area;
- cycles per query of a block = max over parts of ceil(count / busy) (parts pipeline), busy
  = actions per cycle (one per instance unless stated: an SRAM delivers the bits its
  lanes read per cycle; idle provisioned lanes are not busy);
- power: ``peak`` = clock x sum over parts of busy x energy(action) (every
  instance acts every cycle: what a synthesis report at full activity gives; provisioned
  but idle lanes are clock-gated); ``matched`` = energy per query x one query rate for
  every block of both units (default: the slowest block's rate);
- leakage (static power, W) is modelled for the arrays only (CAM cells, K/V SRAM bits):
  bits x W per bit from 65nm.toml (``--leakage hp`` or ``lp``), scaled to the node with the
  energy factor; it is not part of ``power`` (which stays the dynamic power the paper's
  table reports) and is charged per token in :mod:`hadref.hw.phases`.
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
    "leakage": ("hp", "lp"),
}


@dataclass(frozen=True)
class Design:
    """One design point. Sizes are counts, ``node_nm`` in nm, ``clock_hz`` in Hz.

    seq: keys per query row (n); dim: head size d (bits per binary key); heads: query
    heads per layer (h); kv_heads: key/value heads per layer (h_kv, None = h; h must be a
    multiple: one CAM / K, V store per key head serves h / h_kv query heads); layers: L
    (counts per query cover all layers); top_n: N selected keys per row; av_rows_provisioned:
    value rows the sparse A V lanes are built for (>= N; None = N).
    mac_lanes: bf16 MAC lanes of each SA matmul. Every other block is sized to keep up
    with the query rate those lanes give, r0 = mac_lanes x clock / (n d h L):
    softmax lanes = ceil(r0 x elements / clock) unless ``softmax_lanes`` is given (the
    same count in SA and HAD), HAD A V lanes = ceil(mac_lanes x N / n) busy, and
    ceil(mac_lanes x av_rows_provisioned / n) built.
    cam_cell_f2, cam_search_fj_per_bit: None = the published tables.
    leakage: ``hp`` (CACTI 65 nm high-performance SRAM, upper bound) or ``lp`` (measured
    low-power retention leakage, lower bound), W per bit in 65nm.toml.
    token_rate: decoded tokens/s at which leakage is charged per token (None = the slower
    unit's batch-1 decode rate), see :mod:`hadref.hw.phases`.
    calibration: {"sa.softmax": (k_area, k_energy), ...} multiplies a block's area and
    energies (the paper preset's fitted factors for blocks the paper does not describe).
    """

    seq: int = 256
    dim: int = 1024
    heads: int = 1
    top_n: int = 30
    kv_heads: int | None = None
    layers: int = 1
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
    leakage: str = "hp"
    token_rate: float | None = None
    calibration: dict = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self):
        for opt, value in (("--seq", self.seq), ("--dim", self.dim), ("--heads", self.heads),
                           ("--top-n", self.top_n), ("--lanes", self.mac_lanes),
                           ("--softmax-lanes", 1 if self.softmax_lanes is None
                            else self.softmax_lanes), ("--layers", self.layers),
                           ("--kv-heads", self.n_kv_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HadrefError(f"{opt} {value!r}: expected a positive integer")
        if self.heads % self.n_kv_heads:
            raise HadrefError(f"--kv-heads {self.n_kv_heads}: expected a divisor of --heads "
                              f"({self.heads}): each key head serves a whole group of query heads")
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
        if self.token_rate is not None and not (isinstance(self.token_rate, (int, float))
                                                and math.isfinite(self.token_rate)
                                                and self.token_rate > 0):
            raise HadrefError(f"--token-rate {self.token_rate!r}: expected a positive number")
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
    def n_kv_heads(self) -> int:
        """h_kv: key/value heads per layer (``kv_heads``, or ``heads`` when None)."""
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def group(self) -> int:
        """g = h / h_kv: query heads served by one CAM (one K, V store)."""
        return self.heads // self.n_kv_heads

    @property
    def n_provisioned(self) -> int:
        return self.top_n if self.av_rows_provisioned is None else self.av_rows_provisioned

    @property
    def baseline_rate(self) -> float:
        """r0 = mac_lanes x clock / (n d h L): queries/s the SA MAC lanes sustain."""
        return self.mac_lanes * self.clock_hz / self._sa_macs

    @property
    def _sa_macs(self) -> int:
        return self.seq * self.dim * self.heads * self.layers

    def lanes_for(self, actions_per_query: int) -> int:
        """Lanes that keep up with r0: ceil(r0 x actions / clock) (exact integer form)."""
        return -(-self.mac_lanes * actions_per_query // self._sa_macs)


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
    target: str | None = None  # write parts: the block whose array they write

    @property
    def area(self) -> float:
        return self.instances * self.component.area

    @property
    def leakage(self) -> float:
        """W: instances x the component's leakage."""
        return self.instances * self.component.leakage

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

    @property
    def leakage(self) -> float:
        """W (not calibrated: the calibration factors are fitted to dynamic power)."""
        return sum(p.leakage for p in self.parts)

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
    n, dh, h, hk, L, g = d.seq, d.dim, d.heads, d.n_kv_heads, d.layers, d.group
    q, kv = h * L, hk * L          # head-queries per token; key/value heads stored
    mac = C.MacUnit(lib, d.accumulate)
    sm_lanes = d.lanes_for(n * q) if d.softmax_lanes is None else d.softmax_lanes
    blocks = {
        # Q K^T: n x d x h x L MACs per query on mac_lanes lanes
        "qk": Block("qk", [Part("mac", mac, d.mac_lanes, "mac", n * dh * q)]),
        "topn": Block("topn", []),
        # softmax over n scores per head: n x h x L elements, h L reciprocals (2 iterations)
        "softmax": Block("softmax", [
            Part("lane", C.SoftmaxLane(lib, C.ExpUnit(lib, "poly")), sm_lanes, "element", n * q),
            Part("reciprocal", C.Reciprocal(lib), 1, "iteration", C.Reciprocal.ITERATIONS * q)]),
        # A V: n x d x h x L MACs per query
        "av": Block("av", [Part("mac", mac, d.mac_lanes, "mac", n * dh * q)]),
    }
    parts, writes = [], []
    if d.storage:
        # K and V as bf16: n x d x h_kv x L x 16 bits each; each K (V) element is read once
        # per query and serves the g query heads of its group
        kv_bits = n * dh * kv * C.BF16_BITS
        per_cycle = -(-d.mac_lanes * C.BF16_BITS // g)  # bits the MAC lanes consume per cycle
        k_sram, v_sram = C.SRAM(lib, kv_bits, d.leakage), C.SRAM(lib, kv_bits, d.leakage)
        parts = [Part("k_sram", k_sram, 1, "read_bit", kv_bits, busy=per_cycle),
                 Part("v_sram", v_sram, 1, "read_bit", kv_bits, busy=per_cycle)]
        # decode: the new token's key and value rows, d x 16 bits per key head and layer,
        # one row per key head per cycle
        row = dh * C.BF16_BITS
        writes = [Part("k_write", k_sram, 1, "write_bit", row * kv, busy=row * hk,
                       target="storage"),
                  Part("v_write", v_sram, 1, "write_bit", row * kv, busy=row * hk,
                       target="storage")]
    blocks["storage"] = Block("storage", parts)
    blocks["write"] = Block("write", writes)
    return blocks


def _topn_parts(d: Design, lib: TechLibrary, digital_scores: bool) -> list[Part]:
    """Top-N units: h instances (one layer's query heads), counts over h x L rows."""
    n, dh, h, N = d.seq, d.dim, d.heads, d.top_n
    q = h * d.layers
    b = C.score_bits(dh)          # score levels: d+1
    cbits = C.score_bits(n)       # a count of up to n keys
    entry = b + cbits             # (score, key index)
    mask = C.Register(lib, n)     # the selected set, written once per row
    if d.topn == "threshold":
        # binary search of the score threshold over d+1 levels: b steps; each step counts
        # the keys at or above the trial threshold (popcount of n flags) and compares the
        # count with N; then the flags at the final threshold are the selected set.
        parts = [Part("popcount", C.Popcount(lib, n), h, "count", b * q),
                 Part("count_cmp", C.DigitalComparator(lib, cbits), h, "compare", b * q),
                 Part("threshold_reg", C.Register(lib, b), h, "write", b * q),
                 Part("mask", mask, h, "write", q)]
        if digital_scores:  # no analog comparators: n digital b-bit compares per step
            parts.append(Part("score_cmp", C.DigitalComparator(lib, b), n * h, "compare",
                              n * q * b))
        return parts
    if not digital_scores:
        raise HadrefError(f"--topn {d.topn}: needs digital scores; with the CAM use "
                          "--readout adc (or --qk xnor), or --topn threshold")
    if d.topn == "counting":
        # histogram of the n scores over d+1 levels (one increment per score), a prefix
        # sum from the top level down to find the N-th score, then n compares to select
        return [Part("histogram", C.Register(lib, cbits), (dh + 1) * h, "write", n * q,
                     busy=h),
                Part("adder", C.IntAdder(lib, cbits), h, "add", (n + dh + 1) * q),
                Part("select_cmp", C.DigitalComparator(lib, b), h, "compare", n * q),
                Part("mask", mask, h, "write", q)]
    if d.topn == "heap":
        # min-heap of N (score, index) entries; each of the n scores is compared with the
        # root and, worst case, sifted down ceil(log2 N) levels (2 compares, 1 write each)
        levels = max(1, math.ceil(math.log2(N))) if N > 1 else 1
        return [Part("entries", C.Register(lib, entry), N * h, "write", n * q * (levels + 1),
                     busy=h),
                Part("cmp", C.DigitalComparator(lib, b), h, "compare", n * q * (2 * levels + 1)),
                Part("mask", mask, h, "write", q)]
    # insertion: a systolic sorted array of N cells; every cell compares each incoming
    # score and (worst case) shifts its entry: n x N compares and writes per row
    return [Part("cmp", C.DigitalComparator(lib, b), N * h, "compare", n * N * q),
            Part("entries", C.Register(lib, entry), N * h, "write", n * N * q),
            Part("mask", mask, h, "write", q)]


def _had_blocks(d: Design, lib: TechLibrary) -> dict[str, Block]:
    n, dh, h, hk, L, N = d.seq, d.dim, d.heads, d.n_kv_heads, d.layers, d.top_n
    q, kv = h * L, hk * L
    b = C.score_bits(dh)
    writes = []
    if d.qk_impl == "cam":
        cam = C.CAMArray(lib, n, dh, cell_area_f2=d.cam_cell_f2,
                         search_energy_per_bit=(None if d.cam_search_fj_per_bit is None
                                                else d.cam_search_fj_per_bit * 1e-15),
                         leakage_kind=d.leakage)
        # one array per key head and layer; each query head searches its group's array;
        # the h_kv arrays of one layer search at once
        qk = [Part("cam", cam, kv, "search", q, busy=hk)]
        if d.readout == "comparator":
            # one latch comparator per match line; one compare per threshold step
            steps = b if d.topn == "threshold" else 1
            qk.append(Part("readout", C.LatchComparator(lib), n * kv, "compare", n * q * steps,
                           busy=n * hk))
            digital = False
        else:
            # one ADC per match line, b bits, one conversion per query
            qk.append(Part("readout", C.ADC(lib, b), n * kv, "convert", n * q, busy=n * hk))
            digital = True
        # decode: the new key's d sign bits into one row of each of its h_kv x L arrays
        writes.append(Part("cam_write", cam, kv, "write_row", kv, busy=hk, target="qk"))
    else:
        # XNOR + popcount lanes, one key score per lane per cycle; keys as bits in SRAM
        qk = [Part("xnor_popcount", C.XnorPopcount(lib, dh), d.lanes_for(n * q), "score",
                   n * q)]
        digital = True
    exp = C.ExpUnit(lib, d.exp, lut_entries=dh + 1)
    lane = C.SoftmaxLane(lib, exp, integer_score_bits=b)  # max - s in [0, d]
    mac = C.MacUnit(lib, d.accumulate)
    av_active = d.lanes_for(N * dh * q)
    av_built = d.lanes_for(d.n_provisioned * dh * q)
    blocks = {
        "qk": Block("qk", qk),
        "topn": Block("topn", _topn_parts(d, lib, digital)),
        # softmax over the N survivors: N x h x L elements, h L reciprocals
        "softmax": Block("softmax", [
            Part("lane", lane, d.lanes_for(N * q) if d.softmax_lanes is None
                 else d.softmax_lanes, "element", N * q),
            Part("reciprocal", C.Reciprocal(lib), 1, "iteration", C.Reciprocal.ITERATIONS * q)]),
        # sparse A V: N x d x h x L MACs (only the N selected value rows are read)
        "av": Block("av", [Part("mac", mac, av_built, "mac", N * dh * q, busy=av_active)]),
    }
    parts = []
    if d.storage:
        # V as bf16 for every key head and layer; each query head reads its own N rows
        v_sram = C.SRAM(lib, n * dh * kv * C.BF16_BITS, d.leakage)
        parts.append(Part("v_sram", v_sram, 1, "read_bit", N * dh * q * C.BF16_BITS,
                          busy=av_active * C.BF16_BITS))
        row = dh * C.BF16_BITS
        writes.append(Part("v_write", v_sram, 1, "write_bit", row * kv, busy=row * hk,
                           target="storage"))
        if d.qk_impl == "xnor":  # binary keys live in SRAM instead of the CAM
            k_sram = C.SRAM(lib, n * dh * kv, d.leakage)
            parts.append(Part("k_bits", k_sram, 1, "read_bit", n * dh * q,
                              busy=qk[0].instances * dh))
            writes.append(Part("k_write", k_sram, 1, "write_bit", dh * kv, busy=dh * hk,
                               target="storage"))
    blocks["storage"] = Block("storage", parts)
    blocks["write"] = Block("write", writes)
    return blocks


# -------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class BlockResult:
    """One block's figures: area (m^2), energy per query (J), power (W, dynamic), max rate
    (queries/s), leakage (W, static) and cycles per query.

    For ``total``: sums, except max_rate (the slowest block's, blocks pipelined across
    queries) and cycles (the sum over blocks: one query alone, blocks in sequence).
    For a unit's ``write``: energy and cycles per decoded token; its arrays' area and
    leakage are counted in qk / storage, so area and leakage are 0 there.
    """

    area: float
    energy_per_query: float
    power: float
    max_rate: float
    leakage: float = 0.0
    cycles: int = 0


@dataclass(frozen=True)
class Result:
    """SA and HAD per block (``sa``/``had``: {block: BlockResult}, plus ``total``),
    each unit's per-token key/value ``write`` ({"sa": BlockResult, "had": ...}),
    the query rate used for ``matched`` power, and the design."""

    design: Design
    sa: dict
    had: dict
    query_rate: float
    bottleneck: str
    units: dict  # {"sa": {block: Block}, "had": {...}} for inspection (with "write")
    write: dict = field(default_factory=dict)

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
    """The component trees: {"sa": {block: Block}, "had": {block: Block}}; the blocks are
    ``BLOCKS`` (per query) and ``write`` (per decoded token)."""
    lib = library(design.node_nm) if lib is None else lib
    units_ = {"sa": _sa_blocks(design, lib), "had": _had_blocks(design, lib)}
    for key, (ka, ke) in design.calibration.items():
        unit, block = key.split(".")
        units_[unit][block].k_area, units_[unit][block].k_energy = ka, ke
    return units_


def evaluate(design: Design, lib: TechLibrary | None = None) -> Result:
    """Area, energy per query, power, leakage and cycles of every block of SA and HAD for
    ``design``, and the per-token write."""
    units_ = build(design, lib)
    f = design.clock_hz
    rates = {f"{u}.{b}": blocks[b].max_rate(f) for u, blocks in units_.items()
             for b in BLOCKS}
    bottleneck = min(rates, key=rates.get)
    rate = design.query_rate if design.query_rate is not None else rates[bottleneck]
    if design.power_mode == "matched" and rate > rates[bottleneck] * (1 + 1e-12):
        raise HadrefError(f"--rate {rate:.4g} queries/s: exceeds what {bottleneck} sustains "
                          f"({rates[bottleneck]:.4g}/s); add lanes or lower the rate")
    out, writes = {}, {}
    for u, blocks in units_.items():
        res = {}
        for b in BLOCKS:
            blk = blocks[b]
            e = blk.energy_per_query
            p = blk.peak_power(f) if design.power_mode == "peak" else e * rate
            res[b] = BlockResult(blk.area, e, p, blk.max_rate(f), blk.leakage,
                                 blk.cycles_per_query)
        res["total"] = BlockResult(sum(r.area for r in res.values()),
                                   sum(r.energy_per_query for r in res.values()),
                                   sum(r.power for r in res.values()),
                                   min(r.max_rate for r in res.values()),
                                   sum(r.leakage for r in res.values()),
                                   sum(r.cycles for r in res.values()))
        out[u] = res
        w = blocks["write"]
        writes[u] = BlockResult(0.0, w.energy_per_query, w.peak_power(f), w.max_rate(f), 0.0,
                                w.cycles_per_query)
    return Result(design, out["sa"], out["had"], rate, bottleneck, units_, writes)

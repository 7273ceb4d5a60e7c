"""Hardware components: each has an ``area`` (m^2 per instance) and named actions.

Following Accelergy/hwcomponents, a component is a datasheet: ``area`` is the area of one
instance and ``energy(action)`` the energy in J of one action, where one action is what one
instance does in one clock cycle. ``actions`` lists the action names. Constants come from a
:class:`~hadref.hw.tables.TechLibrary` (published tables, scaled to its node); nothing
numeric is hard-coded here except structural counts (how many adders a popcount tree has),
which are formulas in the docstrings.
"""

from __future__ import annotations

import math

from hadref.errors import HadrefError

from . import units
from .tables import TechLibrary

BF16_BITS = 16


def score_bits(d: int) -> int:
    """Bits of a Hamming score over ``d`` bits: it takes d+1 values, so ceil(log2(d+1))."""
    return max(1, math.ceil(math.log2(d + 1)))


def popcount_fa_bits(m: int) -> int:
    """Full-adder bits in a popcount (adder) tree over ``m`` one-bit inputs.

    Level k (k = 1, 2, ...) adds pairs of k-bit partial counts: ceil(m / 2^k) adders of
    k bits each, until one count is left. For m = 256: sum_k 256/2^k * k = 502.
    """
    total, width, count = 0, 1, m
    while count > 1:
        adders = count // 2
        total += adders * width
        count = adders + (count % 2)
        width += 1
    return total


class Component:
    """Base: ``area`` in m^2 per instance; ``energy(action)`` in J per action; ``leakage``
    in W per instance (static power; modelled for the storage arrays only, 0 for logic)."""

    name = "component"

    def __init__(self, area: float, actions: dict[str, float], leakage: float = 0.0):
        self.area = float(area)
        self.leakage = float(leakage)
        self._actions = {k: float(v) for k, v in actions.items()}

    @property
    def actions(self) -> tuple[str, ...]:
        """Names of this component's actions."""
        return tuple(self._actions)

    def energy(self, action: str) -> float:
        """Energy in J of one ``action`` by one instance."""
        try:
            return self._actions[action]
        except KeyError:
            raise HadrefError(f"{self.name}: no action {action!r} "
                              f"(has {', '.join(self._actions)})") from None

    @staticmethod
    def latency(clock_hz: float) -> float:
        """Latency in s of one action: one clock cycle."""
        return 1.0 / clock_hz

    @staticmethod
    def throughput(clock_hz: float) -> float:
        """Actions per second per instance: one per cycle."""
        return clock_hz

    def __repr__(self):
        acts = ", ".join(f"{k}={units.to_pj(v):.4g} pJ" for k, v in self._actions.items())
        return f"<{self.name}: area={units.to_um2(self.area):.4g} um2, {acts}>"


class MacUnit(Component):
    """bf16 multiply-accumulate: bf16 multiplier + adder (bf16 or fp32 accumulate).

    Action ``mac``: one multiply and one add. Horowitz has no bf16: its fp16 multiplier is
    used (an upper bound: bf16 has an 8 b significand, fp16 11 b).
    """

    name = "mac"

    def __init__(self, lib: TechLibrary, accumulate: str = "bf16"):
        add = {"bf16": "fp16_add", "fp32": "fp32_add"}.get(accumulate)
        if add is None:
            raise HadrefError(f"--accumulate {accumulate!r}: expected bf16 or fp32")
        super().__init__(
            lib.area("fp16_mult", "area_um2") + lib.area(add, "area_um2"),
            {"mac": lib.energy("fp16_mult", "energy_pj") + lib.energy(add, "energy_pj")})


class FloatUnit(Component):
    """One floating-point operator from the tables (``fp16_add``, ``fp32_mult``, ...)."""

    def __init__(self, lib: TechLibrary, entry: str):
        self.name = entry
        super().__init__(lib.area(entry, "area_um2"), {"op": lib.energy(entry, "energy_pj")})


class IntAdder(Component):
    """``bits``-bit ripple adder: bits x (Horowitz 32 b int add / 32). Action ``add``."""

    name = "int_adder"

    def __init__(self, lib: TechLibrary, bits: int):
        super().__init__(bits * lib.area("int32_add", "area_um2") / 32,
                         {"add": bits * lib.energy("int32_add", "energy_pj") / 32})


class Register(Component):
    """``bits`` flip-flops (Aladdin). Action ``write``: all bits written once."""

    name = "register"

    def __init__(self, lib: TechLibrary, bits: int):
        super().__init__(bits * lib.area("register", "area_um2_per_bit"),
                         {"write": bits * lib.energy("register", "energy_fj_per_bit")})


class DigitalComparator(Component):
    """``bits``-bit magnitude comparator: bits x (Aladdin 32 b comparator / 32)."""

    name = "comparator"

    def __init__(self, lib: TechLibrary, bits: int):
        super().__init__(bits * lib.area("comparator_32b", "area_um2") / 32,
                         {"compare": bits * lib.energy("comparator_32b", "energy_fj") / 32})


class Popcount(Component):
    """Adder tree counting the ones among ``inputs`` bits: popcount_fa_bits(inputs) full
    adders, each 1/32 of Horowitz's 32 b int add. Action ``count``."""

    name = "popcount"

    def __init__(self, lib: TechLibrary, inputs: int):
        fa = popcount_fa_bits(inputs)
        super().__init__(fa * lib.area("int32_add", "area_um2") / 32,
                         {"count": fa * lib.energy("int32_add", "energy_pj") / 32})


class XnorPopcount(Component):
    """Digital Hamming score of one key: ``bits`` XNOR gates + a popcount tree.

    Action ``score``: d XNORs (Aladdin XOR per bit) + popcount over d bits. The digital
    alternative to the CAM.
    """

    name = "xnor_popcount"

    def __init__(self, lib: TechLibrary, bits: int):
        pop = Popcount(lib, bits)
        super().__init__(
            bits * lib.area("xor_32b", "area_um2") / 32 + pop.area,
            {"score": bits * lib.energy("xor_32b", "energy_fj") / 32 + pop.energy("count")})


class ADC(Component):
    """ADC of ``bits`` bits: Murmann fit at 6 b x 2^(bits-6) (energy and area).

    Action ``convert``: one conversion.
    """

    name = "adc"

    def __init__(self, lib: TechLibrary, bits: int):
        scale = 2.0 ** (bits - 6)
        super().__init__(lib.area("adc_6b", "area_um2") * scale,
                         {"convert": lib.energy("adc_6b", "energy_pj") * scale})


class LatchComparator(Component):
    """Clocked analog comparator (sense amplifier) comparing a match line with a reference.

    One of the 2^6 - 1 = 63 comparators of the 6 b flash ADC of the Murmann fit: energy and
    area of ``adc_6b`` / 63 (about 63 fJ and 254 um2 at 65 nm; Eva-CAM's sense amplifier,
    90 fJ at 65 nm, agrees). Action ``compare``.
    """

    name = "latch_comparator"

    def __init__(self, lib: TechLibrary):
        super().__init__(lib.area("adc_6b", "area_um2") / 63,
                         {"compare": lib.energy("adc_6b", "energy_pj") / 63})


LEAKAGE_ENTRIES = {"hp": "sram_leakage_hp", "lp": "sram_leakage_lp"}


def sram_leakage_per_bit(lib: TechLibrary, kind: str = "hp") -> float:
    """Leakage of one SRAM bit in W: ``hp`` = CACTI 65 nm high-performance (upper bound),
    ``lp`` = Wang et al. JSSC 2008 measured low-power retention leakage (lower bound)."""
    entry = LEAKAGE_ENTRIES.get(kind)
    if entry is None:
        raise HadrefError(f"--leakage {kind!r}: expected one of {', '.join(LEAKAGE_ENTRIES)}")
    return lib.leakage(entry)


def cam_leakage_per_bit(lib: TechLibrary, kind: str = "hp") -> float:
    """Leakage of one CAM cell in W: an SRAM bit's x (CACTI CAM cell / SRAM cell area,
    292 / 146 = 2): the compare transistors leak like the storage ones (an assumption;
    the fitted cell area, which includes capacitors and periphery, is not used here)."""
    ratio = lib.cell_area_f2("cam_cell") / lib.cell_area_f2("sram_cell")
    return ratio * sram_leakage_per_bit(lib, kind)


class CAMArray(Component):
    """Capacitive (charge-sharing) CAM array of ``rows`` keys x ``bits`` bits.

    Area: rows x bits x cell_area_f2 x F^2 (cells only; readout is its own component).
    Action ``search``: the query drives ``bits`` search lines, each charging ``rows`` cells,
    and every match line charge-shares across its ``bits`` cells, so the energy is
    rows x bits x search_energy_per_bit. After the search each match line's voltage is
    proportional to its number of matching bits (d - Hamming distance).
    Action ``write_row``: one key (``bits`` cells of one row) written, bits x E_cam_write
    (``cam_row_write``: an SRAM row write, an assumption marked in 65nm.toml).
    Leakage: rows x bits x :func:`cam_leakage_per_bit`.
    """

    name = "cam_array"

    def __init__(self, lib: TechLibrary, rows: int, bits: int, *,
                 cell_area_f2: float | None = None, search_energy_per_bit: float | None = None,
                 leakage_kind: str = "hp"):
        f2 = lib.cell_area_f2("cam_cell") if cell_area_f2 is None else cell_area_f2
        e_bit = (lib.energy("cam_search", "energy_fj_per_bit")
                 if search_energy_per_bit is None else search_energy_per_bit)
        self.cell_area_f2 = f2
        self.search_energy_per_bit = e_bit
        self.write_energy_per_bit = lib.energy("cam_row_write", "energy_pj_per_bit")
        self.leakage_per_bit = cam_leakage_per_bit(lib, leakage_kind)
        self.rows, self.bits = rows, bits
        super().__init__(rows * bits * f2 * units.feature_area(lib.node_nm),
                         {"search": rows * bits * e_bit,
                          "write_row": bits * self.write_energy_per_bit},
                         leakage=rows * bits * self.leakage_per_bit)


class SRAM(Component):
    """SRAM macro of ``bits`` bits (128 KB-class buffer constants, Accelergy Eyeriss).

    Area: bits x per-bit area. Action ``read_bit``: one bit read; ``write_bit``: one bit
    written (CACTI's write/read ratio applied to the read energy, 65nm.toml).
    Leakage: bits x :func:`sram_leakage_per_bit`.
    """

    name = "sram"

    def __init__(self, lib: TechLibrary, bits: int, leakage_kind: str = "hp"):
        self.bits = bits
        self.leakage_per_bit = sram_leakage_per_bit(lib, leakage_kind)
        super().__init__(bits * lib.area("sram_buffer_read", "area_um2_per_bit"),
                         {"read_bit": lib.energy("sram_buffer_read", "energy_pj_per_bit"),
                          "write_bit": lib.energy("sram_buffer_write", "energy_pj_per_bit")},
                         leakage=bits * self.leakage_per_bit)


class ExpUnit(Component):
    """exp() of one element, action ``exp``.

    ``poly``: range reduction (1 fp16 mult + 1 fp16 add) + degree-3 Horner polynomial
    (3 mult + 3 add): 4 fp16 mult + 4 fp16 add, pipelined, one element per cycle.
    ``lut``: HAD's scores are integers, so exp of (score - max) takes at most
    ``lut_entries`` = d+1 values: a (d+1) x 16 b table (SRAM cells, 146 F^2 each) read
    once (16 bits x Horowitz small-SRAM read energy).
    """

    name = "exp"

    def __init__(self, lib: TechLibrary, kind: str = "poly", lut_entries: int = 0):
        if kind == "poly":
            mult, add = FloatUnit(lib, "fp16_mult"), FloatUnit(lib, "fp16_add")
            area = 4 * mult.area + 4 * add.area
            energy = 4 * mult.energy("op") + 4 * add.energy("op")
        elif kind == "lut":
            if lut_entries < 1:
                raise HadrefError("--exp lut: needs integer scores (HAD) with d+1 table entries")
            bits = lut_entries * BF16_BITS
            area = bits * lib.cell_area_f2("sram_cell") * units.feature_area(lib.node_nm)
            energy = BF16_BITS * lib.energy("sram_8kb_read", "energy_pj_per_bit")
        else:
            raise HadrefError(f"--exp {kind!r}: expected poly or lut")
        self.kind = kind
        super().__init__(area, {"exp": energy})


class SoftmaxLane(Component):
    """One softmax element per cycle, action ``element``:

    float scores (SA): max-compare (fp16 add) + subtract max (fp16 add) + scale by
    1/sqrt(d) (fp16 mult) + exp + running sum (fp32 add) + normalise (fp16 mult).
    integer scores (HAD): the max-compare and subtract are ``score_bits``-bit integer
    adds; the rest as above (the scale sigma_q sigma_k / sqrt(d) is folded into a LUT exp).
    """

    name = "softmax_lane"

    def __init__(self, lib: TechLibrary, exp: ExpUnit, integer_score_bits: int = 0):
        fadd, acc = FloatUnit(lib, "fp16_add"), FloatUnit(lib, "fp32_add")
        fmul = FloatUnit(lib, "fp16_mult")
        if integer_score_bits:
            sub = IntAdder(lib, integer_score_bits)
            front_area, front_e = 2 * sub.area, 2 * sub.energy("add")
        else:
            front_area, front_e = 2 * fadd.area, 2 * fadd.energy("op")
        scale_mults = 1 if (exp.kind == "poly") else 0
        n_mult = 1 + scale_mults
        super().__init__(
            front_area + exp.area + acc.area + n_mult * fmul.area,
            {"element": front_e + exp.energy("exp") + acc.energy("op") + n_mult * fmul.energy("op")})


class Reciprocal(Component):
    """1 / sum for a softmax row: Newton-Raphson x <- x (2 - a x), two iterations on one
    iterative datapath of 2 fp16 mult + 1 fp16 add. Action ``iteration``."""

    name = "reciprocal"

    def __init__(self, lib: TechLibrary):
        mult, add = FloatUnit(lib, "fp16_mult"), FloatUnit(lib, "fp16_add")
        super().__init__(2 * mult.area + add.area,
                         {"iteration": 2 * mult.energy("op") + add.energy("op")})

    ITERATIONS = 2

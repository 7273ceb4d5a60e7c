"""Per-token cost of the two phases of a decoder: prefill and decode.

A :class:`~hadref.hw.model.Result` gives each block's energy and cycles for one query (one
token's attention, all heads of all layers, against n keys) and each unit's ``write`` (the
token's key into the CAM or K SRAM, its value into the V SRAM). The phases combine them:

- **decode** (one query against a cache of n keys, batch 1): the token's key and value are
  written, then its query runs. Energy per token = write + query blocks + leakage, where
  leakage per token = the arrays' static power / the token rate. Cycles per token =
  write cycles + the sum over the query blocks (a lone query: write, Q K^T, top-N, softmax,
  A V, each waiting for the previous; every count already covers the L layers, which run in
  sequence). Latency = cycles / clock; the batch-1 rate = clock / cycles.
- **prefill** (n queries against n keys): the n keys and values are written, then the n
  queries run, pipelined across queries: the initiation interval II = max over blocks of
  (block cycles + cycles of the writes into that block's array: an array cannot write and
  be searched or read in the same cycle). Throughput = clock / II; the prompt takes
  n x II / clock (pipeline fill ignored). Dynamic energy per token is the decode one at the
  same n (every query sees all n keys: no causal saving is claimed for either unit, and SA
  reads K and V once per query, with no reuse across a tile of queries); leakage per token
  = static power / the prefill throughput.

The token rate that leakage is charged at is one rate for both units, so that the units
are compared at equal throughput: decode, ``design.token_rate`` (``--token-rate``) or else
the slower unit's batch-1 rate; prefill, the slower unit's throughput. Asking a unit for a
decode rate above its batch-1 rate is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from hadref.errors import HadrefError

from .model import BLOCKS, Result

COMPONENTS = ("write",) + BLOCKS + ("leakage", "total")
PHASES = ("decode", "prefill")


@dataclass(frozen=True)
class PhaseUnit:
    """One unit in one phase. ``energy`` (J per token) and ``cycles`` (per token) by
    component in :data:`COMPONENTS` (leakage has no cycles; total cycles: decode = the
    sum, prefill = the initiation interval); ``leakage_w`` the arrays' static power (W);
    ``max_rate`` tokens/s this unit sustains in this phase."""

    energy: dict
    cycles: dict
    leakage_w: float
    max_rate: float


@dataclass(frozen=True)
class Phase:
    """``name`` (decode or prefill), ``context`` n, ``tokens`` (1 or n), ``token_rate``
    (tokens/s at which leakage is charged and average power taken), ``clock_hz``, and
    ``sa`` / ``had`` :class:`PhaseUnit`."""

    name: str
    context: int
    tokens: int
    token_rate: float
    clock_hz: float
    sa: PhaseUnit
    had: PhaseUnit

    def latency(self, unit: str) -> float:
        """s: decode, one token; prefill, the whole prompt of n tokens."""
        u = getattr(self, unit)
        return self.tokens * u.cycles["total"] / self.clock_hz

    def power(self, unit: str) -> float:
        """W: energy per token x the token rate (dynamic and leakage)."""
        return getattr(self, unit).energy["total"] * self.token_rate

    @property
    def energy_reduction(self) -> float:
        """1 - HAD energy per token / SA energy per token."""
        return 1.0 - self.had.energy["total"] / self.sa.energy["total"]


def _dynamic(result: Result, unit: str) -> dict:
    res = getattr(result, unit)
    energy = {"write": result.write[unit].energy_per_query}
    energy.update({b: res[b].energy_per_query for b in BLOCKS})
    return energy


def _decode_cycles(result: Result, unit: str) -> dict:
    res = getattr(result, unit)
    cycles = {"write": result.write[unit].cycles}
    cycles.update({b: res[b].cycles for b in BLOCKS})
    cycles["leakage"] = 0
    cycles["total"] = sum(cycles[c] for c in ("write",) + BLOCKS)
    return cycles


def _prefill_cycles(result: Result, unit: str) -> dict:
    res = getattr(result, unit)
    writes = result.units[unit]["write"].parts
    cycles = {"write": result.write[unit].cycles}
    cycles.update({b: res[b].cycles for b in BLOCKS})
    cycles["leakage"] = 0
    busy = []
    for b in BLOCKS:
        into = [p.cycles_per_query for p in writes if p.target == b]
        busy.append(res[b].cycles + (max(into) if into else 0))
    cycles["total"] = max(busy + [cycles["write"]])
    return cycles


def _unit(result: Result, unit: str, cycles: dict, rate: float) -> PhaseUnit:
    energy = _dynamic(result, unit)
    leak = getattr(result, unit)["total"].leakage
    energy["leakage"] = leak / rate
    energy["total"] = sum(energy[c] for c in COMPONENTS[:-1])
    f = result.design.clock_hz
    return PhaseUnit(energy, cycles, leak, f / cycles["total"] if cycles["total"] else 0.0)


def decode(result: Result) -> Phase:
    """Per-token cost of decoding the token at context n = ``result.design.seq``."""
    d = result.design
    f = d.clock_hz
    cyc = {u: _decode_cycles(result, u) for u in ("sa", "had")}
    max_rate = {u: f / c["total"] for u, c in cyc.items()}
    slowest = min(max_rate.values())
    rate = d.token_rate if d.token_rate is not None else slowest
    for u, r in max_rate.items():
        if rate > r * (1 + 1e-12):
            raise HadrefError(f"--token-rate {rate:.4g} tokens/s: exceeds what {u.upper()} "
                              f"decodes at batch 1 ({r:.4g}/s at n = {d.seq}); lower it")
    return Phase("decode", d.seq, 1, rate, f, _unit(result, "sa", cyc["sa"], rate),
                 _unit(result, "had", cyc["had"], rate))


def prefill(result: Result) -> Phase:
    """Per-token cost of a prefill of n = ``result.design.seq`` tokens."""
    d = result.design
    f = d.clock_hz
    cyc = {u: _prefill_cycles(result, u) for u in ("sa", "had")}
    rate = min(f / c["total"] for c in cyc.values())
    return Phase("prefill", d.seq, d.seq, rate, f, _unit(result, "sa", cyc["sa"], rate),
                 _unit(result, "had", cyc["had"], rate))


def phases(result: Result) -> dict[str, Phase]:
    """{"decode": :func:`decode`, "prefill": :func:`prefill`}."""
    return {"decode": decode(result), "prefill": prefill(result)}

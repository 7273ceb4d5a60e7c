"""Reports: the per-component table, JSON, the paper comparison, and the context sweep.

Text reports use readable units (area mm^2, power W, energy nJ); the JSON (:func:`to_dict`,
schema ``hadref.hw/2``) is in SI units, each key's suffix naming its unit (``UNITS``).
"""

from __future__ import annotations

import math

from hadref.errors import HadrefError

from . import components as C
from . import units
from .fit import compare, paper_table
from .model import BLOCKS, Design, Result, evaluate
from .phases import COMPONENTS as PHASE_ROWS
from .phases import Phase, phases
from .tables import library

ROWS = BLOCKS + ("total",)
SCHEMA = "hadref.hw/2"
# key suffix -> unit, for every number in the JSON
UNITS = {
    "_m2": "square metre (m^2)", "_w": "watt (W)", "_j_per_query": "joule per query (J)",
    "_j_per_token": "joule per token (J)", "_s": "second (s)", "_hz": "hertz (1/s)",
    "_per_s": "per second (1/s)", "_per_query": "cycles per query (count)",
    "_per_token": "cycles per token (count)", "_nm": "nanometre", "_ghz": "gigahertz",
    "_f2": "squared feature size (F^2)", "_fj_per_bit": "femtojoule per bit",
}


def settings(result: Result) -> dict:
    """The design point and the derived quantities that a reader needs to check it."""
    d = result.design
    had_qk = result.units["had"]["qk"].parts[0].component
    out = {
        "preset": d.name, "seq": d.seq, "dim": d.dim, "heads": d.heads, "top_n": d.top_n,
        "av_rows_provisioned": d.n_provisioned, "node_nm": d.node_nm,
        "clock_ghz": d.clock_hz / units.GHZ, "mac_lanes": d.mac_lanes,
        "softmax_lanes": result.units["sa"]["softmax"].parts[0].instances,
        "had_softmax_lanes": result.units["had"]["softmax"].parts[0].instances,
        "had_av_lanes_built": result.units["had"]["av"].parts[0].instances,
        "had_av_lanes_busy": result.units["had"]["av"].parts[0].busy,
        "accumulate": d.accumulate, "qk_impl": d.qk_impl, "readout": d.readout,
        "topn": d.topn, "exp": d.exp, "storage": d.storage, "power_mode": d.power_mode,
        "query_rate_per_s": result.query_rate, "bottleneck": result.bottleneck,
        "kv_heads": d.n_kv_heads, "layers": d.layers, "clock_hz": d.clock_hz,
        "leakage": d.leakage, "token_rate_per_s": d.token_rate,
        "calibration": {k: list(v) for k, v in d.calibration.items()},
    }
    if d.qk_impl == "cam":
        out["cam_cell_f2"] = had_qk.cell_area_f2
        out["cam_search_fj_per_bit"] = units.to_fj(had_qk.search_energy_per_bit)
    return out


def _rate(cycles: int, clock_hz: float):
    return clock_hz / cycles if cycles else None


def _phase_dict(ph: Phase) -> dict:
    out = {"context": ph.context, "tokens": ph.tokens, "token_rate_per_s": ph.token_rate}
    for unit in ("sa", "had"):
        u = getattr(ph, unit)
        out[unit] = {
            "components": {c: {"energy_j_per_token": u.energy[c],
                               "power_w": u.energy[c] * ph.token_rate,
                               "cycles_per_token": u.cycles[c],
                               "latency_s": u.cycles[c] / ph.clock_hz} for c in PHASE_ROWS},
            "leakage_w": u.leakage_w,
            "power_w": ph.power(unit),
            "latency_s": ph.latency(unit),
            "throughput_tokens_per_s": u.max_rate,
        }
    out["energy_reduction"] = ph.energy_reduction
    return out


def to_dict(result: Result, extra_settings: dict | None = None) -> dict:
    """The ``--json`` structure (schema ``hadref.hw/2``, SI units, each named in ``units``):

    ``{"schema", "units", "settings", "sa": {COMPONENT: {...}}, "had": {...},
    "decode": {...}, "prefill": {...}, "reductions": {...}}``; COMPONENT in qk, topn,
    softmax, av, storage, total, each with ``area_m2``, ``power_w`` (dynamic), ``leakage_w``,
    ``energy_j_per_query``, ``cycles_per_query``, ``latency_s`` (cycles / clock) and
    ``throughput_queries_per_s`` (clock / cycles; null for an empty block; total: the
    slowest block's, while its cycles and latency are the sum over blocks). ``decode`` and
    ``prefill`` (:mod:`hadref.hw.phases`): ``context``, ``tokens``, ``token_rate_per_s`` and per
    unit ``components`` (write, the blocks, leakage, total: ``energy_j_per_token``,
    ``power_w`` (energy x the token rate), ``cycles_per_token``, ``latency_s``),
    ``leakage_w``, ``power_w``, ``latency_s`` (decode: one token; prefill: the prompt),
    ``throughput_tokens_per_s``; and ``energy_reduction``.
    """
    f = result.design.clock_hz
    out = {"schema": SCHEMA, "units": dict(UNITS)}
    out["settings"] = settings(result)
    if extra_settings:
        out["settings"].update(extra_settings)
    for unit in ("sa", "had"):
        res = getattr(result, unit)
        out[unit] = {}
        for c in ROWS:
            r = res[c]
            out[unit][c] = {
                "area_m2": r.area, "power_w": r.power, "leakage_w": r.leakage,
                "energy_j_per_query": r.energy_per_query, "cycles_per_query": r.cycles,
                "latency_s": r.cycles / f,
                "throughput_queries_per_s": (r.max_rate if c == "total" else
                                             _rate(r.cycles, f)),
            }
    ph = phases(result)
    out["decode"] = _phase_dict(ph["decode"])
    out["prefill"] = _phase_dict(ph["prefill"])
    out["reductions"] = {"area": result.area_reduction, "power": result.power_reduction,
                         "energy": result.energy_reduction,
                         "decode_energy": ph["decode"].energy_reduction,
                         "prefill_energy": ph["prefill"].energy_reduction}
    return out


def format_table(result: Result) -> str:
    """The per-component table for SA and HAD and the reductions, as text."""
    d = result.design
    rate = ("peak: every instance busy every cycle" if d.power_mode == "peak" else
            f"matched at {result.query_rate:.4g} queries/s")
    shape = f"d={d.dim}, heads={d.heads}"
    if d.n_kv_heads != d.heads or d.layers != 1:
        shape += f" ({d.n_kv_heads} key heads), layers={d.layers}"
    lines = [
        f"preset {d.name}: n={d.seq} keys, {shape}, N={d.top_n} | "
        f"{d.node_nm:g} nm, {d.clock_hz / units.GHZ:.4g} GHz, {d.mac_lanes} MAC lanes | "
        f"power {rate}",
        f"{'component':<10} {'SA mm2':>9} {'SA W':>9} {'SA nJ/q':>10}   "
        f"{'HAD mm2':>9} {'HAD W':>9} {'HAD nJ/q':>10}",
    ]
    for c in ROWS:
        if c == "storage" and not d.storage:
            continue
        s, h = result.sa[c], result.had[c]
        lines.append(f"{c:<10} {units.to_mm2(s.area):9.3f} {s.power:9.3f} "
                     f"{units.to_nj(s.energy_per_query):10.3f}   {units.to_mm2(h.area):9.3f} "
                     f"{h.power:9.3f} {units.to_nj(h.energy_per_query):10.3f}")
    slowest = min(result.sa["total"].max_rate, result.had["total"].max_rate)
    lines.append(f"HAD vs SA: {_less(result.area_reduction)} area, "
                 f"{_less(result.power_reduction)} power, "
                 f"{_less(result.energy_reduction)} energy per query "
                 f"(slowest block: {result.bottleneck}, {slowest:.4g} queries/s)")
    other = "lp" if d.leakage == "hp" else "hp"
    lib = library(d.node_nm)
    k = C.sram_leakage_per_bit(lib, other) / C.sram_leakage_per_bit(lib, d.leakage)
    lines.append(f"leakage ({d.leakage}; arrays only, not in the W column): "
                 f"SA {result.sa['total'].leakage:.4g} W, HAD {result.had['total'].leakage:.4g} W "
                 f"(--leakage {other}: SA {k * result.sa['total'].leakage:.4g} W, "
                 f"HAD {k * result.had['total'].leakage:.4g} W)")
    return "\n".join(lines)


def format_phases(result: Result) -> str:
    """Decode and prefill per token, side by side: energy by component (nJ), cycles,
    latency and tokens/s (:mod:`hadref.hw.phases`)."""
    ph = phases(result)
    dec, pre = ph["decode"], ph["prefill"]
    n = result.design.seq
    lines = [f"per token at n={n}: decode (1 query against {n} keys, batch 1) | "
             f"prefill ({n} queries against {n} keys, pipelined)",
             f"{'component':<10} {'dec SA nJ':>11} {'dec HAD nJ':>11} {'pre SA nJ':>11} "
             f"{'pre HAD nJ':>11}   {'dec SA cyc':>10} {'dec HAD cyc':>11}"]
    for c in PHASE_ROWS:
        if c == "storage" and not result.design.storage:
            continue
        vals = [units.to_nj(p_.sa.energy[c]) if u == "sa" else units.to_nj(p_.had.energy[c])
                for p_ in (dec, pre) for u in ("sa", "had")]
        lines.append(f"{c:<10} " + " ".join(f"{v:>11.4g}" for v in vals) +
                     f"   {dec.sa.cycles[c]:>10} {dec.had.cycles[c]:>11}")
    lines.append(f"decode: SA {dec.latency('sa') * 1e6:.4g} us/token "
                 f"({dec.sa.max_rate:.4g} tokens/s), HAD {dec.latency('had') * 1e6:.4g} us/token "
                 f"({dec.had.max_rate:.4g} tokens/s); leakage charged at "
                 f"{dec.token_rate:.4g} tokens/s; HAD {_less(dec.energy_reduction)} energy "
                 "per token")
    lines.append(f"prefill: SA {pre.sa.max_rate:.4g} tokens/s "
                 f"({pre.latency('sa') * 1e3:.4g} ms for {n} tokens), HAD "
                 f"{pre.had.max_rate:.4g} tokens/s ({pre.latency('had') * 1e3:.4g} ms); "
                 f"leakage charged at {pre.token_rate:.4g} tokens/s; HAD "
                 f"{_less(pre.energy_reduction)} energy per token")
    return "\n".join(lines)


def format_breakdown(result: Result) -> str:
    """Every part of every block: instances, action, count per query, energy per action,
    area per instance, leakage, and the products, so each number can be checked by hand.
    The ``write`` block (per decoded token) writes the arrays of qk / storage: its area and
    leakage are theirs, shown as '-'."""
    lines = [f"{'block':<12} {'part':<14} {'inst':>6} {'busy':>6} {'action':<9} "
             f"{'count/query':>12} {'pJ/action':>11} {'um2/inst':>10} {'nJ/query':>10} "
             f"{'mm2':>9} {'leak W':>9} {'cycles':>7}"]
    for unit, blocks in result.units.items():
        for name, blk in blocks.items():
            for p in blk.parts:
                busy = p.instances if p.busy is None else p.busy
                if name == "write":
                    area_s, inst_s, leak_s = f"{'-':>10}", f"{'-':>9}", f"{'-':>9}"
                else:
                    area_s = f"{units.to_um2(p.component.area):>10.4g}"
                    inst_s = f"{units.to_mm2(p.area):>9.4g}"
                    leak_s = f"{p.leakage:>9.4g}"
                lines.append(
                    f"{unit + '.' + name:<12} {p.label:<14} {p.instances:>6} {busy:>6} "
                    f"{p.action:<9} {p.count:>12} "
                    f"{units.to_pj(p.component.energy(p.action)):>11.4g} "
                    f"{area_s} {units.to_nj(p.energy_per_query):>10.4g} {inst_s} {leak_s} "
                    f"{p.cycles_per_query:>7}")
            if blk.parts and (blk.k_area != 1 or blk.k_energy != 1):
                lines.append(f"{unit + '.' + name:<12} {'calibration':<14} x{blk.k_area:.4g} "
                             f"area, x{blk.k_energy:.4g} energy (fitted to the paper)")
    lines.append("write: per decoded token (count/token); every other block per query")
    return "\n".join(lines)


def _less(reduction: float) -> str:
    """0.79 -> '79.0 % less'; -0.5 -> '50.0 % more'."""
    return f"{100 * abs(reduction):.1f} % {'less' if reduction >= 0 else 'more'}"


def format_comparison(results: dict[str, Result]) -> str:
    """Paper vs each named result on the 20 numbers of the paper's table, with errors."""
    table = paper_table()
    names = list(results)
    head = f"{'unit':<4} {'component':<9} {'quantity':<8} {'paper':>8}"
    for name in names:
        head += f" {name:>17} {'err':>8}"
    lines = [head]
    cmp_ = {name: compare(r, table) for name, r in results.items()}
    for i, (unit, comp, qty, paper, _, _) in enumerate(cmp_[names[0]]):
        line = f"{unit:<4} {comp:<9} {qty.replace('_mm2', ' mm2').replace('_w', ' W'):<8} {paper:8.3f}"
        for name in names:
            _, _, _, _, value, err = cmp_[name][i]
            err_s = "-" if paper == 0 and value == 0 else f"{100 * err:+.1f}%"
            line += f" {value:17.3f} {err_s:>8}"
        lines.append(line)
    for name, r in results.items():
        lines.append(f"{name}: {_less(r.area_reduction)} area, "
                     f"{_less(r.power_reduction)} power (paper: 79 % less, 87 % less)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- sweep

def sweep(design: Design, seqs: list[int], top_n_mode: str = "proportional") -> list[Result]:
    """Evaluate ``design`` at each context length in ``seqs``.

    ``top_n_mode``: ``fixed`` keeps N (and the provisioned A V rows), capped at n;
    ``proportional`` scales both with n from the design's own n (N = round(N0 n / n0),
    at least 1). MAC lanes, softmax lanes (when given) and the clock stay fixed; lanes
    the model derives (HAD A V, XNOR) are re-sized to keep pace with the SA at each n.
    """
    if top_n_mode not in ("fixed", "proportional"):
        raise HadrefError(f"--top-n-mode {top_n_mode!r}: expected fixed or proportional")
    out = []
    for n in seqs:
        if top_n_mode == "fixed":
            N, prov = min(design.top_n, n), min(design.n_provisioned, n)
        else:
            N = max(1, round(design.top_n * n / design.seq))
            prov = min(n, max(N, round(design.n_provisioned * n / design.seq)))
        out.append(evaluate(design.replace(seq=n, top_n=N, av_rows_provisioned=prov)))
    return out


def sweep_dict(results: list[Result], extra_settings: dict | None = None) -> list[dict]:
    """One :func:`to_dict` per context length."""
    return [to_dict(r, extra_settings) for r in results]


def format_sweep(results: list[Result]) -> str:
    """Energy per query (nJ), decode energy per token (nJ, with the write and leakage) and
    area (mm2) of every block against context length, then where HAD's advantage ends."""
    blocks = [b for b in ROWS if b != "storage" or results[0].design.storage]
    out = []
    for title, get, fmt in (
            ("energy per query, nJ", lambda x: units.to_nj(x.energy_per_query), "{:>10.4g}"),
            ("area, mm2", lambda x: units.to_mm2(x.area), "{:>10.4g}")):
        out.append(f"{title} (SA | HAD)")
        head = f"{'n':>7} {'N':>6} " + " ".join(f"{'SA ' + b:>10}" for b in blocks) + " | " + \
            " ".join(f"{'HAD ' + b:>10}" for b in blocks)
        out.append(head)
        for r in results:
            row = f"{r.design.seq:>7} {r.design.top_n:>6} "
            row += " ".join(fmt.format(get(r.sa[b])) for b in blocks) + " | "
            row += " ".join(fmt.format(get(r.had[b])) for b in blocks)
            out.append(row)
        out.append("")
    comps = [c for c in PHASE_ROWS if c != "storage" or results[0].design.storage]
    out.append("decode energy per token, nJ, with the key/value write and leakage (SA | HAD)")
    out.append(f"{'n':>7} {'N':>6} " + " ".join(f"{'SA ' + c:>10}" for c in comps) + " | " +
               " ".join(f"{'HAD ' + c:>10}" for c in comps))
    for r in results:
        dec = phases(r)["decode"]
        out.append(f"{r.design.seq:>7} {r.design.top_n:>6} " +
                   " ".join(f"{units.to_nj(dec.sa.energy[c]):>10.4g}" for c in comps) + " | " +
                   " ".join(f"{units.to_nj(dec.had.energy[c]):>10.4g}" for c in comps))
    out.append("")
    out.append("HAD vs SA energy per query: " + ", ".join(
        f"n={r.design.seq}: {_less(r.energy_reduction)}" for r in results))
    out.append("")
    out.extend(advantage_lines(results))
    return "\n".join(out)


# what makes each component grow with n (for the advantage lines)
_GROWS = {
    ("had", "qk"): "the CAM: d cells per key per key head and layer, plus one readout "
                   "comparator per row",
    ("had", "storage"): "the V SRAM: 16 d bits per key per key head and layer",
    ("had", "leakage"): "the arrays' leakage (CAM cells + V bits) per token",
    ("had", "av"): "A V over N rows (N grows with n)",
    ("had", "softmax"): "softmax over N scores",
    ("had", "topn"): "the top-N over n scores",
    ("had", "write"): "the key and value writes",
    ("sa", "qk"): "Q K^T MACs: n d h L",
    ("sa", "av"): "A V MACs: n d h L",
    ("sa", "softmax"): "softmax over n scores",
    ("sa", "storage"): "the K and V SRAM: 2 x 16 d bits per key per key head and layer",
    ("sa", "leakage"): "the arrays' leakage (K and V bits) per token",
    ("sa", "write"): "the key and value writes",
}


def _measures(r: Result) -> dict:
    """{"area": {unit: {component: m^2}}, "energy": {unit: {component: J per decoded token}}}."""
    dec = phases(r)["decode"]
    return {"area": {u: {b: getattr(r, u)[b].area for b in ROWS} for u in ("sa", "had")},
            "energy": {u: dict(getattr(dec, u).energy) for u in ("sa", "had")}}


def advantage_lines(results: list[Result]) -> list[str]:
    """One line per context length and measure (area; decode energy per token with the
    write and leakage): HAD's total against SA's, whether HAD still wins, and what grows:
    each unit's cost per added key (from this length to the next one, or from the previous
    one for the last) and the component that adds most of it. Then, per measure, the length
    where HAD's advantage ends (interpolated between the two lengths that bracket it)."""
    if not results:
        return []
    ms = [_measures(r) for r in results]
    seqs = [r.design.seq for r in results]
    lines = []
    fmt = {"area": (units.to_mm2, "mm2", lambda x: f"{x / units.UM2:.4g} um2"),
           "energy": (units.to_nj, "nJ/token", lambda x: f"{x / units.PJ:.4g} pJ")}
    for measure, title in (("area", "area"), ("energy", "decode energy per token")):
        conv, unit_s, per_key = fmt[measure]
        lines.append(f"where HAD's {title} advantage ends:")
        diffs = []
        for i, r in enumerate(results):
            sa, had = ms[i][measure]["sa"]["total"], ms[i][measure]["had"]["total"]
            diffs.append(had - sa)
            state = ("HAD smaller" if had < sa else "HAD larger: its advantage has ended")
            line = (f"  n={seqs[i]}: HAD {conv(had):.4g} vs SA {conv(sa):.4g} {unit_s} "
                    f"(HAD/SA {had / sa:.3g}, {state})")
            if len(results) > 1:
                j, k = (i, i + 1) if i + 1 < len(results) else (i - 1, i)
                dn = seqs[k] - seqs[j]
                parts = []
                for u in ("had", "sa"):
                    grow = {c: (ms[k][measure][u][c] - ms[j][measure][u][c]) / dn
                            for c in ms[k][measure][u] if c != "total"}
                    total = sum(grow.values())
                    top = max(grow, key=grow.get)
                    rising = sum(v for v in grow.values() if v > 0)
                    share = grow[top] / rising if rising > 0 else 0.0
                    parts.append(f"{u.upper()} {'+' if total >= 0 else '-'}"
                                 f"{per_key(abs(total))} ({100 * share:.0f} % of what grows "
                                 f"is {top}: {_GROWS.get((u, top), top)})")
                line += f"; per added key {parts[0]}, {parts[1]}"
            lines.append(line)
        cross = [(i, i + 1) for i in range(len(diffs) - 1)
                 if (diffs[i] < 0) != (diffs[i + 1] < 0)]
        for i, k in cross:
            t = diffs[i] / (diffs[i] - diffs[k])
            n_star = seqs[i] + t * (seqs[k] - seqs[i])
            verb = "ends" if diffs[i] < 0 else "begins"
            lines.append(f"  HAD's {title} advantage {verb} between n={seqs[i]} and "
                         f"n={seqs[k]}, at about n={n_star:.0f} (HAD - SA interpolated "
                         "linearly)")
        if not cross:
            verdict = ("HAD keeps its advantage over the whole sweep" if diffs[-1] < 0
                       else "HAD has no advantage at any length of the sweep")
            lines.append(f"  {verdict}")
    return lines


def plot_sweep(results: list[Result], path) -> None:
    """Save a three-panel log-log plot against n to ``path``: prefill and decode energy
    per token side by side (by component, with the key/value write and leakage), and area.

    Needs matplotlib (the ``plot`` extra); raises HadrefError if it is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HadrefError("--plot needs matplotlib: pip install 'hadref[plot]'") from None
    seqs = [r.design.seq for r in results]
    ph = [phases(r) for r in results]
    names = PHASE_ROWS
    colors = dict(zip(names, ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red",
                              "tab:purple", "tab:brown", "black")))
    markers = dict(zip(names, ("x", "s", "^", "D", "o", "v", "P", "o")))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    panels = (
        ("prefill: energy per token (nJ)",
         lambda i, u, c: getattr(ph[i]["prefill"], u).energy.get(c, 0.0) / units.NJ),
        ("decode: energy per token (nJ)",
         lambda i, u, c: getattr(ph[i]["decode"], u).energy.get(c, 0.0) / units.NJ),
        ("area (mm$^2$)",
         lambda i, u, c: units.to_mm2(getattr(results[i], u)[c].area)
         if c in ROWS else 0.0),
    )
    for ax, (title, get) in zip(axes, panels):
        for unit, style in (("sa", "--"), ("had", "-")):
            for c in names:
                ys = [get(i, unit, c) for i in range(len(results))]
                if not any(y > 0 for y in ys):
                    continue
                # SA's qk and av coincide (same MAC count): distinct markers keep both visible
                ax.plot(seqs, [y if y > 0 else math.nan for y in ys], style,
                        marker=markers[c], ms=7 if c == "qk" else 4,
                        mfc="none" if c == "qk" else None, color=colors[c],
                        lw=2.2 if c == "total" else 1.3, label=f"{unit.upper()} {c}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length n (keys per query)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    d = results[0].design
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    tops = [r.design.top_n for r in results]
    n_text = (f"N = {tops[0]} fixed" if len(set(tops)) == 1 and len(tops) > 1
              else "N = " + ", ".join(map(str, tops)))
    shape = f"d={d.dim}, heads={d.heads}"
    if d.n_kv_heads != d.heads or d.layers != 1:
        shape += f" ({d.n_kv_heads} key heads), {d.layers} layers"
    rate = ("decode leakage at the slower unit's batch-1 rate" if d.token_rate is None
            else f"decode leakage at {d.token_rate:g} tokens/s")
    fig.suptitle(f"preset {d.name}: {shape}, {d.node_nm:g} nm, "
                 f"{d.clock_hz / units.GHZ:.3g} GHz, {d.mac_lanes} MAC lanes, leakage "
                 f"{d.leakage}; {n_text}; {rate} (SA dashed, HAD solid)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.89, 0.95))
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise HadrefError(f"--plot {path}: cannot write ({err.strerror})") from None
    finally:
        plt.close(fig)

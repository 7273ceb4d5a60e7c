"""Reports: the per-component table, JSON, the paper comparison, and the context sweep.

Reports use readable units: area in mm^2, power in W, energy in nJ per query.
"""

from __future__ import annotations

import math

from hadref.errors import HadrefError

from . import units
from .fit import compare, paper_table
from .model import BLOCKS, Design, Result, evaluate

ROWS = BLOCKS + ("total",)


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
        "calibration": {k: list(v) for k, v in d.calibration.items()},
    }
    if d.qk_impl == "cam":
        out["cam_cell_f2"] = had_qk.cell_area_f2
        out["cam_search_fj_per_bit"] = units.to_fj(had_qk.search_energy_per_bit)
    return out


def to_dict(result: Result) -> dict:
    """``{"sa": {COMPONENT: {"area_mm2", "power_w", "energy_nj_per_query"}}, "had": ...,
    "settings": {...}, "reductions": {"area", "power", "energy"}}`` (COMPONENT in qk, topn,
    softmax, av, storage, total)."""
    out = {}
    for unit in ("sa", "had"):
        res = getattr(result, unit)
        out[unit] = {c: {"area_mm2": units.to_mm2(res[c].area), "power_w": res[c].power,
                         "energy_nj_per_query": units.to_nj(res[c].energy_per_query)}
                     for c in ROWS}
    out["settings"] = settings(result)
    out["reductions"] = {"area": result.area_reduction, "power": result.power_reduction,
                         "energy": result.energy_reduction}
    return out


def format_table(result: Result) -> str:
    """The per-component table for SA and HAD and the reductions, as text."""
    d = result.design
    rate = ("peak: every instance busy every cycle" if d.power_mode == "peak" else
            f"matched at {result.query_rate:.4g} queries/s")
    lines = [
        f"preset {d.name}: n={d.seq} keys, d={d.dim}, heads={d.heads}, N={d.top_n} | "
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
    return "\n".join(lines)


def format_breakdown(result: Result) -> str:
    """Every part of every block: instances, action, count per query, energy per action,
    area per instance, and the products, so each number can be checked by hand."""
    lines = [f"{'block':<12} {'part':<14} {'inst':>6} {'busy':>6} {'action':<9} "
             f"{'count/query':>12} {'pJ/action':>11} {'um2/inst':>10} {'nJ/query':>10} "
             f"{'mm2':>9} {'cycles':>7}"]
    for unit, blocks in result.units.items():
        for name, blk in blocks.items():
            for p in blk.parts:
                busy = p.instances if p.busy is None else p.busy
                lines.append(
                    f"{unit + '.' + name:<12} {p.label:<14} {p.instances:>6} {busy:>6} "
                    f"{p.action:<9} {p.count:>12} "
                    f"{units.to_pj(p.component.energy(p.action)):>11.4g} "
                    f"{units.to_um2(p.component.area):>10.4g} "
                    f"{units.to_nj(p.energy_per_query):>10.4g} {units.to_mm2(p.area):>9.4g} "
                    f"{p.cycles_per_query:>7}")
            if blk.parts and (blk.k_area != 1 or blk.k_energy != 1):
                lines.append(f"{unit + '.' + name:<12} {'calibration':<14} x{blk.k_area:.4g} "
                             f"area, x{blk.k_energy:.4g} energy (fitted to the paper)")
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


def sweep_dict(results: list[Result]) -> list[dict]:
    """One :func:`to_dict` per context length."""
    return [to_dict(r) for r in results]


def format_sweep(results: list[Result]) -> str:
    """Energy per query (nJ) and area (mm2) of every block against context length."""
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
    out.append("HAD vs SA energy per query: " + ", ".join(
        f"n={r.design.seq}: {_less(r.energy_reduction)}" for r in results))
    return "\n".join(out)


def plot_sweep(results: list[Result], path) -> None:
    """Save a two-panel log-log plot (energy per query, area vs n) to ``path``.

    Needs matplotlib (the ``plot`` extra); raises HadrefError if it is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HadrefError("--plot needs matplotlib: pip install 'hadref[plot]'") from None
    seqs = [r.design.seq for r in results]
    blocks = [b for b in BLOCKS if any(
        getattr(r, u)[b].area > 0 for r in results for u in ("sa", "had"))]
    colors = dict(zip(BLOCKS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    markers = dict(zip(BLOCKS, ("s", "^", "D", "o", "v")))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (title, get) in zip(axes, (
            ("energy per query (nJ)", lambda x: units.to_nj(x.energy_per_query)),
            ("area (mm$^2$)", lambda x: units.to_mm2(x.area)))):
        for unit, style in (("sa", "--"), ("had", "-")):
            for b in blocks + ["total"]:
                ys = [get(getattr(r, unit)[b]) for r in results]
                if not any(y > 0 for y in ys):
                    continue
                # SA's qk and av coincide (same MAC count): distinct markers keep both visible
                ax.plot(seqs, [y if y > 0 else math.nan for y in ys], style,
                        marker=markers.get(b, "o"), ms=7 if b == "qk" else 4,
                        mfc="none" if b == "qk" else None, color=colors.get(b, "black"),
                        lw=2.2 if b == "total" else 1.3,
                        label=f"{unit.upper()} {b}")
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
    fig.suptitle(f"preset {d.name}: d={d.dim}, heads={d.heads}, {d.node_nm:g} nm, "
                 f"{d.clock_hz / units.GHZ:.3g} GHz, {d.mac_lanes} MAC lanes; {n_text} "
                 "(SA dashed, HAD solid)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise HadrefError(f"--plot {path}: cannot write ({err.strerror})") from None
    finally:
        plt.close(fig)

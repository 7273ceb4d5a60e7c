"""``hadref hw``: the CAM-based HAD accelerator model against bf16 attention.

``hadref hw`` prints the per-component table (area mm2, power W, energy nJ/query) for SA
and HAD and the reductions; ``hadref hw sweep`` shows how each block scales with context
length. The model, its tables and the paper fit are in ``hadref.hw`` and docs/hw.md.
"""

import json

import click

from hadref.errors import HadrefError

from ._common import parse_int_list

_CHOICE = click.Choice


def _design_options(storage_default: bool):
    """Options shared by ``hw`` and ``hw sweep`` (each overrides the preset's value)."""
    def decorate(fn):
        opts = [
            click.option("--preset", "preset_name", default="paper", show_default=True,
                         type=_CHOICE(["paper", "first-principles"]),
                         help="paper: fitted to the paper's table; first-principles: "
                              "the same design from published constants alone."),
            click.option("--dim", type=int, help="head size d (bits per binary key)."),
            click.option("--heads", type=int, help="heads per query token."),
            click.option("--top-n", type=int, help="N keys kept per query row."),
            click.option("--node", type=float, help="process node in nm (7-130)."),
            click.option("--clock", type=float, help="clock in GHz."),
            click.option("--lanes", type=int, help="bf16 MAC lanes per SA matmul."),
            click.option("--softmax-lanes", type=int, help="softmax element lanes."),
            click.option("--readout", type=_CHOICE(["comparator", "adc"]),
                         help="CAM match-line readout."),
            click.option("--topn", "topn_algo",
                         type=_CHOICE(["threshold", "counting", "heap", "insertion"]),
                         help="top-N algorithm (threshold needs no digital scores)."),
            click.option("--qk", "qk_impl", type=_CHOICE(["cam", "xnor"]),
                         help="HAD scores: capacitive CAM or XNOR-popcount lanes."),
            click.option("--exp", type=_CHOICE(["poly", "lut"]), help="HAD softmax exp."),
            click.option("--accumulate", type=_CHOICE(["bf16", "fp32"]),
                         help="MAC accumulator precision."),
            click.option("--storage/--no-storage", default=storage_default,
                         show_default=True, help="include K/V SRAM."),
            click.option("--power", "power_mode", type=_CHOICE(["peak", "matched"]),
                         help="peak: every block busy every cycle (as synthesis reports); "
                              "matched: all blocks at one query rate."),
            click.option("--rate", type=float,
                         help="queries/s for --power matched (default: the slowest block's)."),
            click.option("--json", "as_json", is_flag=True, help="print JSON instead."),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return decorate


def _design(preset_name, seq=None, dim=None, heads=None, top_n=None, node=None, clock=None,
            lanes=None, softmax_lanes=None, readout=None, topn_algo=None, qk_impl=None,
            exp=None, accumulate=None, storage=False, power_mode=None, rate=None):
    from hadref.hw import preset

    design = preset(preset_name)
    if clock is not None and not (0 < clock <= 100):
        raise HadrefError(f"--clock {clock!r}: expected a frequency in GHz (0 < clock <= 100)")
    changes = {"seq": seq, "dim": dim, "heads": heads, "top_n": top_n, "node_nm": node,
               "clock_hz": None if clock is None else clock * 1e9, "mac_lanes": lanes,
               "softmax_lanes": softmax_lanes, "readout": readout, "topn": topn_algo,
               "qk_impl": qk_impl, "exp": exp, "accumulate": accumulate,
               "power_mode": power_mode, "query_rate": rate}
    changes = {k: v for k, v in changes.items() if v is not None}
    changes["storage"] = storage
    for opt, key in (("--seq", "seq"), ("--dim", "dim"), ("--heads", "heads"),
                     ("--top-n", "top_n"), ("--lanes", "mac_lanes"),
                     ("--softmax-lanes", "softmax_lanes")):
        if key in changes and changes[key] < 1:
            raise HadrefError(f"{opt} {changes[key]}: expected a positive integer")
    n = changes.get("seq", design.seq)
    if "top_n" not in changes and design.top_n > n:
        raise HadrefError(f"--seq {n}: the preset's N = {design.top_n} exceeds it; "
                          "give --top-n")
    if "top_n" in changes or "seq" in changes:
        # keep the preset's over-provisioning of A V rows, within [N, n]
        N = changes.get("top_n", design.top_n)
        changes["av_rows_provisioned"] = min(n, max(N, design.n_provisioned))
    return design.replace(**changes)


@click.group(invoke_without_command=True)
@click.option("--seq", type=int, help="n keys per query row (context length).")
@_design_options(storage_default=False)
@click.option("--breakdown", is_flag=True,
              help="also list every part: instances, action, count per query, energies.")
@click.option("--vs-paper", is_flag=True,
              help="compare the paper and first-principles presets with the paper's table.")
@click.pass_context
def hw(ctx, as_json, breakdown, vs_paper, **options):
    """CAM-based HAD accelerator model against bf16 attention.

    Without a subcommand: the per-component table (area mm2, power W, energy nJ/query) of
    standard attention (SA) and HAD, and the reductions. See docs/hw.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hadref.hw import evaluate
    from hadref.hw.report import format_breakdown, format_comparison, format_table, to_dict

    result = evaluate(_design(**options))
    if vs_paper:
        from hadref.hw import preset
        results = {"paper": evaluate(preset("paper")),
                   "first-principles": evaluate(preset("first-principles"))}
        if as_json:
            click.echo(json.dumps({k: to_dict(v) for k, v in results.items()}, indent=2))
        else:
            click.echo(format_comparison(results))
        return
    if as_json:
        click.echo(json.dumps(to_dict(result), indent=2))
    else:
        click.echo(format_table(result))
        if breakdown:
            click.echo("")
            click.echo(format_breakdown(result))


@hw.command()
@click.option("--seq", "seqs", default="256,1024,4096,16384,65536", show_default=True,
              help="comma-separated context lengths.")
@click.option("--top-n-mode", type=_CHOICE(["proportional", "fixed"]), default="proportional",
              show_default=True, help="N proportional to n (the paper's schedule) or fixed.")
@_design_options(storage_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="save a log-log plot (needs matplotlib: the 'plot' extra).")
def sweep(seqs, top_n_mode, as_json, plot_path, **options):
    """How each block scales with context length (energy per query and area).

    The SA MAC lanes, softmax lanes and clock stay the preset's; the HAD A V lanes are
    re-sized to keep pace with the SA at each n (docs/hw.md, section 4).
    """
    from hadref.hw.report import format_sweep, plot_sweep, sweep_dict
    from hadref.hw.report import sweep as run_sweep

    seq_list = parse_int_list(seqs, "--seq")
    results = run_sweep(_design(**options), seq_list, top_n_mode)
    if plot_path:
        plot_sweep(results, plot_path)
    if as_json:
        click.echo(json.dumps(sweep_dict(results), indent=2))
    else:
        click.echo(format_sweep(results))
        if plot_path:
            click.echo(f"plot: {plot_path}")

"""``hadref hw``: the CAM-based HAD accelerator model against bf16 attention.

``hadref hw`` prints the per-component table (area mm2, power W, energy nJ/query) for SA
and HAD and the reductions, then decode and prefill per token (key/value writes, leakage,
cycles, tokens/s); ``hadref hw sweep`` shows how each block scales with context length and
where HAD's advantage ends. ``--model FILE.h5`` takes the attention shapes from a hadref
model file. The model, its tables and the paper fit are in ``hadref.hw`` and docs/hw.md.

K/V storage is on by default in both commands (``--no-storage`` for the paper's
compute-only table): decoding writes every token's key and value into it, and at long
context it is most of the area, energy and leakage.
"""

import json

import click

from hadref.errors import HadrefError

from ._common import parse_int_list

_CHOICE = click.Choice


STORAGE_DEFAULT = True  # one default for hw and hw sweep (see the module docstring)


def _design_options(storage_default: bool = STORAGE_DEFAULT):
    """Options shared by ``hw`` and ``hw sweep`` (each overrides the preset's value)."""
    def decorate(fn):
        opts = [
            click.option("--preset", "preset_name", default="paper", show_default=True,
                         type=_CHOICE(["paper", "first-principles"]),
                         help="paper: fitted to the paper's table; first-principles: "
                              "the same design from published constants alone."),
            click.option("--model", "model_path", type=click.Path(dir_okay=False),
                         help="hadref model file (.h5): layers, query heads, key heads, d "
                              "and a HAD student's N from it; n defaults to its context."),
            click.option("--dim", type=int, help="head size d (bits per binary key)."),
            click.option("--heads", type=int, help="query heads per layer."),
            click.option("--kv-heads", type=int,
                         help="key/value heads per layer (grouped-query: one CAM per key "
                              "head serves its query heads; default: --heads)."),
            click.option("--layers", type=int, help="layers (counts cover all of them)."),
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
            click.option("--leakage", type=_CHOICE(["hp", "lp"]),
                         help="array leakage per bit: hp = CACTI 65 nm high-performance "
                              "(upper bound, default), lp = measured low-power (lower bound)."),
            click.option("--token-rate", type=float,
                         help="decoded tokens/s at which leakage is charged per token "
                              "(default: the slower unit's batch-1 decode rate)."),
            click.option("--json", "as_json", is_flag=True,
                         help="print JSON instead (schema hadref.hw/2, SI units named by "
                              "each key's suffix)."),
        ]
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return decorate


def _design(preset_name, seq=None, dim=None, heads=None, top_n=None, node=None, clock=None,
            lanes=None, softmax_lanes=None, readout=None, topn_algo=None, qk_impl=None,
            exp=None, accumulate=None, storage=STORAGE_DEFAULT, power_mode=None, rate=None,
            kv_heads=None, layers=None, leakage=None, token_rate=None, model_path=None):
    """(design, extra settings for the JSON) from the options."""
    from hadref.hw import preset

    design = preset(preset_name)
    if clock is not None and not (0 < clock <= 100):
        raise HadrefError(f"--clock {clock!r}: expected a frequency in GHz (0 < clock <= 100)")
    changes = {"seq": seq, "dim": dim, "heads": heads, "top_n": top_n, "node_nm": node,
               "clock_hz": None if clock is None else clock * 1e9, "mac_lanes": lanes,
               "softmax_lanes": softmax_lanes, "readout": readout, "topn": topn_algo,
               "qk_impl": qk_impl, "exp": exp, "accumulate": accumulate,
               "power_mode": power_mode, "query_rate": rate, "kv_heads": kv_heads,
               "layers": layers, "leakage": leakage, "token_rate": token_rate}
    changes = {k: v for k, v in changes.items() if v is not None}
    changes["storage"] = storage
    for opt, key in (("--seq", "seq"), ("--dim", "dim"), ("--heads", "heads"),
                     ("--top-n", "top_n"), ("--lanes", "mac_lanes"),
                     ("--softmax-lanes", "softmax_lanes"), ("--kv-heads", "kv_heads"),
                     ("--layers", "layers")):
        if key in changes and changes[key] < 1:
            raise HadrefError(f"{opt} {changes[key]}: expected a positive integer")
    extra = {}
    if model_path is not None:
        from hadref.hw.shapes import model_design, read_shapes

        for opt, key in (("--dim", "dim"), ("--heads", "heads"), ("--kv-heads", "kv_heads"),
                         ("--layers", "layers")):
            if key in changes:
                raise HadrefError(f"{opt}: not with --model (the file gives the shapes)")
        shapes = read_shapes(model_path)
        seq_, top_n_ = changes.pop("seq", None), changes.pop("top_n", None)
        # the preset's single softmax lane is the paper's 256-key choice: with a model,
        # size the softmax to keep pace with the MAC lanes unless --softmax-lanes is given
        changes.setdefault("softmax_lanes", None)
        design, source = model_design(design.replace(**changes), shapes, seq_, top_n_)
        extra = {"model": shapes.path, "model_family": shapes.family,
                 "max_position_embeddings": shapes.max_positions, "top_n_source": source}
        return design, extra
    n = changes.get("seq", design.seq)
    if "top_n" not in changes and design.top_n > n:
        raise HadrefError(f"--seq {n}: the preset's N = {design.top_n} exceeds it; "
                          "give --top-n")
    if "top_n" in changes or "seq" in changes:
        # keep the preset's over-provisioning of A V rows, within [N, n]
        N = changes.get("top_n", design.top_n)
        changes["av_rows_provisioned"] = min(n, max(N, design.n_provisioned))
    return design.replace(**changes), extra


@click.group(invoke_without_command=True)
@click.option("--seq", type=int, help="n keys per query row (context length).")
@_design_options()
@click.option("--breakdown", is_flag=True,
              help="also list every part: instances, action, count per query, energies.")
@click.option("--vs-paper", is_flag=True,
              help="compare the paper and first-principles presets with the paper's table.")
@click.pass_context
def hw(ctx, as_json, breakdown, vs_paper, **options):
    """CAM-based HAD accelerator model against bf16 attention.

    Without a subcommand: the per-component table (area mm2, power W, energy nJ/query) of
    standard attention (SA) and HAD and the reductions, then decode and prefill per token
    (key/value write, leakage, cycles, latency, tokens/s). K/V storage is included unless
    --no-storage (the paper's table is compute only: --vs-paper). See docs/hw.md.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hadref.hw import evaluate
    from hadref.hw.report import format_breakdown, format_comparison, format_phases, format_table, to_dict

    if vs_paper:
        from hadref.hw import preset
        results = {"paper": evaluate(preset("paper")),
                   "first-principles": evaluate(preset("first-principles"))}
        if as_json:
            click.echo(json.dumps({k: to_dict(v) for k, v in results.items()}, indent=2))
        else:
            click.echo(format_comparison(results))
        return
    design, extra = _design(**options)
    result = evaluate(design)
    if as_json:
        click.echo(json.dumps(to_dict(result, extra), indent=2))
        return
    # everything is formatted before anything is printed: an error is the only output
    text = [format_table(result), "", format_phases(result)]
    if extra:
        text.append(f"shapes from {extra['model']} ({extra['model_family']}); N = "
                    f"{design.top_n} from {extra['top_n_source']}")
    if breakdown:
        text += ["", format_breakdown(result)]
    click.echo("\n".join(text))


@hw.command()
@click.option("--seq", "seqs", default="256,1024,4096,16384,65536", show_default=True,
              help="comma-separated context lengths.")
@click.option("--top-n-mode", type=_CHOICE(["proportional", "fixed"]), default=None,
              help="N proportional to n (the paper's schedule, default) or fixed; with "
                   "--model, N follows the file (or 0.117 n) at each length instead.")
@_design_options()
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="save a log-log plot: prefill and decode energy per token side by side, "
                   "and area (needs matplotlib: the 'plot' extra).")
@click.option("--overwrite", is_flag=True, help="replace an existing --plot file.")
def sweep(seqs, top_n_mode, as_json, plot_path, overwrite, **options):
    """How each block scales with context length, and where HAD's advantage ends.

    Energy per query, decode energy per token (with the key/value write and leakage) and
    area per block; per length, HAD against SA and what grows. The SA MAC lanes, softmax
    lanes and clock stay the preset's; the HAD A V lanes are re-sized to keep pace with the
    SA at each n (docs/hw.md, section 8).
    """
    from hadref.hw import evaluate
    from hadref.hw.report import format_sweep, plot_sweep, sweep_dict
    from hadref.hw.report import sweep as run_sweep

    seq_list = parse_int_list(seqs, "--seq")
    if plot_path:
        from hadref.files import claim_outputs

        claim_outputs({"--plot": plot_path}, overwrite=overwrite)
    if options.get("model_path") is not None:
        if top_n_mode is not None:
            raise HadrefError("--top-n-mode: not with --model (N follows the file, or "
                              "round(0.117 n), at each length)")
        results, extra = [], {}
        for n in seq_list:
            design, extra = _design(**dict(options, seq=n))
            results.append(evaluate(design))
    else:
        design, extra = _design(**options)
        results = run_sweep(design, seq_list, top_n_mode or "proportional")
    if plot_path:
        plot_sweep(results, plot_path)
    if as_json:
        click.echo(json.dumps(sweep_dict(results, extra), indent=2))
    else:
        click.echo(format_sweep(results))
        if plot_path:
            click.echo(f"plot: {plot_path}")

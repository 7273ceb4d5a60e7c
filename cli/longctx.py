"""``hadref passkey``: passkey retrieval of a decoder at long context (hadref.engine.passkey)."""

import click

from hadref.cli._common import SEED, parse_int_list


def parse_depths(value: str) -> list[float]:
    """'5' -> 5 depths evenly over [0, 1]; '0,0.5,1' (a comma or a point) -> those fractions."""
    from hadref.engine.passkey import depth_grid

    text = str(value).strip()
    if "," not in text and "." not in text:
        try:
            return depth_grid(int(text))
        except ValueError:
            raise click.BadParameter(f"expected a count or comma-separated fractions, got "
                                     f"{value!r}", param_hint="--depths") from None
    try:
        depths = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a count or comma-separated fractions, got {value!r}",
                                 param_hint="--depths") from None
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths) or len(set(depths)) != len(depths):
        raise click.BadParameter(f"expected distinct fractions in [0, 1], got {value!r}",
                                 param_hint="--depths")
    return [round(d, 6) for d in depths]


@click.command()
@click.argument("model_file", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--lengths", default="1024,2048,4096,8192", show_default=True,
              help="Prompt lengths in tokens (comma-separated).")
@click.option("--depths", default="5", show_default=True,
              help="Needle depths: a count (evenly over 0..1, both ends) or fractions "
                   "(0,0.25,0.5).")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Trials (keys) per (length, depth) cell.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the keys.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tokens decoded greedily after the question.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the results here, after every trial (atomically).")
@click.option("--resume", is_flag=True,
              help="Continue the run saved in --json (same options): finished trials are kept.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@click.option("--binarize", is_flag=True,
              help="Float teacher: hard-binarize the post-RoPE Q and K (sigma measured on the "
                   "teacher over --sigma-windows windows of Python's pydoc_data.topics), "
                   "causal top-N on the packed kernels and key cache; no distillation.")
@click.option("--top-n", type=click.IntRange(min=1), default=None,
              help="--binarize: a fixed N (default: N = round(--top-n-ratio x keys)).")
@click.option("--top-n-ratio", type=click.FloatRange(min=0.0, min_open=True, max=1.0),
              default=None, help="--binarize: N / keys (default: the paper's 0.117).")
@click.option("--sigma-windows", type=click.IntRange(min=1), default=4, show_default=True,
              help="--binarize: windows for sigma estimation.")
@click.option("--sigma-len", type=click.IntRange(min=2), default=1024, show_default=True,
              help="--binarize: tokens per sigma window.")
@click.option("--quiet", is_flag=True, help="No line per trial.")
def passkey(model_file, lengths, depths, trials, seed, max_new_tokens, json_path, resume,
            overwrite, binarize, top_n, top_n_ratio, sigma_windows, sigma_len, quiet):
    """Passkey retrieval (Landmark attention's needle test, kept in RULER): a random 5-digit
    key inside repeated filler text, asked for at the end; a trial is correct when the
    key's digits appear in the greedy continuation. One prefill per trial (KV cache).
    Prints the accuracy per length and depth.

    \b
    Example:
      hadref passkey weights/smollm2.h5 --lengths 1024,2048 --depths 5 --trials 20 \\
          --json passkey.json            # add --resume to continue after an interruption
      hadref plot passkey passkey.json -o passkey.png
    """
    from pathlib import Path

    from hadref.cli.decoder import _load_decoder
    from hadref.engine.passkey import PasskeyRun, PromptBuilder
    from hadref.errors import HadrefError
    from hadref.files import check_distinct, claim_outputs, remove_stale_temps

    length_list = parse_int_list(lengths, "--lengths")
    depth_list = parse_depths(depths)
    if resume and json_path is None:
        raise HadrefError("--resume: needs --json, the results file of the run to continue")
    if resume and overwrite:
        raise HadrefError("--resume and --overwrite: choose one (continue the run, or start again)")
    if resume and not Path(json_path).exists():
        raise HadrefError(f"--resume: {json_path} does not exist (drop --resume to start a run)")
    if json_path is not None:
        check_distinct({"MODEL.h5": model_file}, {"--json": json_path})
        claim_outputs({"--json": json_path}, overwrite=overwrite, resume=resume)
    if not Path(model_file).exists():
        raise HadrefError(f"{model_file}: no such file (MODEL.h5)")
    if not binarize and (top_n is not None or top_n_ratio is not None):
        raise HadrefError("--top-n and --top-n-ratio: only with --binarize (a student runs at "
                          "its own N)")
    if top_n is not None and top_n_ratio is not None:
        raise HadrefError("--top-n and --top-n-ratio: give one (a fixed N, or N scaled with "
                          "the keys)")
    model = _load_decoder(model_file)
    binarized = None
    if binarize:
        from hadref.had.decoder_binarize import binarize_decoder

        model, binarized = binarize_decoder(model, sigma_windows, sigma_len, top_n=top_n,
                                            top_n_ratio=top_n_ratio)
    limit = model.config.max_position_embeddings
    for n in length_list:
        if n + max_new_tokens > limit:
            raise HadrefError(f"--lengths: {n} tokens + {max_new_tokens} new ones exceed the "
                              f"model's context length ({limit})")
    builder = PromptBuilder(model.tokenizer)
    shortest = builder.fixed_tokens("0" * 5)
    if min(length_list) < shortest + 10:
        raise HadrefError(f"--lengths: {min(length_list)} tokens is too short (the prompt without "
                          f"filler is {shortest} tokens)")
    for n in length_list:  # the built prompts: within half a filler sentence of the length
        longest = max(builder.build(n, d, "0" * 5).ids.size for d in depth_list)
        if longest + max_new_tokens > limit:
            raise HadrefError(f"--lengths: {n} tokens make prompts of up to {longest} tokens; "
                              f"with {max_new_tokens} new ones they exceed the model's context "
                              f"length ({limit}); ask for {limit - max_new_tokens - 8} or less")
    settings = {"lengths": length_list, "depths": depth_list, "trials": trials, "seed": seed,
                "max_new_tokens": max_new_tokens, "model": str(model_file),
                "model_kind": "binarized" if binarized else _model_kind(model),
                "top_n": binarized["top_n"] if binarized else _had(model, "top_n"),
                "top_n_ratio": binarized["top_n_ratio"] if binarized else _had(model, "top_n_ratio"),
                "top_n_rule": _n_rule(model),
                "binarized": binarized,
                "filler": "Landmark attention (Mohtashami & Jaggi 2023)"}
    if json_path is not None:
        remove_stale_temps(json_path)
    run = PasskeyRun.load(json_path, settings) if resume else PasskeyRun(settings)
    run.run(model, builder, json_path, log=None if quiet else click.echo)
    click.echo(run.table())
    if json_path is not None:
        run.save(json_path)
        click.echo(f"wrote {json_path}")


def _model_kind(model) -> str:
    had = getattr(model, "had", None)
    if had is None:
        return "float"
    stage = had.get("stage") if isinstance(had, dict) else None
    return f"HAD student, stage {stage}" if stage else "HAD student"


def _n_rule(model):
    """The HAD core's ``top_n_rule`` ("per row" or None; None for a float model)."""
    return getattr(getattr(model, "attention_core", None), "top_n_rule", None)


def _had(model, name):
    had = getattr(model, "had", None)
    if isinstance(had, dict) and had.get(name) is not None:
        value = had[name]
        return value.item() if hasattr(value, "item") else value
    return None

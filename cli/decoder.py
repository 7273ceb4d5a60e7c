"""``hadref generate`` (continue a prompt with a decoder) and ``hadref perplexity``."""

import json
from pathlib import Path

import click

from hadref.cli._common import parse_int_list


def _load_decoder(path):
    from hadref.engine.io import load
    from hadref.errors import HadrefError

    model = load(path)
    if getattr(model, "family", None) != "llama":
        raise HadrefError(f"{path}: not a decoder model file (convert one with "
                          "`hadref convert smollm2 -o weights/smollm2.h5`)")
    if model.tokenizer is None:
        raise HadrefError(f"{path}: the file has no tokenizer.json")
    return model


@click.command()
@click.argument("model_file", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--prompt", required=True, help="The text to continue.")
@click.option("--chat", is_flag=True,
              help="Wrap the prompt as one user turn with the file's chat template.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="0: greedy decoding; otherwise sample from softmax(logits / T).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Sample only among the k most likely tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
def generate(model_file, prompt, chat, max_new_tokens, temperature, top_k, seed):
    """Continue --prompt with the decoder in MODEL.h5 (KV-cache decoding); prints the text,
    then the prefill and decoding speed.

    \b
    Example:
      hadref generate weights/smollm2.h5 --prompt "The capital of France is" --max-new-tokens 16
    """
    from hadref.engine.bpe_tokenizer import render_chat
    from hadref.errors import HadrefError

    if not prompt.strip():
        raise HadrefError("--prompt: empty prompt (give some text to continue)")
    model = _load_decoder(model_file)
    text = render_chat(model.chat_template, prompt, f"{model_file}: chat_template") if chat \
        else prompt
    ids = model.tokenizer.encode(text)
    if ids.size == 0:
        raise HadrefError("--prompt: the prompt has no tokens")
    stats = {}
    new = model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                         stats=stats)
    click.echo((text if not chat else "") + model.tokenizer.decode(
        new, skip_special_tokens=chat))
    decode_rate = (stats["new_tokens"] - 1) / stats["decode_s"] if stats["decode_s"] > 0 else 0
    click.echo(f"[{stats['prompt_tokens']} prompt tokens in {stats['prefill_s']:.2f} s "
               f"({stats['prompt_tokens'] / stats['prefill_s']:.1f} tokens/s); "
               f"{stats['new_tokens']} new tokens, {decode_rate:.1f} tokens/s decoding]", err=True)


@click.command()
@click.argument("model_file", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--text", "text_file", required=True, type=click.Path(dir_okay=False),
              help="UTF-8 text file to score.")
@click.option("--seq", default="512,2048,8192", show_default=True,
              help="Window lengths in tokens (comma-separated).")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Start a window every S tokens (default: the window length, disjoint).")
@click.option("--check", is_flag=True,
              help="HAD student: also require, layer by layer on the first window, that the "
                   "packed kernels give the dense training path's context on the same q, k, v.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def perplexity(model_file, text_file, seq, stride, check, as_json):
    """Token NLL and perplexity of MODEL.h5 on --text, per window length and per band of
    window positions (the first 512 predictions, the last 512).

    \b
    Examples:
      hadref perplexity weights/smollm2.h5 --text paper.txt --seq 512,2048,8192 --json
      hadref perplexity weights/smollm2-had.h5 --text paper.txt --seq 2048 --check
    """
    from hadref.engine.perplexity import perplexity as _perplexity
    from hadref.errors import HadrefError

    lengths = parse_int_list(seq, "--seq")
    path = Path(text_file)
    if not path.exists():
        raise HadrefError(f"{path}: no such file (--text)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HadrefError(f"{path}: not UTF-8 text (--text)") from None
    model = _load_decoder(model_file)
    limit = model.config.max_position_embeddings
    for n in lengths:
        if n > limit:
            raise HadrefError(f"--seq: {n} tokens exceed the model's context length ({limit})")
    ids = model.tokenizer.encode(text)
    result = _perplexity(model, ids, lengths, stride, where=str(path))
    result = {"model": str(model_file), "text": str(path), **result}
    if check:
        from hadref.had.decoder_check import check_layers

        result["check"] = check_layers(model, ids[:min(lengths)])
        if not result["check"]["agree"]:
            worst = result["check"]["layers"]
            layer = max(range(len(worst)), key=worst.__getitem__)
            raise HadrefError(f"--check: the packed kernels and the training path differ at "
                              f"layer {layer} (relative {worst[layer]:.2e} > "
                              f"{result['check']['rtol']:g}) on the first {min(lengths)} tokens")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['tokens']} tokens in {path}")
    click.echo(f"{'seq':>6} {'windows':>7} {'nll':>7} {'ppl':>8} {'ppl first512':>12} "
               f"{'ppl last512':>11}")
    for r in result["lengths"]:
        click.echo(f"{r['seq']:>6} {r['windows']:>7} {r['nll']:>7.4f} {r['ppl']:>8.3f} "
                   f"{r['first512']['ppl']:>12.3f} {r['last512']['ppl']:>11.3f}")
    if check:
        c = result["check"]
        click.echo(f"check: packed kernels and training path agree at every layer on the first "
                   f"{c['tokens']} tokens (worst relative difference {c['worst']:.2e})")

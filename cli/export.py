"""``hadref export``: a hadref model file -> a Hugging Face model folder."""

import click


@click.command()
@click.argument("model_path", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The folder to write (must not exist, or be empty).")
@click.option("--task", default=None,
              help="GLUE task of the head, for files without provenance (label names, "
                   "finetuning_task); must agree with the provenance when there is one.")
def export(model_path, out_dir, task):
    """Write MODEL.h5 as a Hugging Face folder: config.json (id2label, label2id,
    finetuning_task; a HAD student's sigma_Q, sigma_K, N and binarization convention under
    the key "had"), model.safetensors (Hugging Face names) and tokenizer.json.

    `hadref convert DIR` reads it back to the same parameters, bit for bit.

    \b
    Example:
      hadref export weights/teacher-had.h5 -o exported/sst2-had
    """
    from hadref.engine.export import export as _export
    from hadref.engine.io import describe

    path = _export(model_path, out_dir, task)
    info = describe(model_path)
    kind = f"HAD student, N = {info['had']['top_n']}" if info["had"] else "float model"
    name = task or (info.get("provenance") or {}).get("task") or "task unknown"
    click.echo(f"wrote {path}/ (config.json, model.safetensors"
               + (", tokenizer.json" if info["tokenizer"] else "") + f"): {kind}, {name}")

"""``hadref glue``: the GLUE table of HAD from one resumable command (hadref.distill.table)."""

from __future__ import annotations

import click

from hadref.distill.table import RECIPES, ROWS
from hadref.errors import HadrefError
from hadref.train.finetune import FinetuneSettings
from hadref.train.memory import keep_freed_memory


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise click.BadParameter(f"expected comma-separated integers >= 0, got {text!r}",
                                 param_hint="--seeds")
    return seeds


def _candidates(text: str | None) -> list[tuple[float, float]]:
    """--ft-candidates ``EPOCHS:LR[,EPOCHS:LR...]`` as [(epochs, lr), ...] (range checks:
    :func:`hadref.distill.table.select_recipes`)."""
    if text is None:
        return []
    try:
        pairs = [tuple(float(v) for v in item.split(":")) for item in text.split(",")
                 if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise HadrefError(f"--ft-candidates: expected EPOCHS:LR[,EPOCHS:LR...] such as "
                          f"2:3e-5,6:1e-4, got {text!r}")
    return pairs


@click.command()
@click.argument("encoder", metavar="ENCODER.h5", type=click.Path(dir_okay=False))
@click.option("--tasks", default="cola,sst2,rte", show_default=True,
              help="GLUE tasks, comma-separated (any task of the standard layout).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Student seeds.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: one subfolder per task, table.md and table.json.")
@click.option("--rows", default=",".join(ROWS), show_default=True,
              help="Rows to make, comma-separated.")
@click.option("--select", is_flag=True,
              help="Choose each task's recipe on held-out training rows (--holdout) among "
                   "--recipes instead of making the table.")
@click.option("--holdout", type=click.FloatRange(0.01, 0.5), default=0.1, show_default=True,
              help="Fraction of the training rows held out for --select.")
@click.option("--recipes", default=",".join(RECIPES), show_default=True,
              help="Candidate recipes for --select.")
@click.option("--ft-candidates", default=None, metavar="EPOCHS:LR[,...]",
              help="Candidate teacher fine-tunes for --select (such as 2:3e-5,4:2e-4,6:1e-4): "
                   "the best on the held-out rows is the teacher of the recipe selection and "
                   "of the table (default: the one teacher of --ft-epochs, --ft-lr).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default=None,
              help="Use this recipe for the HAD row of every task (default: each task's "
                   "--select result).")
@click.option("--schedule", type=click.Choice(["paper", "quick"]), default="quick",
              show_default=True, help="The distillation preset every recipe starts from.")
@click.option("--top-n", type=click.IntRange(min=1), default=30, show_default=True, help="N.")
@click.option("--max-len", type=click.IntRange(min=8), default=None,
              help="Tokens per example (default: the schedule's).")
@click.option("--ft-epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Teacher fine-tune: passes over the training set (default: the teacher "
                   "chosen by --select --ft-candidates, else 2).")
@click.option("--ft-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Teacher fine-tune: AdamW peak learning rate (default: the teacher chosen "
                   "by --select --ft-candidates, else 3e-5).")
@click.option("--ft-warmup-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.06,
              show_default=True, help="Teacher fine-tune: warm-up fraction.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="GLUE folder; default $HADREF_DATA.")
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N training rows (tests).")
@click.option("--dev-limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N dev rows (tests).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def glue(encoder, tasks, seeds, out_dir, rows, select, holdout, recipes, ft_candidates, recipe,
         schedule, top_n, max_len, ft_epochs, ft_lr, ft_warmup_ratio, data_dir, train_limit,
         dev_limit, quiet):
    """Make the GLUE table of HAD from a pre-trained ENCODER.h5: teacher, teacher binarized
    without distillation, HAD student, the paper's recipe, w/o AD, w/o Tanh, over seeds.

    Choose the recipe first on held-out training rows (never dev), and the teacher's
    fine-tune recipe too when given candidates (--ft-candidates), then make the table with
    the chosen teacher; both resume where they stopped (finished runs are kept, an interrupted one continues
    from its checkpoint).

    \b
    Example:
      hadref convert minilm -o weights/minilm.h5
      hadref glue weights/minilm.h5 --tasks cola,sst2,rte --out runs/glue --select \\
        --ft-candidates 2:3e-5,4:2e-4,6:1e-4
      hadref glue weights/minilm.h5 --tasks cola,sst2,rte --seeds 0,1,2 --out runs/glue
    """
    from hadref.distill.table import TableSpec, run_table, select_recipes
    from hadref.train.jobs import DataSource

    teachers = _candidates(ft_candidates)
    if teachers and not select:
        raise HadrefError("--ft-candidates: a choice for --select; the table uses the teacher "
                          "it chose (TASK/selection.json)")
    keep_freed_memory()   # a training process: reuse freed arrays (see hadref.train.memory)
    # None: not given, so a teacher chosen by --select --ft-candidates may set them
    given = tuple(name for name, v in (("epochs", ft_epochs), ("lr", ft_lr)) if v is not None)
    spec = TableSpec(
        encoder=encoder, out=out_dir, tasks=[t for t in tasks.split(",") if t.strip()],
        seeds=_seeds(seeds),
        rows=[r.strip() for r in rows.split(",") if r.strip()], schedule=schedule,
        recipe=recipe, top_n=top_n, max_len=max_len,
        finetune=FinetuneSettings(epochs=2.0 if ft_epochs is None else ft_epochs,
                                  lr=3e-5 if ft_lr is None else ft_lr,
                                  warmup_ratio=ft_warmup_ratio),
        ft_given=given, data=DataSource(data_dir, train_limit=train_limit, dev_limit=dev_limit))
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    if select:
        select_recipes(spec, [r.strip() for r in recipes.split(",") if r.strip()], holdout,
                       progress=not quiet, notify=say, teachers=teachers)
        return
    run_table(spec, progress=not quiet, notify=say)
    click.echo((spec.out / "table.md").read_text(), nl=False)

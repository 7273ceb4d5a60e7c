"""``hadref finetune``, ``hadref distill`` and ``hadref evaluate``: the GLUE jobs.

Every setting of ../shared/HAD.md is an option named as the paper names it, with the
paper's value as default where it gives one. The jobs themselves are library functions
(:func:`hadref.train.jobs.run_finetune`, :func:`hadref.distill.run.run_distill`,
:func:`hadref.train.jobs.run_evaluate`): this module turns options into their arguments and
prints their results.
"""

from __future__ import annotations

import dataclasses
import json

import click

from hadref.cli._common import FINITE, SEED, Finite
from hadref.data.text import CORPORA as LM_CORPORA
from hadref.distill.lm_settings import LM_SCHEDULES, describe_lm_schedule
from hadref.distill.settings import SCHEDULES, describe_schedule
from hadref.errors import HadrefError
from hadref.train.finetune import FinetuneSettings
from hadref.train.memory import keep_freed_memory
from hadref.train.seeds import parse_seeds

# --- shared pieces ------------------------------------------------------------------------

def _data_options(f, train=True):
    f = click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
                     help="GLUE folder (DIR/SST-2/train.tsv, ...); default $HADREF_DATA.")(f)
    f = click.option("--skip-bad-rows", is_flag=True,
                     help="Leave out malformed rows (counted and reported) instead of stopping.")(f)
    if train:
        f = click.option("--train-limit", type=click.IntRange(min=1), default=None,
                         help="Use only the first N training rows (demos, tests).")(f)
    f = click.option("--dev-limit", type=click.IntRange(min=1), default=None,
                     help="Use only the first N dev rows (demos, tests).")(f)
    return f


def _data_source(data_dir, skip_bad_rows, train_limit=None, dev_limit=None):
    from hadref.train.jobs import DataSource

    return DataSource(data_dir, skip_bad_rows, train_limit, dev_limit)


def _run_options(f):
    f = click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
                     help="JSON-lines log of every step and evaluation (default: OUT.log.jsonl).")(f)
    f = click.option("--checkpoint", "ckpt_path", type=click.Path(dir_okay=False), default=None,
                     help="Checkpoint file (default: OUT.ckpt.h5).")(f)
    f = click.option("--checkpoint-every", type=Finite(min=0), default=300.0,
                     show_default=True, help="Seconds between checkpoints (also at stage ends).")(f)
    f = click.option("--resume", is_flag=True,
                     help="Continue from the checkpoint (same settings and seed).")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Replace an existing output, log or checkpoint (refused otherwise).")(f)
    f = click.option("--quiet", is_flag=True,
                     help="No progress display (off a terminal it is one line a minute).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")(f)
    return f


def _is_root() -> bool:
    """Whether this process prints results: always, except the MPI ranks other than 0."""
    from hadref.train.parallel import current_ranks

    return current_ranks().is_root


def _fmt(metrics_: dict) -> str:
    from hadref.train.metrics import format_metrics

    return format_metrics(metrics_)


class _Seeds(click.ParamType):
    """One seed or several, comma-separated (each as the SEED type checks it)."""

    name = "seed[,seed...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        seeds = [SEED.convert(part.strip(), param, ctx) for part in str(value).split(",")
                 if part.strip()]
        if not seeds or len(set(seeds)) != len(seeds):
            self.fail(f"expected distinct integers such as 0,1,2, got {value!r}", param, ctx)
        return seeds


SEEDS = _Seeds()


def _several_seeds(run, seeds, out, resume, log_path, ckpt_path) -> dict:
    """One run per seed (hadref.train.seeds); explicit --log / --checkpoint would be shared."""
    from hadref.train.jobs import RunFiles
    from hadref.train.seeds import run_seeds

    if log_path or ckpt_path:
        raise HadrefError("--log and --checkpoint name one run's files: leave them out with "
                          "several --seed values (each seed gets OUT-seedS.log.jsonl, ...)")
    return run_seeds(run, seeds, out, resume=resume,
                     checkpoint_of=lambda path: RunFiles.beside(path).checkpoint,
                     notify=lambda message: click.echo(message, err=True))


def _print_seeds(summary: dict, as_json: bool) -> None:
    from hadref.train.seeds import format_summary

    if as_json:
        click.echo(json.dumps(summary))
        return
    for r in summary["runs"]:
        click.echo(f"seed {r['seed']}: {r['out']}: dev {_fmt(r['metrics'])}")
    click.echo(f"dev over seeds: {format_summary(summary)}")
    click.echo(f"wrote {summary['summary_file']}")


def _task_help() -> str:
    return "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."


# --- finetune -----------------------------------------------------------------------------

def _finetune_options(f, prefix=""):
    """The fine-tuning settings (prefix 'ft-' inside distill)."""
    S = FinetuneSettings
    p = prefix
    opts = [
        click.option(f"--{p}epochs", f"{p.replace('-', '_')}epochs", type=FINITE, default=S.epochs,
                     show_default=True, help="Passes over the training set."),
        click.option(f"--{p}steps", f"{p.replace('-', '_')}steps", type=click.IntRange(min=1),
                     default=None, help="Training steps (overrides the epochs)."),
        click.option(f"--{p}lr", f"{p.replace('-', '_')}lr", type=FINITE, default=S.lr,
                     show_default=True, help="AdamW peak learning rate (linear decay to 0)."),
        click.option(f"--{p}batch-size", f"{p.replace('-', '_')}batch_size",
                     type=click.IntRange(min=1), default=S.batch_size, show_default=True,
                     help="Examples per step."),
        click.option(f"--{p}weight-decay", f"{p.replace('-', '_')}weight_decay", type=FINITE,
                     default=S.weight_decay, show_default=True,
                     help="Decoupled weight decay (not on biases and LayerNorm)."),
        click.option(f"--{p}warmup-ratio", f"{p.replace('-', '_')}warmup_ratio", type=FINITE,
                     default=S.warmup_ratio, show_default=True,
                     help="Fraction of the steps with a linear warm-up."),
        click.option(f"--{p}clip", f"{p.replace('-', '_')}clip", type=FINITE, default=S.clip,
                     show_default=True, help="Global gradient-norm clipping."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command()
@click.argument("model_path", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help=_task_help())
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Teacher file to write (default: MODEL-TASK.h5 beside MODEL).")
@click.option("--max-len", type=click.IntRange(min=8), default=128, show_default=True,
              help="Tokens per example, special tokens included (the paper used 256).")
@_finetune_options
@click.option("--no-dropout", is_flag=True, help="Train without dropout.")
@click.option("--seed", type=SEEDS, default="0", show_default=True,
              help="Data order, head init, dropout; several (0,1,2): one run per seed, "
                   "OUT-seedS.h5 each, mean +- std in OUT-seeds.json.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also log dev metrics every this many steps (0: at the end only); the "
                   "last step's model is always the one saved.")
@_data_options
@_run_options
def finetune(model_path, task, out, max_len, epochs, steps, lr, batch_size, weight_decay,
             warmup_ratio, clip, no_dropout, seed, eval_every, data_dir, skip_bad_rows,
             train_limit, dev_limit, log_path, ckpt_path, checkpoint_every, resume, overwrite,
             quiet, as_json):
    """Fine-tune MODEL.h5 on a GLUE task into a teacher (classifier head + encoder).

    A pre-trained encoder (such as `hadref convert minilm`) gets a fresh head; the whole
    model is trained with AdamW on cross-entropy (MSE for STS-B) and evaluated on dev.

    \b
    Example:
      hadref finetune weights/bert.h5 --task sst2 -o weights/bert-sst2.h5
    """
    from hadref.train.jobs import run_finetune

    keep_freed_memory()   # a training process: reuse freed arrays (see hadref.train.memory)
    seeds = parse_seeds(seed)
    settings = FinetuneSettings(epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                                max_len=max_len, weight_decay=weight_decay,
                                warmup_ratio=warmup_ratio, clip=clip, dropout=not no_dropout,
                                seed=seeds[0])
    data = _data_source(data_dir, skip_bad_rows, train_limit, dev_limit)

    def run(s, path, again):
        return run_finetune(model_path, task, dataclasses.replace(settings, seed=s), path,
                            data=data, log=log_path, checkpoint=ckpt_path,
                            checkpoint_every=checkpoint_every, resume=again,
                            overwrite=overwrite, progress=not quiet, eval_every=eval_every,
                            notify=lambda message: click.echo(message, err=True))

    if len(seeds) > 1:
        from hadref.data import get_task
        from hadref.train.jobs import default_out

        _print_seeds(_several_seeds(run, seeds, out or default_out(model_path, get_task(task).name),
                                    resume, log_path, ckpt_path), as_json)
        return
    result = run(seeds[0], out, resume)
    if not _is_root():
        return
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"teacher {result['out']}: dev {_fmt(result['metrics'])} "
                   f"({result['wall_s']:.0f} s)")


# --- distill ------------------------------------------------------------------------------

def _stage_list(text: str, option: str) -> list[int]:
    """'1,2' -> [1, 2] ('' -> []); which numbers are allowed is the schedule's check."""
    try:
        return sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise HadrefError(f"{option}: expected comma-separated stage numbers such as 1,2,3, "
                          f"got {text!r}") from None


def _lm_options(f):
    """The options of ``distill --lm`` (a decoder teacher on plain text)."""
    opts = [
        click.option("--lm", is_flag=True,
                     help="Distill a decoder (SmolLM2 from `hadref convert smollm2`) on plain "
                          "text: next-token KL at every position, attention KL layer by layer "
                          "(no --task; see the --data-* options)."),
        click.option("--data-text", "data_texts", multiple=True,
                     type=click.Path(dir_okay=False),
                     help="--lm: a UTF-8 text file (blank lines separate documents); repeatable."),
        click.option("--data-corpus", "data_corpora", multiple=True,
                     help="--lm: a corpus an installed package ships ("
                          + ", ".join(LM_CORPORA) + "; docs/lm-data.md); repeatable."),
        click.option("--data-samples", type=click.IntRange(min=0), default=0, show_default=True,
                     help="--lm: also train on this many windows sampled from the teacher "
                          "(data-free distillation, as LLM-QAT)."),
        click.option("--sample-temperature", type=FINITE, default=1.0, show_default=True,
                     help="--lm: sampling temperature of --data-samples."),
        click.option("--holdout", type=FINITE, default=0.05, show_default=True,
                     help="--lm: fraction of the windows held out (seeded) and scored after "
                          "each stage, for choosing settings."),
        click.option("--held-out-text", "held_out_texts", multiple=True,
                     type=click.Path(dir_okay=False),
                     help="--lm: evaluation text that must not be training data (a shared "
                          "32-token span is an error); repeatable."),
        click.option("--max-windows", type=click.IntRange(min=1), default=None,
                     help="--lm: use only the first N windows of the text (demos, tests)."),
        click.option("--attn-weight", type=FINITE, default=1.0, show_default=True,
                     help="--lm: weight of the attention KL in the loss (HAD.md: 1)."),
        click.option("--eval-windows", type=click.IntRange(min=0), default=4, show_default=True,
                     help="--lm: held-out windows scored (perplexity, KL to the teacher, hard "
                          "binarization) after sigma and after each stage."),
        click.option("--no-stage-files", is_flag=True,
                     help="--lm: do not write OUT-stageK.h5 after each stage."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command()
@click.argument("teacher_path", metavar="TEACHER.h5", type=click.Path(dir_okay=False))
@click.option("--task", default=None, help=_task_help() + " Required unless --lm.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Student file to write (default: TEACHER-had.h5 beside TEACHER).")
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default=None,
              help="; ".join(describe_schedule(name) for name in SCHEDULES)
                   + " (default paper); with --lm: "
                   + "; ".join(describe_lm_schedule(name) for name in LM_SCHEDULES)
                   + " (default quick). Options given explicitly win.")
@click.option("--gamma", type=FINITE, default=None, help="Per-minibatch decay of c (schedule's value).")
@click.option("--c-start", type=FINITE, default=5.0, show_default=True, help="c at the start of stage 1.")
@click.option("--c-mid", type=FINITE, default=1.0, show_default=True,
              help="c where stage 1 ends and stage 2 starts.")
@click.option("--c-end", type=FINITE, default=0.05, show_default=True, help="c where stage 2 ends.")
@click.option("--stage3-steps", type=click.IntRange(min=0), default=None,
              help="Stage 3 (STE) steps (schedule's value).")
@click.option("--stage4-steps", type=click.IntRange(min=0), default=None,
              help="Stage 4 (output loss only) steps (schedule's value).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Minibatch (default 16, the paper's; --lm: 1 window).")
@click.option("--lr", type=FINITE, default=2e-5, show_default=True,
              help="Adam learning rate, stages 1-3 (stage 3: --lr-stage3 when given).")
@click.option("--lr-stage3", type=FINITE, default=None,
              help="Adam learning rate, stage 3 alone (default: --lr, as the paper).")
@click.option("--lr-stage4", type=FINITE, default=5e-6, show_default=True,
              help="Adam learning rate, stage 4 (lower).")
@click.option("--clip", type=FINITE, default=0.5, show_default=True,
              help="Global gradient-norm clipping (paper: 0.5).")
@click.option("--ste-t", type=FINITE, default=1.0, show_default=True,
              help="STE window: gradient passes where |x/sigma| <= t.")
@click.option("--top-n", type=click.IntRange(min=1), default=None,
              help="Keys kept per query row (default 30, the paper's at 256 tokens; --lm: "
                   "N scaled with length, --top-n-ratio).")
@click.option("--top-n-ratio", type=FINITE, default=None,
              help="Scale N with length: N = round(ratio * max-len) (paper: ~0.117; the "
                   "--lm default, per window length T of each forward).")
@click.option("--temperature", type=FINITE, default=1.0, show_default=True,
              help="Output-distillation temperature.")
@click.option("--no-attn-loss", is_flag=True, help="Ablation 'w/o AD': output loss only, same iterations.")
@click.option("--attn-loss-stages", default="1,2,3", show_default=True,
              help="Stages whose loss adds the attention KL (paper: 1,2,3; stage 4 never), "
                   "comma-separated; '1,2' drops it in the STE stage 3.")
@click.option("--no-tanh", is_flag=True,
              help="Ablation 'w/o Tanh': stages 1-2 replaced by as many STE steps.")
@click.option("--sigma-batches", type=click.IntRange(min=1), default=None,
              help="Minibatches for sigma estimation (default 100; --lm: 8).")
@click.option("--sigma-batch-size", type=click.IntRange(min=1), default=None,
              help="Examples per sigma minibatch (default 16; --lm: 1 window).")
@click.option("--max-len", type=click.IntRange(min=8), default=None,
              help="Tokens per example (schedule's value).")
@click.option("--no-dropout", is_flag=True, help="Train the student without dropout.")
@click.option("--seed", type=SEEDS, default="0", show_default=True,
              help="Data order, sigma batches, dropout; several (0,1,2): one run per seed, "
                   "OUT-seedS.h5 each, mean +- std in OUT-seeds.json.")
@click.option("--no-finetune", is_flag=True,
              help="Fail if the teacher has no head for the task instead of fine-tuning one.")
@(lambda f: _finetune_options(f, "ft-"))
@_data_options
@_lm_options
@_run_options
def distill(teacher_path, task, out, schedule, gamma, c_start, c_mid, c_end, stage3_steps,
            stage4_steps, batch_size, lr, lr_stage3, lr_stage4, clip, ste_t, top_n, top_n_ratio,
            temperature, no_attn_loss, attn_loss_stages, no_tanh, sigma_batches, sigma_batch_size, max_len,
            no_dropout, seed, no_finetune, ft_epochs, ft_steps, ft_lr, ft_batch_size,
            ft_weight_decay, ft_warmup_ratio, ft_clip, data_dir, skip_bad_rows, train_limit,
            dev_limit, lm, data_texts, data_corpora, data_samples, sample_temperature, holdout,
            held_out_texts, max_windows, attn_weight, eval_windows, no_stage_files, log_path,
            ckpt_path, checkpoint_every, resume, overwrite, quiet, as_json):
    """Distill TEACHER.h5 into a HAD student (binarized queries and keys, top-N attention).

    Sigma estimation, then stages 1-4 (HAD.md): tanh with c decaying from 5 to 1, tanh
    from 1 to 0.05, STE with attention + output loss, STE with output loss only at a lower
    learning rate. A teacher without a head for the task (a pre-trained encoder) is first
    fine-tuned exactly as `hadref finetune` would (options --ft-*), saved as
    OUT-teacher.h5 and used. Prints the student's dev metric beside the teacher's.

    With --lm, TEACHER.h5 is a decoder and the data plain text (--data-text, --data-corpus,
    --data-samples), cut into windows of --max-len tokens; the student is written after
    each stage too (OUT-stageK.h5).

    \b
    Examples:
      hadref convert minilm -o weights/bert.h5
      hadref distill weights/bert.h5 --task sst2 --schedule quick
      hadref convert smollm2 -o smollm2.h5
      hadref distill smollm2.h5 --lm --data-corpus pydoc-topics --max-len 256 -o student.h5
    """
    keep_freed_memory()   # a training process: reuse freed arrays (see hadref.train.memory)
    lm_given = [name for name, given in (
        ("--data-text", data_texts), ("--data-corpus", data_corpora),
        ("--data-samples", data_samples), ("--held-out-text", held_out_texts),
        ("--max-windows", max_windows is not None), ("--no-stage-files", no_stage_files),
        ("--attn-weight", attn_weight != 1.0), ("--eval-windows", eval_windows != 4),
        ("--holdout", holdout != 0.05),
        ("--sample-temperature", sample_temperature != 1.0)) if given]
    if lm:
        glue_given = [name for name, given in (
            ("--task", task is not None), ("--data", data_dir is not None),
            ("--train-limit", train_limit is not None), ("--dev-limit", dev_limit is not None),
            ("--skip-bad-rows", skip_bad_rows), ("--no-finetune", no_finetune),
            ("--no-dropout", no_dropout)) if given]
        if glue_given:
            raise HadrefError(f"{glue_given[0]} is an option of GLUE distillation, not of --lm "
                              f"(its text comes from --data-text, --data-corpus or --data-samples)")
        _distill_lm(teacher_path, out, schedule, gamma, c_start, c_mid, c_end, stage3_steps,
                    stage4_steps, batch_size, lr, lr_stage3, lr_stage4, clip, ste_t, top_n,
                    top_n_ratio, temperature, no_attn_loss, attn_loss_stages, no_tanh,
                    sigma_batches, sigma_batch_size, max_len, seed, data_texts, data_corpora,
                    data_samples, sample_temperature, holdout, held_out_texts, max_windows,
                    attn_weight, eval_windows, no_stage_files, log_path, ckpt_path,
                    checkpoint_every, resume, overwrite, quiet, as_json)
        return
    if lm_given:
        raise HadrefError(f"{lm_given[0]} is an option of --lm (decoder distillation on text)")
    if task is None:
        raise HadrefError("Missing option '--task' (or give --lm to distill a decoder on text)")
    schedule = schedule or "paper"
    batch_size = 16 if batch_size is None else batch_size
    top_n = 30 if top_n is None else top_n
    sigma_batches = 100 if sigma_batches is None else sigma_batches
    sigma_batch_size = 16 if sigma_batch_size is None else sigma_batch_size
    from hadref.distill.run import run_distill
    from hadref.distill.settings import DistillSettings

    seeds = parse_seeds(seed)
    settings = DistillSettings.from_schedule(
        schedule, gamma=gamma, c_start=c_start, c_mid=c_mid, c_end=c_end,
        stage3_steps=stage3_steps, stage4_steps=stage4_steps, batch_size=batch_size, lr=lr,
        lr_stage3=lr_stage3, lr_stage4=lr_stage4, clip=clip, ste_t=ste_t, top_n=top_n,
        top_n_ratio=top_n_ratio, temperature=temperature, attn_loss=not no_attn_loss,
        attn_loss_stages=_stage_list(attn_loss_stages, "--attn-loss-stages"),
        tanh=not no_tanh, sigma_batches=sigma_batches, sigma_batch_size=sigma_batch_size,
        max_len=max_len, dropout=not no_dropout, seed=seeds[0])
    ft = FinetuneSettings(epochs=ft_epochs, steps=ft_steps, lr=ft_lr, batch_size=ft_batch_size,
                          weight_decay=ft_weight_decay, warmup_ratio=ft_warmup_ratio, clip=ft_clip)
    data = _data_source(data_dir, skip_bad_rows, train_limit, dev_limit)

    def run(s, path, again):
        return run_distill(teacher_path, task, dataclasses.replace(settings, seed=s), path,
                           finetune=ft, allow_finetune=not no_finetune, data=data, log=log_path,
                           checkpoint=ckpt_path, checkpoint_every=checkpoint_every,
                           resume=again, overwrite=overwrite, progress=not quiet,
                           notify=lambda message: click.echo(message, err=True))

    if len(seeds) > 1:
        from hadref.train.jobs import default_out

        _print_seeds(_several_seeds(run, seeds, out or default_out(teacher_path, "had"), resume,
                                    log_path, ckpt_path), as_json)
        return
    result = run(seeds[0], out, resume)
    if not _is_root():
        return
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"teacher {result['teacher']}: dev {_fmt(result['teacher_metrics'])}")
        click.echo(f"student {result['student']}: dev {_fmt(result['metrics'])} (HAD, N = "
                   f"{result['top_n']}; {result['wall_s']:.0f} s)")


def _distill_lm(teacher_path, out, schedule, gamma, c_start, c_mid, c_end, stage3_steps,
                stage4_steps, batch_size, lr, lr_stage3, lr_stage4, clip, ste_t, top_n,
                top_n_ratio, temperature, no_attn_loss, attn_loss_stages, no_tanh,
                sigma_batches, sigma_batch_size, max_len, seed, data_texts, data_corpora,
                data_samples, sample_temperature, holdout, held_out_texts, max_windows,
                attn_weight, eval_windows, no_stage_files, log_path, ckpt_path,
                checkpoint_every, resume, overwrite, quiet, as_json):
    """``hadref distill --lm``: the options -> :func:`hadref.distill.lm_run.run_distill_lm`."""
    from hadref.data.text import TextSource
    from hadref.distill.lm_run import run_distill_lm
    from hadref.distill.lm_settings import LMDistillSettings

    seeds = parse_seeds(seed)
    if len(seeds) > 1:
        raise HadrefError("--seed: distill --lm runs one seed at a time")
    if schedule is not None and schedule not in LM_SCHEDULES:
        raise HadrefError(f"--schedule: with --lm one of {', '.join(LM_SCHEDULES)}, got {schedule!r}")
    given = {k: v for k, v in dict(batch_size=batch_size, sigma_batches=sigma_batches,
                                   sigma_batch_size=sigma_batch_size).items() if v is not None}
    settings = LMDistillSettings.from_schedule(
        schedule or "quick", gamma=gamma, c_start=c_start, c_mid=c_mid, c_end=c_end,
        stage3_steps=stage3_steps, stage4_steps=stage4_steps, lr=lr, lr_stage3=lr_stage3,
        lr_stage4=lr_stage4, clip=clip, ste_t=ste_t, top_n=top_n,
        top_n_ratio=(None if top_n is not None and top_n_ratio is None
                     else 0.117 if top_n_ratio is None else top_n_ratio),
        temperature=temperature, attn_loss=not no_attn_loss,
        attn_loss_stages=_stage_list(attn_loss_stages, "--attn-loss-stages"), tanh=not no_tanh,
        max_len=max_len, seed=seeds[0], attn_weight=attn_weight, eval_windows=eval_windows,
        **given)
    data = TextSource(texts=tuple(data_texts), corpora=tuple(data_corpora), samples=data_samples,
                      sample_temperature=sample_temperature, holdout=holdout,
                      held_out_texts=tuple(held_out_texts), max_windows=max_windows)
    result = run_distill_lm(teacher_path, settings, out, data=data, log=log_path,
                            checkpoint=ckpt_path, checkpoint_every=checkpoint_every,
                            resume=resume, overwrite=overwrite, progress=not quiet,
                            stage_files=not no_stage_files,
                            notify=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(result))
        return
    for stage, sc in result["held_out"].items():
        if "kl" not in sc:
            click.echo(f"teacher (float): held-out perplexity {sc['ppl']:.3f} ({sc['tokens']} tokens)")
            continue
        what = "teacher binarized, no distillation" if stage == "0" else f"after stage {stage}"
        click.echo(f"{what}: held-out perplexity {sc['ppl']:.3f}, KL to the teacher "
                   f"{sc['kl']:.4f} per token")
    click.echo(f"student {result['student']} (HAD, N = {result['effective_top_n']} at "
               f"{result['max_len']} tokens; {result['wall_s']:.0f} s)")


# --- evaluate -----------------------------------------------------------------------------

def _int_list(text: str | None, option: str) -> list[int] | None:
    """'4,8,16' -> [4, 8, 16] (None stays None)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise HadrefError(f"{option}: expected comma-separated integers such as 4,8,16, "
                          f"got {text!r}") from None
    if not values:
        raise HadrefError(f"{option}: expected at least one integer, got {text!r}")
    return values


@click.command()
@click.argument("model_path", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help=_task_help())
@click.option("--max-len", type=click.IntRange(min=8), default=None,
              help="Tokens per example (default: the length the file was trained at, from "
                   "its HAD settings or provenance, else 128 or the model's position table "
                   "if shorter).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per forward pass.")
@click.option("--top-n", "top_n", default=None,
              help="Keys kept per query row, one or several (4,8,16,30,64: one table, the "
                   "accuracy-against-N curve). Default: a student's own N; 30 with --binarize.")
@click.option("--binarize", is_flag=True,
              help="Float teacher: hard-binarize Q and K with sigma estimated on training "
                   "data (HAD.md), no distillation (the paper's baseline), and score it with "
                   "the packed kernels; the float metric is shown beside it.")
@click.option("--sigma-batches", type=click.IntRange(min=1), default=100, show_default=True,
              help="--binarize: minibatches for sigma estimation.")
@click.option("--sigma-batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="--binarize: examples per sigma minibatch.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="--binarize: seed of the sigma minibatches.")
@click.option("--split", type=click.Choice(["dev", "test"]), default="dev", show_default=True,
              help="test: the GLUE test files (no labels): writes the submission (--submission).")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="Write FILE.tsv: index, label, prediction, class probabilities (STS-B: "
                   "the score) per example; MNLI: FILE-matched.tsv and FILE-mismatched.tsv.")
@click.option("--submission", type=click.Path(file_okay=False), default=None,
              help="--split test: folder for the GLUE server's files (SST-2.tsv, MNLI-m.tsv "
                   "and MNLI-mm.tsv, ...: index<TAB>prediction with GLUE's label names).")
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Write the results with their settings as JSON (default: beside the "
                   "predictions or submission file, NAME.metrics.json).")
@click.option("--any-task", is_flag=True,
              help="Score the head on a task other than the one it was trained on (I know).")
@click.option("--check", is_flag=True,
              help="HAD student: also run the training path and require the same prediction "
                   "for every example as the packed kernels.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing predictions, submission or results files.")
@click.option("--json", "as_json", is_flag=True, help="Print {task, metrics, ...} as JSON.")
@_data_options
def evaluate(model_path, task, max_len, batch_size, top_n, binarize, sigma_batches,
             sigma_batch_size, seed, split, predictions, submission, results, any_task, check,
             overwrite, as_json, data_dir, skip_bad_rows, train_limit, dev_limit):
    """The GLUE metric of MODEL.h5 on the task's dev set (MNLI: matched and mismatched).

    A HAD student runs through the packed Numba kernels (XNOR-popcount, counting top-N),
    at its own N or at each --top-n. --binarize scores a float teacher binarized without
    distillation. --train-limit only limits the rows sigma is estimated from (--binarize);
    --dev-limit also limits the test rows.

    \b
    Examples:
      hadref evaluate student.h5 --task sst2 --top-n 4,8,16,30,64 --results topn.json
      hadref evaluate teacher.h5 --task sst2 --binarize --top-n 4,8,16,30,64
      hadref evaluate student.h5 --task sst2 --predictions dev-preds.tsv
      hadref evaluate student.h5 --task sst2 --split test --submission glue-submission/
    """
    from hadref.train.jobs import run_evaluate

    result = run_evaluate(model_path, task, max_len=max_len, batch_size=batch_size, check=check,
                          data=_data_source(data_dir, skip_bad_rows, train_limit, dev_limit),
                          top_n=_int_list(top_n, "--top-n"), binarize=binarize, split=split,
                          predictions=predictions, submission=submission, results=results,
                          any_task=any_task, sigma_batches=sigma_batches,
                          sigma_batch_size=sigma_batch_size, seed=seed, overwrite=overwrite)
    if not _is_root():
        return
    if as_json:
        click.echo(json.dumps(result))
        return
    if result["binarized"]:
        kind = "float teacher hard-binarized, no distillation (packed kernels)"
    elif result["had"]:
        kind = "HAD student (packed kernels)"
    else:
        kind = "float model"
    n_examples = sum(result["examples"].values())
    if split == "test":
        click.echo(f"{model_path} [{kind}, N = {result['top_n']}] {result['task']} test: "
                   f"{n_examples} examples predicted ({result['wall_s']:.1f} s)")
    elif len(result["top_ns"]) > 1:
        click.echo(f"{model_path} [{kind}] {result['task']} dev ({n_examples} examples, "
                   f"{result['wall_s']:.1f} s):")
        names = list(next(iter(result["by_top_n"].values())))
        click.echo("  " + "N".rjust(5) + "".join(n.rjust(24) for n in names))
        for n, values in result["by_top_n"].items():
            click.echo("  " + n.rjust(5) + "".join(f"{100 * values[k]:24.2f}" for k in names))
    else:
        n_text = f", N = {result['top_n']}" if result["top_n"] else ""
        click.echo(f"{model_path} [{kind}{n_text}] {result['task']} dev: {_fmt(result['metrics'])} "
                   f"({n_examples} examples, {result['wall_s']:.1f} s)")
    if result["reference"]:
        click.echo(f"teacher (float{', from the provenance' if result['had'] else ''}): "
                   f"{_fmt(result['reference'])}")
    for name, c in result.get("check", {}).items():
        click.echo(f"check {name}: packed kernels and training path agree on every prediction "
                   f"(max logit difference {c['max_logit_diff']:.3g})")
    for path in result["files"]:
        click.echo(f"wrote {path}")
    if result.get("results_file"):
        click.echo(f"wrote {result['results_file']}")

"""``hadref finetune``, ``hadref distill`` and ``hadref evaluate``: the GLUE jobs.

Every setting of ../shared/HAD.md is an option named as the paper names it, with the
paper's value as default where it gives one. Long jobs print a status line (stage, step,
c, losses, learning rate, rate, time left), log every step as JSON lines and write
atomic checkpoints; ``--resume`` continues after a crash or Ctrl-C and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import click

from hadref.train.memory import keep_freed_memory
from hadref.errors import HadrefError


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


def _run_options(f):
    f = click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
                     help="JSON-lines log of every step and evaluation (default: OUT.log.jsonl).")(f)
    f = click.option("--checkpoint", "ckpt_path", type=click.Path(dir_okay=False), default=None,
                     help="Checkpoint file (default: OUT.ckpt.h5).")(f)
    f = click.option("--checkpoint-every", type=click.FloatRange(min=0), default=300.0,
                     show_default=True, help="Seconds between checkpoints (also at stage ends).")(f)
    f = click.option("--resume", is_flag=True,
                     help="Continue from the checkpoint (same settings and seed).")(f)
    f = click.option("--quiet", is_flag=True, help="No progress display.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")(f)
    return f


def _load_model(path, what="model"):
    from hadref.engine.io import load

    if not Path(path).is_file():
        raise HadrefError(f"{what} file not found: {path}")
    return load(path)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_task_data(task, model, data_dir, max_len, skip_bad_rows, train_limit, dev_limit,
                    need_train=True):
    """(train Encoded or None, [dev Encoded per dev file]) tokenized with the model's tokenizer."""
    from hadref.data import encode_split, load_split, report_skipped

    if model.tokenizer is None:
        raise HadrefError("the model file has no tokenizer (convert it from a folder with "
                          "tokenizer.json or vocab.txt)")
    if max_len > model.config.max_position_embeddings:
        raise HadrefError(f"--max-len {max_len} exceeds the model's position table "
                          f"({model.config.max_position_embeddings})")
    splits = []
    train = None
    if need_train:
        (train_split,) = load_split(task, "train", data_dir, skip_bad_rows=skip_bad_rows,
                                    limit=train_limit)
        splits.append(train_split)
        train = encode_split(train_split, model.tokenizer, max_len)
    dev_splits = load_split(task, "dev", data_dir, skip_bad_rows=skip_bad_rows, limit=dev_limit)
    splits += dev_splits
    report_skipped(splits)
    dev = [encode_split(s, model.tokenizer, max_len) for s in dev_splits]
    return train, dev


def _default_out(src, suffix) -> Path:
    src = Path(src)
    return src.with_name(f"{src.stem}-{suffix}.h5")


def _side_paths(out, log_path, ckpt_path):
    out = Path(out)
    log_path = Path(log_path) if log_path else out.with_name(out.stem + ".log.jsonl")
    ckpt_path = Path(ckpt_path) if ckpt_path else out.with_name(out.stem + ".ckpt.h5")
    return log_path, ckpt_path


def _progress(quiet, label):
    from hadref.train.progress import Progress

    return Progress(total=0, enabled=not quiet, label=label)


def _fmt(metrics_: dict) -> str:
    return ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics_.items())


# --- finetune -----------------------------------------------------------------------------

def _finetune_options(f, prefix=""):
    """The fine-tuning settings (prefix 'ft-' inside distill)."""
    from hadref.train.finetune import FinetuneSettings as S

    p = prefix
    opts = [
        click.option(f"--{p}epochs", f"{p.replace('-', '_')}epochs", type=float, default=S.epochs,
                     show_default=True, help="Passes over the training set."),
        click.option(f"--{p}steps", f"{p.replace('-', '_')}steps", type=click.IntRange(min=1),
                     default=None, help="Training steps (overrides the epochs)."),
        click.option(f"--{p}lr", f"{p.replace('-', '_')}lr", type=float, default=S.lr,
                     show_default=True, help="AdamW peak learning rate (linear decay to 0)."),
        click.option(f"--{p}batch-size", f"{p.replace('-', '_')}batch_size",
                     type=click.IntRange(min=1), default=S.batch_size, show_default=True,
                     help="Examples per step."),
        click.option(f"--{p}weight-decay", f"{p.replace('-', '_')}weight_decay", type=float,
                     default=S.weight_decay, show_default=True,
                     help="Decoupled weight decay (not on biases and LayerNorm)."),
        click.option(f"--{p}warmup-ratio", f"{p.replace('-', '_')}warmup_ratio", type=float,
                     default=S.warmup_ratio, show_default=True,
                     help="Fraction of the steps with a linear warm-up."),
        click.option(f"--{p}clip", f"{p.replace('-', '_')}clip", type=float, default=S.clip,
                     show_default=True, help="Global gradient-norm clipping."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _teacher_finetune_options(f):
    """distill's --ft-* options: the settings of the teacher fine-tune it may run."""
    return _finetune_options(f, "ft-")


def _run_finetune(model, task, train, dev, settings, out, log_path, ckpt_path,
                  checkpoint_every, resume, quiet, eval_every=0):
    from hadref.train.progress import JsonLog
    from hadref.train.finetune import ensure_head, finetune as _finetune
    from hadref.engine.io import save

    added = ensure_head(model, task, seed=settings.seed)
    log = JsonLog(log_path, append=resume)
    progress = _progress(quiet, "finetune ")
    try:
        log.write(event="start", job="finetune", task=task.name, settings=settings.to_dict(),
                  resume=resume, head_added=added)
        dev_metrics = _finetune(model, train, dev[0], task, settings, checkpoint_path=ckpt_path,
                                checkpoint_every=checkpoint_every, resume=resume, log=log,
                                progress=progress, eval_every=eval_every)
    except KeyboardInterrupt:
        raise HadrefError(f"interrupted; the checkpoint {ckpt_path} holds the last finished "
                          "step: run the same command with --resume to continue") from None
    finally:
        log.close()
    save(model, out)
    Path(ckpt_path).unlink(missing_ok=True)  # the run is complete: its file replaces it
    return dev_metrics


@click.command()
@click.argument("model_path", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Teacher file to write (default: MODEL-TASK.h5 beside MODEL).")
@click.option("--max-len", type=click.IntRange(min=8), default=128, show_default=True,
              help="Tokens per example, special tokens included (the paper used 256).")
@_finetune_options
@click.option("--no-dropout", is_flag=True, help="Train without dropout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Data order, head init, dropout.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also log dev metrics every this many steps (0: at the end only); the "
                   "last step's model is always the one saved.")
@_data_options
@_run_options
def finetune(model_path, task, out, max_len, epochs, steps, lr, batch_size, weight_decay,
             warmup_ratio, clip, no_dropout, seed, eval_every, data_dir, skip_bad_rows,
             train_limit, dev_limit, log_path, ckpt_path, checkpoint_every, resume, quiet,
             as_json):
    """Fine-tune MODEL.h5 on a GLUE task into a teacher (classifier head + encoder).

    A pre-trained encoder (such as `hadref convert minilm`) gets a fresh head; the whole
    model is trained with AdamW on cross-entropy (MSE for STS-B) and evaluated on dev.

    \b
    Example:
      hadref finetune weights/bert.h5 --task sst2 -o weights/bert-sst2.h5
    """
    from hadref.data import get_task
    from hadref.train.finetune import FinetuneSettings

    keep_freed_memory()   # a training process: reuse freed arrays (see hadref.train.memory)
    t = get_task(task)
    out = Path(out) if out else _default_out(model_path, t.name)
    log_path, ckpt_path = _side_paths(out, log_path, ckpt_path)
    settings = FinetuneSettings(epochs=epochs, steps=steps, lr=lr, batch_size=batch_size,
                                max_len=max_len, weight_decay=weight_decay,
                                warmup_ratio=warmup_ratio, clip=clip, dropout=not no_dropout,
                                seed=seed)
    settings.check()
    model = _load_model(model_path)
    if model.had is not None:
        raise HadrefError(f"{model_path} is a HAD student; fine-tune a float model")
    train, dev = _load_task_data(t, model, data_dir, max_len, skip_bad_rows, train_limit, dev_limit)
    t0 = time.monotonic()
    dev_metrics = _run_finetune(model, t, train, dev, settings, out, log_path, ckpt_path,
                                checkpoint_every, resume, quiet, eval_every)
    wall = time.monotonic() - t0
    if as_json:
        click.echo(json.dumps({"task": t.name, "metrics": dev_metrics, "out": str(out),
                               "wall_s": round(wall, 1)}))
    else:
        click.echo(f"teacher {out}: dev {_fmt(dev_metrics)} ({wall:.0f} s)")


# --- distill ------------------------------------------------------------------------------

def _stage_list(text: str, option: str) -> list[int]:
    """'1,2' -> [1, 2] ('' -> []); which numbers are allowed is the schedule's check."""
    try:
        return sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise HadrefError(f"{option}: expected comma-separated stage numbers such as 1,2,3, "
                          f"got {text!r}") from None


@click.command()
@click.argument("teacher_path", metavar="TEACHER.h5", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="Student file to write (default: TEACHER-had.h5 beside TEACHER).")
@click.option("--schedule", type=click.Choice(["paper", "quick"]), default="paper",
              show_default=True,
              help="paper: gamma 0.9995 (stages 1+2: 9,209 steps), stages 3 and 4 10,000 steps "
                   "each, max length 128. quick (HAD.md's CPU run): gamma "
                   "exp(-ln(100)/1500) (stages 1+2: 1,501 steps), stages 3 and 4 1,000 steps "
                   "each, max length 64. Options given explicitly win.")
@click.option("--gamma", type=float, default=None, help="Per-minibatch decay of c (schedule's value).")
@click.option("--c-start", type=float, default=5.0, show_default=True, help="c at the start of stage 1.")
@click.option("--c-mid", type=float, default=1.0, show_default=True, help="c where stage 1 ends and stage 2 starts.")
@click.option("--c-end", type=float, default=0.05, show_default=True, help="c where stage 2 ends.")
@click.option("--stage3-steps", type=click.IntRange(min=0), default=None, help="Stage 3 (STE) steps (schedule's value).")
@click.option("--stage4-steps", type=click.IntRange(min=0), default=None, help="Stage 4 (output loss only) steps (schedule's value).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Minibatch (paper: 16).")
@click.option("--lr", type=float, default=2e-5, show_default=True, help="Adam learning rate, stages 1-3 (stage 3: --lr-stage3 when given).")
@click.option("--lr-stage3", type=float, default=None, help="Adam learning rate, stage 3 alone (default: --lr, as the paper).")
@click.option("--lr-stage4", type=float, default=5e-6, show_default=True, help="Adam learning rate, stage 4 (lower).")
@click.option("--clip", type=float, default=0.5, show_default=True, help="Global gradient-norm clipping (paper: 0.5).")
@click.option("--ste-t", type=float, default=1.0, show_default=True, help="STE window: gradient passes where |x/sigma| <= t.")
@click.option("--top-n", type=click.IntRange(min=1), default=30, show_default=True, help="Keys kept per query row (paper: 30 at 256 tokens).")
@click.option("--top-n-ratio", type=float, default=None, help="Scale N with length: N = round(ratio * max-len) (paper: ~0.117).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Output-distillation temperature.")
@click.option("--no-attn-loss", is_flag=True, help="Ablation 'w/o AD': output loss only, same iterations.")
@click.option("--attn-loss-stages", default="1,2,3", show_default=True,
              help="Stages whose loss adds the attention KL (paper: 1,2,3; stage 4 never), "
                   "comma-separated; '1,2' drops it in the STE stage 3.")
@click.option("--no-tanh", is_flag=True, help="Ablation 'w/o Tanh': stages 1-2 replaced by as many STE steps.")
@click.option("--sigma-batches", type=click.IntRange(min=1), default=100, show_default=True, help="Minibatches for sigma estimation.")
@click.option("--sigma-batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Examples per sigma minibatch.")
@click.option("--max-len", type=click.IntRange(min=8), default=None, help="Tokens per example (schedule's value: paper 128, quick 64).")
@click.option("--no-dropout", is_flag=True, help="Train the student without dropout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Data order, sigma batches, dropout.")
@click.option("--no-finetune", is_flag=True, help="Fail if the teacher has no head for the task instead of fine-tuning one.")
@_teacher_finetune_options
@_data_options
@_run_options
def distill(teacher_path, task, out, schedule, gamma, c_start, c_mid, c_end, stage3_steps,
            stage4_steps, batch_size, lr, lr_stage3, lr_stage4, clip, ste_t, top_n, top_n_ratio,
            temperature, no_attn_loss, attn_loss_stages, no_tanh, sigma_batches, sigma_batch_size, max_len,
            no_dropout, seed, no_finetune, ft_epochs, ft_steps, ft_lr, ft_batch_size,
            ft_weight_decay, ft_warmup_ratio, ft_clip, data_dir, skip_bad_rows, train_limit,
            dev_limit, log_path, ckpt_path, checkpoint_every, resume, quiet, as_json):
    """Distill TEACHER.h5 into a HAD student (binarized queries and keys, top-N attention).

    Sigma estimation, then stages 1-4 (HAD.md): tanh with c decaying from 5 to 1, tanh
    from 1 to 0.05, STE with attention + output loss, STE with output loss only at a lower
    learning rate. A teacher without a head for the task (a pre-trained encoder) is first
    fine-tuned exactly as `hadref finetune` would (options --ft-*), saved as
    OUT-teacher.h5 and used. Prints the student's dev metric beside the teacher's.

    \b
    Example:
      hadref convert minilm -o weights/bert.h5
      hadref distill weights/bert.h5 --task sst2 --schedule quick
    """
    from hadref.data import get_task
    from hadref.train.evaluation import evaluate
    from hadref.train.progress import JsonLog
    from hadref.distill.trainer import SCHEDULES, DistillSettings, distill as _distill
    from hadref.train.finetune import FinetuneSettings
    from hadref.engine.io import save

    keep_freed_memory()   # a training process: reuse freed arrays (see hadref.train.memory)
    t = get_task(task)
    preset = {**SCHEDULES[schedule], "max_len": 128 if schedule == "paper" else 64}
    settings = DistillSettings(
        schedule=schedule, gamma=preset["gamma"] if gamma is None else gamma,
        c_start=c_start, c_mid=c_mid, c_end=c_end,
        stage3_steps=preset["stage3_steps"] if stage3_steps is None else stage3_steps,
        stage4_steps=preset["stage4_steps"] if stage4_steps is None else stage4_steps,
        batch_size=batch_size, lr=lr, lr_stage3=lr_stage3, lr_stage4=lr_stage4, clip=clip, ste_t=ste_t, top_n=top_n,
        top_n_ratio=top_n_ratio, temperature=temperature, attn_loss=not no_attn_loss,
        attn_loss_stages=_stage_list(attn_loss_stages, "--attn-loss-stages"),
        tanh=not no_tanh, sigma_batches=sigma_batches, sigma_batch_size=sigma_batch_size,
        max_len=preset["max_len"] if max_len is None else max_len, dropout=not no_dropout,
        seed=seed)
    settings.check()
    out = Path(out) if out else _default_out(teacher_path, "had")
    log_path, ckpt_path = _side_paths(out, log_path, ckpt_path)
    teacher = _load_model(teacher_path, "teacher")
    if teacher.had is not None:
        raise HadrefError(f"{teacher_path} is already a HAD student; distill from a float teacher")
    headless = teacher.num_labels is None
    auto_teacher = out.with_name(out.stem + "-teacher.h5")   # where a head-less encoder's teacher goes
    ft_log, ft_ckpt = _side_paths(auto_teacher, None, None)
    if resume and not (ckpt_path.is_file() or (headless and (ft_ckpt.is_file() or auto_teacher.is_file()))):
        raise HadrefError(f"no checkpoint to resume from at {ckpt_path} (--resume)")
    train, dev = _load_task_data(t, teacher, data_dir, settings.max_len, skip_bad_rows,
                                 train_limit, dev_limit)
    t0 = time.monotonic()
    teacher_file = Path(teacher_path)
    if headless:
        if no_finetune:
            raise HadrefError(f"{teacher_path} has no classifier head for {t.name} (a pre-trained "
                              "encoder): fine-tune it first (hadref finetune) or drop --no-finetune")
        teacher_file = auto_teacher
        if resume and teacher_file.is_file() and not ft_ckpt.is_file():
            click.echo(f"{teacher_path} has no head for {t.name}: using the teacher already "
                       f"fine-tuned at {teacher_file}", err=True)
        else:
            ft = FinetuneSettings(epochs=ft_epochs, steps=ft_steps, lr=ft_lr,
                                  batch_size=ft_batch_size, max_len=settings.max_len,
                                  weight_decay=ft_weight_decay, warmup_ratio=ft_warmup_ratio,
                                  clip=ft_clip, dropout=True, seed=seed)
            ft.check()
            click.echo(f"{teacher_path} has no head for {t.name}: fine-tuning a teacher first "
                       f"(as `hadref finetune` would), saved to {teacher_file}", err=True)
            ft_metrics = _run_finetune(teacher, t, train, dev, ft, teacher_file, ft_log, ft_ckpt,
                                       checkpoint_every, resume and ft_ckpt.is_file(), quiet)
            click.echo(f"teacher {teacher_file}: dev {_fmt(ft_metrics)}", err=True)
        teacher = _load_model(teacher_file, "teacher")  # exactly what the file holds
    teacher_metrics, _ = evaluate(teacher, dev[0], t)
    resume_distill = resume and ckpt_path.is_file()
    log = JsonLog(log_path, append=resume_distill)
    progress = _progress(quiet, "distill ")
    try:
        log.write(event="start", job="distill", task=t.name, settings=settings.to_dict(),
                  resume=resume, teacher=str(teacher_file), teacher_metrics=teacher_metrics)
        student, stage_metrics = _distill(
            teacher, train, dev[0], t, settings, checkpoint_path=ckpt_path,
            checkpoint_every=checkpoint_every, resume=resume_distill, log=log,
            progress=progress, teacher_sha256=_sha256(teacher_file))
    except KeyboardInterrupt:
        raise HadrefError(f"interrupted; the checkpoint {ckpt_path} holds the last finished "
                          "step: run the same command with --resume to continue") from None
    finally:
        log.close()
    save(student, out)
    Path(ckpt_path).unlink(missing_ok=True)  # the run is complete: its file replaces it
    student_metrics = stage_metrics.get(str(student.had["stage"])) or evaluate(student, dev[0], t)[0]
    wall = time.monotonic() - t0
    result = {"task": t.name, "teacher": str(teacher_file), "student": str(out),
              "teacher_metrics": teacher_metrics, "metrics": student_metrics,
              "stage_metrics": stage_metrics, "top_n": settings.effective_top_n,
              "schedule": schedule, "wall_s": round(wall, 1)}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"teacher {teacher_file}: dev {_fmt(teacher_metrics)}")
        click.echo(f"student {out}: dev {_fmt(student_metrics)} (HAD, N = "
                   f"{settings.effective_top_n}; {wall:.0f} s)")


# --- evaluate -----------------------------------------------------------------------------

@click.command()
@click.argument("model_path", metavar="MODEL.h5", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.")
@click.option("--max-len", type=click.IntRange(min=8), default=None,
              help="Tokens per example (default: a student's training length, else 128 or the "
                   "model's position table if shorter).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per forward pass.")
@click.option("--check", is_flag=True,
              help="HAD student: also run the training path and require the same prediction "
                   "for every example as the packed kernels.")
@click.option("--json", "as_json", is_flag=True, help="Print {task, metrics, ...} as JSON.")
@(lambda f: _data_options(f, train=False))
def evaluate(model_path, task, max_len, batch_size, check, as_json, data_dir, skip_bad_rows,
             dev_limit):
    """The GLUE metric of MODEL.h5 on the task's dev set (MNLI: matched and mismatched).

    A HAD student runs through the packed Numba kernels (XNOR-popcount, counting top-N).
    """
    import numpy as np

    from hadref.train import metrics
    from hadref.data import get_task
    from hadref.train.evaluation import predict

    t = get_task(task)
    model = _load_model(model_path)
    if model.num_labels is None:
        raise HadrefError(f"{model_path} has no classifier head: fine-tune it first (hadref finetune)")
    if model.num_labels != t.num_labels:
        raise HadrefError(f"{model_path} has a {model.num_labels}-output head, task {t.name} needs {t.num_labels}")
    if check and model.had is None:
        raise HadrefError(f"--check compares the packed kernels with the training path of a HAD "
                          f"student; {model_path} is a float model")
    if max_len is None:
        default = min(128, model.config.max_position_embeddings)
        max_len = int((model.had or {}).get("settings", {}).get("max_len", default))
    _, devs = _load_task_data(t, model, data_dir, max_len, skip_bad_rows, None, dev_limit,
                              need_train=False)
    result = {"task": t.name, "model": str(model_path), "max_len": max_len,
              "had": model.had is not None, "metrics": {}, "examples": {}}
    names = ["dev"] if len(devs) == 1 else ["matched", "mismatched"]
    t0 = time.monotonic()
    for name, dev in zip(names, devs):
        logits = predict(model, dev, batch_size)
        preds = metrics.predictions(logits, t.is_regression)
        values = metrics.compute(t.metrics, preds, dev.labels)
        suffix = "" if name in ("dev", "matched") else f"_{name}"
        result["metrics"].update({k + suffix: v for k, v in values.items()})
        result["examples"][name] = len(dev)
        if check:
            from hadref.had.core import HADAttentionCore

            packed = model.attention_core
            model.attention_core = HADAttentionCore(packed.sigma_q, packed.sigma_k, packed.top_n,
                                                    stage="hard", use_kernels=False)
            try:
                ref = predict(model, dev, batch_size)
            finally:
                model.attention_core = packed
            ref_preds = metrics.predictions(ref, t.is_regression)
            diff = float(np.max(np.abs(ref - logits))) if len(logits) else 0.0
            agree = (np.array_equal(ref_preds, preds) if not t.is_regression
                     else bool(np.allclose(ref_preds, preds, rtol=1e-4, atol=1e-4)))
            result.setdefault("check", {})[name] = {"agree": agree, "max_logit_diff": diff}
            if not agree:
                bad = int(np.sum(ref_preds != preds))
                raise HadrefError(f"--check failed on {t.name} {name}: the packed kernels and the "
                                  f"training path disagree on {bad} of {len(preds)} predictions "
                                  f"(max logit difference {diff:.3g})")
    result["wall_s"] = round(time.monotonic() - t0, 2)
    if as_json:
        click.echo(json.dumps(result))
        return
    kind = f"HAD student (N = {model.had['top_n']}, packed kernels)" if model.had else "float model"
    click.echo(f"{model_path} [{kind}] {t.name} dev: {_fmt(result['metrics'])} "
               f"({sum(result['examples'].values())} examples, {result['wall_s']:.1f} s)")
    for name, c in result.get("check", {}).items():
        click.echo(f"check {name}: packed kernels and training path agree on every prediction "
                   f"(max logit difference {c['max_logit_diff']:.3g})")

"""Whole jobs on model files: fine-tune a teacher, evaluate a model (``run_finetune``,
``run_evaluate``; the distillation job is :func:`hadref.distill.run.run_distill`).

A job takes file paths and settings, does everything the CLI command of the same name does
(load and check the model, read and tokenize the GLUE data, train with checkpoints and
resume, write the output file atomically) and returns the result as a JSON-able dict; the
CLI only turns options into these arguments and prints the dict. The pieces the jobs share
(:class:`DataSource`, :class:`RunFiles`, :func:`load_model_file`, :func:`task_data`) live
here too.

Under mpiexec (:mod:`hadref.train.parallel`) every rank runs the same job; rank 0 alone
writes the log, the checkpoint, the progress display and the output file, and every rank
returns the same result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError
from hadref.train.parallel import current_ranks


@dataclass(frozen=True)
class DataSource:
    """Where a job's GLUE data comes from and how much of it it uses.

    data_dir: the GLUE folder (``DIR/SST-2/train.tsv``, ...), None: ``$HADREF_DATA``;
    skip_bad_rows: leave out malformed rows (counted and reported) instead of stopping;
    train_limit, dev_limit: use only the first N rows (demos, tests);
    holdout: a fraction in [0, 1) of the training rows held out (a random subset drawn with
    ``holdout_seed``; the limit applies first): the job trains on the rest and evaluates on
    the held-out rows *instead of dev*, so that settings are chosen without the dev set.
    """

    data_dir: str | None = None
    skip_bad_rows: bool = False
    train_limit: int | None = None
    dev_limit: int | None = None
    holdout: float = 0.0
    holdout_seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.holdout < 1.0:
            raise HadrefError(f"--holdout: expected a fraction in [0, 1), got {self.holdout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resume_settings(self) -> dict:
        """The data settings a ``--resume`` must repeat (all but the folder, which may
        move): limits, skipped rows, hold-out."""
        return {k: v for k, v in self.to_dict().items() if k != "data_dir"}


@dataclass(frozen=True)
class RunFiles:
    """The files a training job writes: the output model, its JSON-lines log and its
    checkpoint (by default ``OUT.log.jsonl`` and ``OUT.ckpt.h5`` beside ``OUT``)."""

    out: Path
    log: Path
    checkpoint: Path

    @classmethod
    def beside(cls, out, log=None, checkpoint=None) -> "RunFiles":
        out = Path(out)
        return cls(out, Path(log) if log else out.with_name(out.stem + ".log.jsonl"),
                   Path(checkpoint) if checkpoint else out.with_name(out.stem + ".ckpt.h5"))

    def named(self, prefix: str = "") -> dict:
        """{option: path} for messages (``prefix`` names the files of a nested run)."""
        return {f"{prefix}-o": self.out, f"{prefix}--log": self.log,
                f"{prefix}--checkpoint": self.checkpoint}

    def claim(self, inputs: dict, *, overwrite: bool, resume: bool, notify=None,
              prefix: str = "", siblings: dict | None = None) -> None:
        """Apply :mod:`hadref.files`' rules before any work: distinct from ``inputs``
        ({name: path}), from each other and from ``siblings`` (other files the job writes),
        an existing file only with ``overwrite`` or ``resume``, writable folders; then
        remove stale temporary files of interrupted writes of the output and the
        checkpoint (``notify`` is told of each). ``prefix`` goes before the option names
        in messages (the files of a nested run)."""
        from hadref.files import check_distinct, claim_outputs, remove_stale_temps

        check_distinct(inputs, {**(siblings or {}), **self.named(prefix)})
        claim_outputs(self.named(prefix), overwrite=overwrite, resume=resume)
        for tmp, size in remove_stale_temps(self.out, self.checkpoint):
            if notify is not None:
                notify(f"removed {tmp} ({size / 2**20:.1f} MiB), left by an interrupted write")


def default_out(src, suffix: str) -> Path:
    """``DIR/NAME-SUFFIX.h5`` beside ``src`` (the default output of a job)."""
    src = Path(src)
    return src.with_name(f"{src.stem}-{suffix}.h5")


def load_model_file(path, what: str = "model"):
    """``hadref.load(path)`` with a one-line error when the file is missing."""
    from hadref.engine.io import load

    if not Path(path).is_file():
        raise HadrefError(f"{what} file not found: {path}")
    return load(path)


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes (a student records its teacher's)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_holdout(split, fraction: float, seed: int):
    """(rest, held out) of a training Split: ``round(fraction * n)`` rows (at least 1 when
    fraction > 0) drawn without replacement by ``seed``, both in file order."""
    n = len(split)
    take = min(n - 1, max(1, int(round(fraction * n))))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 0x4F1D]).choice(n, size=take, replace=False)] = True
    return split.subset(np.flatnonzero(~held)), split.subset(np.flatnonzero(held))


def task_data(task, model, max_len: int, data: DataSource, need_train: bool = True):
    """(train Encoded or None, [dev Encoded per dev file]) of ``task``, tokenized with the
    model's tokenizer at ``max_len`` tokens (MNLI: matched and mismatched dev sets). With
    ``data.holdout``, the second item is ``[held-out training rows]`` instead of dev."""
    from hadref.data import encode_split, load_split, report_skipped

    if model.tokenizer is None:
        raise HadrefError("the model file has no tokenizer (convert it from a folder with "
                          "tokenizer.json or vocab.txt)")
    if max_len > model.config.max_position_embeddings:
        raise HadrefError(f"--max-len {max_len} exceeds the model's position table "
                          f"({model.config.max_position_embeddings})")
    splits = []
    train = None
    if need_train or data.holdout:
        (train_split,) = load_split(task, "train", data.data_dir,
                                    skip_bad_rows=data.skip_bad_rows, limit=data.train_limit)
        splits.append(train_split)
    if data.holdout:
        train_split, held = split_holdout(train_split, data.holdout, data.holdout_seed)
        dev_splits = [held]
    else:
        dev_splits = load_split(task, "dev", data.data_dir, skip_bad_rows=data.skip_bad_rows,
                                limit=data.dev_limit)
        splits += dev_splits
    if need_train:
        train = encode_split(train_split, model.tokenizer, max_len)
    report_skipped(splits)
    dev = [encode_split(s, model.tokenizer, max_len) for s in dev_splits]
    return train, dev


def interrupted(checkpoint) -> HadrefError:
    """The error a job raises on Ctrl-C: where its state is and how to continue."""
    return HadrefError(f"interrupted; the checkpoint {checkpoint} holds the last finished "
                       "step: run the same command with --resume to continue")


def finetune_files(model, task, train, dev, settings, files: RunFiles, *,
                   checkpoint_every: float = 300.0, resume: bool = False,
                   progress: bool = True, eval_every: int = 0,
                   data: DataSource = DataSource(), ranks=None) -> dict:
    """Fine-tune an in-memory ``model`` (a head is added when it has none) with its log and
    checkpoint, write it to ``files.out`` and remove the checkpoint; return dev metrics.
    Under MPI rank 0 writes the files, and every rank returns once ``files.out`` exists."""
    from hadref.engine.io import save
    from hadref.train.finetune import ensure_head, finetune
    from hadref.train.progress import JsonLog, Progress

    ranks = ranks or current_ranks()
    added = ensure_head(model, task, seed=settings.seed)
    log = JsonLog(files.log if ranks.is_root else None, append=resume)
    shown = Progress(total=0, enabled=progress and ranks.is_root, label="finetune ")
    start = {"event": "start", "job": "finetune", "task": task.name,
             "settings": settings.to_dict(), "data": data.resume_settings(), "resume": resume,
             "head_added": added}
    try:
        dev_metrics = finetune(model, train, dev[0], task, settings,
                               checkpoint_path=files.checkpoint, checkpoint_every=checkpoint_every,
                               resume=resume, log=log, progress=shown, eval_every=eval_every,
                               data_settings=data.resume_settings(), start_record=start,
                               ranks=ranks)
    except KeyboardInterrupt:
        raise interrupted(files.checkpoint) from None
    finally:
        shown.close()
        log.close()
    if ranks.is_root:
        save(model, files.out)
        files.checkpoint.unlink(missing_ok=True)  # the run is complete: its file replaces it
    ranks.barrier()   # other ranks may read files.out next (run_distill)
    return dev_metrics


def run_finetune(model_path, task, settings=None, out=None, *, data: DataSource = DataSource(),
                 log=None, checkpoint=None, checkpoint_every: float = 300.0,
                 resume: bool = False, overwrite: bool = False, progress: bool = True,
                 eval_every: int = 0, notify=None, ranks=None) -> dict:
    """Fine-tune the model file ``model_path`` on a GLUE task into a teacher file.

    task: a GLUE task name (``"sst2"``) or :class:`hadref.data.Task`; settings:
    :class:`hadref.train.finetune.FinetuneSettings` (default: its defaults); out: the
    teacher file (default ``MODEL-TASK.h5`` beside the model); ranks: the MPI ranks
    (default: all of mpiexec's, else one process). The output, log and checkpoint must
    differ from the model file and each other, and an existing one is replaced only with
    ``overwrite`` or ``resume`` (:mod:`hadref.files`); ``notify`` is called with one-line
    messages (stale temporary files removed). Returns ``{"task", "metrics" (dev), "out",
    "wall_s"}``.

    >>> hadref.run_finetune("weights/bert.h5", "sst2", FinetuneSettings(max_len=64))
    """
    from hadref.data import get_task
    from hadref.train.finetune import FinetuneSettings

    settings = settings or FinetuneSettings()
    settings.check()
    t = get_task(task) if isinstance(task, str) else task
    files = RunFiles.beside(out or default_out(model_path, t.name), log, checkpoint)
    files.claim({"MODEL.h5": model_path}, overwrite=overwrite, resume=resume, notify=notify)
    if resume and not files.checkpoint.is_file():
        raise HadrefError(f"no checkpoint to resume from at {files.checkpoint} (--resume)")
    model = load_model_file(model_path)
    if model.had is not None:
        raise HadrefError(f"{model_path} is a HAD student; fine-tune a float model")
    train, dev = task_data(t, model, settings.max_len, data)
    t0 = time.monotonic()
    metrics = finetune_files(model, t, train, dev, settings, files,
                             checkpoint_every=checkpoint_every, resume=resume,
                             progress=progress, eval_every=eval_every, data=data,
                             ranks=ranks)
    return {"task": t.name, "metrics": metrics, "out": str(files.out),
            "wall_s": round(time.monotonic() - t0, 1)}


def run_evaluate(model_path, task, *, max_len: int | None = None, batch_size: int = 64,
                 check: bool = False, data: DataSource = DataSource(), ranks=None) -> dict:
    """The GLUE metric of a model file on the task's dev set (MNLI: matched, mismatched).

    A HAD student runs through the packed Numba kernels. ``check`` (students only) also
    runs the training path (NumPy, ``use_kernels=False``) and raises when any prediction
    differs. max_len default: a student's training length, else 128 (or the model's
    position table if shorter). Returns ``{"task", "model", "max_len", "had", "top_n" (None
    for a float model), "metrics", "examples", "wall_s"}`` plus ``"check": {split: {"agree",
    "max_logit_diff"}}``. Under mpiexec the batches are split over the ranks (ranks).
    """
    from hadref.data import get_task
    from hadref.train import metrics
    from hadref.train.evaluation import predict

    t = get_task(task) if isinstance(task, str) else task
    ranks = ranks or current_ranks()
    model = load_model_file(model_path)
    if model.num_labels is None:
        raise HadrefError(f"{model_path} has no classifier head: fine-tune it first (hadref finetune)")
    if model.num_labels != t.num_labels:
        raise HadrefError(f"{model_path} has a {model.num_labels}-output head, task {t.name} "
                          f"needs {t.num_labels}")
    if check and model.had is None:
        raise HadrefError(f"--check compares the packed kernels with the training path of a HAD "
                          f"student; {model_path} is a float model")
    if max_len is None:
        default = min(128, model.config.max_position_embeddings)
        max_len = int((model.had or {}).get("settings", {}).get("max_len", default))
    _, devs = task_data(t, model, max_len, data, need_train=False)
    result = {"task": t.name, "model": str(model_path), "max_len": max_len,
              "had": model.had is not None, "top_n": (model.had or {}).get("top_n"),
              "metrics": {}, "examples": {}}
    names = ["dev"] if len(devs) == 1 else ["matched", "mismatched"]
    t0 = time.monotonic()
    for name, dev in zip(names, devs):
        logits = predict(model, dev, batch_size, ranks)
        preds = metrics.predictions(logits, t.is_regression)
        values = metrics.compute(t.metrics, preds, dev.labels)
        suffix = "" if name in ("dev", "matched") else f"_{name}"
        result["metrics"].update({k + suffix: v for k, v in values.items()})
        result["examples"][name] = len(dev)
        if check:
            result.setdefault("check", {})[name] = _check_against_training_path(
                model, dev, batch_size, logits, preds, t, name, ranks)
    result["wall_s"] = round(time.monotonic() - t0, 2)
    return result


def _check_against_training_path(model, dev, batch_size, logits, preds, task, name, ranks) -> dict:
    """Run the student's training path (hard stage, NumPy) on ``dev`` and compare its
    predictions with the packed kernels' ``preds``; raise when any differs."""
    from hadref.had.core import HADAttentionCore
    from hadref.train import metrics
    from hadref.train.evaluation import predict

    packed = model.attention_core
    model.attention_core = HADAttentionCore(packed.sigma_q, packed.sigma_k, packed.top_n,
                                            transform="hard", use_kernels=False)
    try:
        ref = predict(model, dev, batch_size, ranks)
    finally:
        model.attention_core = packed
    ref_preds = metrics.predictions(ref, task.is_regression)
    diff = float(np.max(np.abs(ref - logits))) if len(logits) else 0.0
    agree = (np.array_equal(ref_preds, preds) if not task.is_regression
             else bool(np.allclose(ref_preds, preds, rtol=1e-4, atol=1e-4)))
    if not agree:
        bad = int(np.sum(ref_preds != preds))
        raise HadrefError(f"--check failed on {task.name} {name}: the packed kernels and the "
                          f"training path disagree on {bad} of {len(preds)} predictions "
                          f"(max logit difference {diff:.3g})")
    return {"agree": agree, "max_logit_diff": diff}

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


def task_data(task, model, max_len: int, data: DataSource, need_train: bool = True,
              record: list | None = None):
    """(train Encoded or None, [dev Encoded per dev file]) of ``task``, tokenized with the
    model's tokenizer at ``max_len`` tokens (MNLI: matched and mismatched dev sets). With
    ``data.holdout``, the second item is ``[held-out training rows]`` instead of dev.

    record: a list that gets one provenance entry per file read (its sha256 and the rows
    used, :func:`hadref.train.provenance.data_record`)."""
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
    if record is not None:
        from hadref.train.provenance import data_record

        if need_train:
            record.append(data_record("train", train_split, data.train_limit))
        name, limit = ("holdout", None) if data.holdout else ("dev", data.dev_limit)
        record.extend(data_record(name, s, limit) for s in dev_splits)
    dev = [encode_split(s, model.tokenizer, max_len) for s in dev_splits]
    return train, dev


def interrupted(checkpoint) -> HadrefError:
    """The error a job raises on Ctrl-C: where its state is and how to continue."""
    return HadrefError(f"interrupted; the checkpoint {checkpoint} holds the last finished "
                       "step: run the same command with --resume to continue")


def finetune_files(model, task, train, dev, settings, files: RunFiles, *,
                   checkpoint_every: float = 300.0, resume: bool = False,
                   progress: bool = True, eval_every: int = 0,
                   data: DataSource = DataSource(), ranks=None,
                   provenance: dict | None = None) -> dict:
    """Fine-tune an in-memory ``model`` (a head is added when it has none) with its log and
    checkpoint, write it to ``files.out`` (with ``provenance``, and its metrics beside it as
    ``OUT.metrics.json``) and remove the checkpoint; return dev metrics.
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
        model.provenance = provenance
        save(model, files.out)
        write_run_results(files.out, {"job": "finetune", "task": task.name,
                                      "metrics": dev_metrics, "settings": settings.to_dict(),
                                      "provenance": provenance})
        files.checkpoint.unlink(missing_ok=True)  # the run is complete: its file replaces it
    ranks.barrier()   # other ranks may read files.out next (run_distill)
    return dev_metrics


def write_run_results(out, results: dict):
    """``OUT.metrics.json`` beside the file a job wrote (:mod:`hadref.train.results`)."""
    from hadref.train.results import beside, write_json

    return write_json(beside(out), {"file": str(out), "sha256": file_sha256(out), **results})


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
    from hadref.train import provenance

    record = []
    train, dev = task_data(t, model, settings.max_len, data, record=record)
    prov = provenance.build("finetune", t, record, {"seed": settings.seed}, settings.to_dict())
    prov["base"] = {"file": str(model_path), "sha256": file_sha256(model_path)}
    t0 = time.monotonic()
    metrics = finetune_files(model, t, train, dev, settings, files,
                             checkpoint_every=checkpoint_every, resume=resume,
                             progress=progress, eval_every=eval_every, data=data,
                             ranks=ranks, provenance=prov)
    return {"task": t.name, "metrics": metrics, "out": str(files.out),
            "wall_s": round(time.monotonic() - t0, 1)}


def run_evaluate(model_path, task, *, max_len: int | None = None, batch_size: int = 64,
                 check: bool = False, data: DataSource = DataSource(), top_n=None,
                 binarize: bool = False, split: str = "dev", predictions=None,
                 submission=None, results=None, any_task: bool = False,
                 sigma_batches: int = 100, sigma_batch_size: int = 16, seed: int = 0,
                 overwrite: bool = False, ranks=None) -> dict:
    """The GLUE metric of a model file on the task's dev set (MNLI: matched, mismatched),
    at one or several N, with per-example predictions and GLUE test submissions.

    A HAD student runs through the packed Numba kernels at its own N, or at each N of
    ``top_n`` (a list of ints: the accuracy-against-N curve). ``binarize`` scores a float
    teacher hard-binarized without distillation (the paper's baseline): sigma_Q, sigma_K
    estimated on ``sigma_batches`` training minibatches as distillation does (HAD.md), then
    the packed kernels at each N of ``top_n`` (default 30); the float teacher's own metric
    comes with it (``reference``). ``check`` (students) also runs the training path and
    raises when any prediction differs. ``split`` "test" reads the GLUE test files (no
    labels, no metrics) and needs ``submission`` (a folder for GLUE's files, see
    :mod:`hadref.train.predictions`); ``predictions`` writes the per-example TSV. Both need
    a single N. The head must belong to ``task`` (from the file's provenance) unless
    ``any_task``; a head of the wrong size is always an error. ``results`` (default: beside
    the predictions or submission file when one is written) gets the returned dict as JSON.
    An existing predictions, submission or results file is an error before any work unless
    ``overwrite`` (hadref.files.claim_outputs).

    max_len default: the training length of a student or of a teacher with provenance, else
    128 (or the model's position table if shorter). Returns ``{"task", "model", "split",
    "max_len", "had", "binarized",
    "top_n" (the student's or the one N scored; None for a float model), "top_ns",
    "student_top_n" (the N a student was trained at),
    "metrics" (at top_n; {} on test), "by_top_n" ({str(N): metrics}), "reference" (float
    teacher metrics: --binarize, or a student's teacher from its provenance; else None),
    "examples", "files", "settings", "provenance", "wall_s"}`` plus ``"check"`` and, with
    binarize, ``"sigma_q"``, ``"sigma_k"``. Under mpiexec the batches are split over the
    ranks (ranks) and rank 0 writes the files.
    """
    from hadref.data import encode_split, get_task, load_split, report_skipped
    from hadref.had.core import HADAttentionCore
    from hadref.train import metrics
    from hadref.train import predictions as pred_files
    from hadref.train.evaluation import predict
    from hadref.train.provenance import check_task
    from hadref.train.results import beside, write_json

    t = get_task(task) if isinstance(task, str) else task
    if split not in ("dev", "test"):
        raise HadrefError(f"--split must be dev or test, got {split!r}")
    ranks = ranks or current_ranks()
    model = load_model_file(model_path)
    check_task(model, t, model_path, any_task)
    if check and model.had is None:
        raise HadrefError(f"--check compares the packed kernels with the training path of a HAD "
                          f"student; {model_path} is a float model")
    if binarize and model.had is not None:
        raise HadrefError(f"--binarize scores a float teacher binarized without distillation; "
                          f"{model_path} is already a HAD student")
    top_ns = _top_n_list(top_n, model, binarize, model_path)
    if len(top_ns) > 1 and (predictions or split == "test"):
        raise HadrefError("--predictions and --split test score one N: give one --top-n value")
    if split == "test" and submission is None:
        raise HadrefError("--split test writes GLUE's submission files: give --submission DIR")
    if ranks.is_root:
        _claim_evaluate_outputs(model_path, t, split, predictions, submission, results, overwrite)
    if max_len is None:   # the length the file was trained at, when it says so
        default = min(128, model.config.max_position_embeddings)
        trained = ((model.had or {}).get("settings", {}).get("max_len")
                   or ((model.provenance or {}).get("settings") or {}).get("max_len"))
        max_len = int(trained or default)
    t_start = time.monotonic()
    main_n = top_ns[0] if top_ns else None
    if model.had is not None and int(model.had["top_n"]) in top_ns:
        main_n = int(model.had["top_n"])   # "metrics": the student at its own N
    result = {"task": t.name, "model": str(model_path), "split": split, "max_len": max_len,
              "had": model.had is not None, "binarized": bool(binarize),
              "top_n": main_n, "top_ns": top_ns,
              "student_top_n": int(model.had["top_n"]) if model.had is not None else None,
              "metrics": {},
              "by_top_n": {}, "reference": None, "examples": {}, "files": []}
    sigma_q = sigma_k = None
    if model.had is not None:
        sigma_q, sigma_k = model.had["sigma_q"], model.had["sigma_k"]
        teacher = (model.provenance or {}).get("teacher") or {}
        if teacher.get("metrics"):
            result["reference"] = teacher["metrics"]
    if split == "dev":
        train, evals = task_data(t, model, max_len, data, need_train=binarize)
        splits = None
    else:
        if binarize:
            train, _ = task_data(t, model, max_len, data, need_train=True)
        splits = load_split(t, "test", data.data_dir, skip_bad_rows=data.skip_bad_rows,
                            limit=data.dev_limit)
        report_skipped(splits)
        evals = [encode_split(s, model.tokenizer, max_len) for s in splits]
    names = ["dev"] if len(evals) == 1 else ["matched", "mismatched"]
    if split == "test":
        names = ["test"] if len(evals) == 1 else ["test_matched", "test_mismatched"]
    if binarize:
        from hadref.distill.sigma import estimate_sigma

        if split == "dev":
            result["reference"] = _scores(model, evals, names, t, batch_size, ranks)[0]
        sigma_q, sigma_k = estimate_sigma(model, train, n_batches=sigma_batches,
                                          batch_size=sigma_batch_size, seed=seed)
        result["sigma_q"], result["sigma_k"] = sigma_q.tolist(), sigma_k.tolist()
    float_core = model.attention_core
    last_logits = None
    for n in top_ns or [None]:
        if n is not None:
            model.attention_core = HADAttentionCore.for_inference(sigma_q, sigma_k, n)
        if split == "dev":
            values, last_logits = _scores(model, evals, names, t, batch_size, ranks)
            result["by_top_n"][str(n)] = values
        else:
            last_logits = [predict(model, e, batch_size, ranks) for e in evals]
        if check:
            for name, e, logits in zip(names, evals, last_logits):
                preds = metrics.predictions(logits, t.is_regression)
                result.setdefault("check", {})[name if len(top_ns) <= 1 else f"{name}@{n}"] = \
                    _check_against_training_path(model, e, batch_size, logits, preds, t, name,
                                                 ranks)
    model.attention_core = float_core
    result["metrics"] = result["by_top_n"].get(str(main_n), {})
    if split == "dev" and not top_ns:
        result["by_top_n"] = {}
    result["examples"] = {name: len(e) for name, e in zip(names, evals)}
    if predictions and ranks.is_root:
        if splits is None:
            splits = load_split(t, "dev", data.data_dir, skip_bad_rows=data.skip_bad_rows,
                                limit=data.dev_limit)
        for path, s, logits in zip(pred_files.predictions_paths(predictions, names), splits,
                                   last_logits):
            result["files"].append(str(pred_files.write_predictions(path, s, logits)))
    if split == "test" and ranks.is_root:
        result["files"] += [str(p) for p in pred_files.write_submission(submission, t, splits,
                                                                        last_logits)]
    result["settings"] = {"max_len": max_len, "batch_size": batch_size, "top_n": top_ns,
                          "binarize": bool(binarize), "split": split, "any_task": bool(any_task),
                          "dev_limit": data.dev_limit, "train_limit": data.train_limit,
                          "skip_bad_rows": data.skip_bad_rows}
    if binarize:
        result["settings"].update(sigma_batches=sigma_batches, sigma_batch_size=sigma_batch_size,
                                  seed=seed)
    result["provenance"] = model.provenance
    result["wall_s"] = round(time.monotonic() - t_start, 2)
    target = results or (beside(result["files"][0]) if result["files"] else None)
    if target is not None and ranks.is_root:
        result["results_file"] = str(target)
        write_json(target, result)
    return result


def _claim_evaluate_outputs(model_path, task, split, predictions, submission, results,
                            overwrite: bool) -> None:
    """The files ``run_evaluate`` will write, checked before any work: distinct from the
    model file and from each other, and not replacing a file without ``overwrite``."""
    from hadref.files import check_distinct, claim_outputs
    from hadref.train import predictions as pred_files
    from hadref.train.results import beside

    outputs = {}
    files = task.dev_files if split == "dev" else task.test_files
    names = ["dev"] if len(files) == 1 else ["matched", "mismatched"]
    if predictions:
        for path in pred_files.predictions_paths(predictions, names):
            outputs[f"--predictions {path.name}" if len(names) > 1 else "--predictions"] = path
    if split == "test" and submission:
        for name in task.submission_files:
            outputs[f"--submission {name}"] = Path(submission) / name
    first = next(iter(outputs.values()), None)
    if results or first is not None:
        outputs["--results"] = Path(results) if results else beside(first)
    check_distinct({"MODEL.h5": model_path}, outputs)
    claim_outputs(outputs, overwrite=overwrite)


def _top_n_list(top_n, model, binarize, path) -> list[int]:
    """The N values to score: the given ones (sorted, unique), else a student's own N or 30
    for --binarize; [] for a float model scored as it is."""
    if top_n is None or (not isinstance(top_n, (list, tuple)) and top_n == []):
        if model.had is not None:
            return [int(model.had["top_n"])]
        return [30] if binarize else []
    values = [top_n] if isinstance(top_n, (int, np.integer)) else list(top_n)
    if not values:
        return _top_n_list(None, model, binarize, path)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise HadrefError(f"--top-n: expected positive integers, got {values}")
    if model.had is None and not binarize:
        raise HadrefError(f"--top-n scores HAD attention: {path} is a float model (pass "
                          "--binarize to binarize it without distillation)")
    return sorted({int(v) for v in values})


def _scores(model, evals, names, task, batch_size, ranks=None):
    """({metric[_mismatched]: value}, [logits per split]) of ``model`` on the dev splits."""
    from hadref.train import metrics
    from hadref.train.evaluation import predict

    out, all_logits = {}, []
    for name, e in zip(names, evals):
        logits = predict(model, e, batch_size, ranks)
        preds = metrics.predictions(logits, task.is_regression)
        values = metrics.compute(task.metrics, preds, e.labels)
        suffix = "" if name in ("dev", "matched") else f"_{name}"
        out.update({k + suffix: v for k, v in values.items()})
        all_logits.append(logits)
    return out, all_logits


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

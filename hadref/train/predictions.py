"""Per-example predictions and GLUE test submissions as TSV files.

``--predictions FILE.tsv`` (any split) writes one row per example so that errors can be
read::

    index   label   prediction   p_0      p_1          (classification: softmax per class)
    0       1       1            0.0312   0.9688
    index   label   prediction                         (STS-B: the predicted score)

``index`` is the example's index: the test file's own index column, else the 0-based data
row of the file (``line - 2`` with a header, ``line - 1`` without: CoLA). ``label`` is the
gold label name (absent on the test split). Tasks with two files (MNLI matched and
mismatched) write ``FILE-matched.tsv`` and ``FILE-mismatched.tsv``.

``--split test --submission DIR`` writes the GLUE server's files: ``DIR/SST-2.tsv``,
``DIR/MNLI-m.tsv`` and ``DIR/MNLI-mm.tsv``, ... each ``index\\tprediction`` with the label
names GLUE expects (``entailment``, ``not_entailment``, ``0`` / ``1``; STS-B a score).
Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadref.errors import HadrefError
from hadref.files import atomic_file


def softmax(logits: np.ndarray) -> np.ndarray:
    """(n, C) float logits -> (n, C) float64 class probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def example_index(split) -> list[str]:
    """The index of every example of a :class:`hadref.data.Split` (module docstring)."""
    if split.index is not None:
        return list(split.index)
    first = 2 if split.task.header else 1
    return [str(int(line) - first) for line in split.lines]


def _label_text(task, value) -> str:
    return f"{float(value):.6g}" if task.is_regression else task.labels[int(value)]


def prediction_rows(split, logits: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the predictions TSV of ``split`` given its (n, C) logits."""
    task = split.task
    labelled = split.index is None
    header = ["index"] + (["label"] if labelled else []) + ["prediction"]
    if not task.is_regression:
        header += [f"p_{name}" for name in task.labels]
        probs = softmax(logits)
        preds = np.argmax(logits, axis=1)
    else:
        preds = np.asarray(logits)[:, 0]
    rows = []
    for i, idx in enumerate(example_index(split)):
        row = [idx] + ([_label_text(task, split.labels[i])] if labelled else [])
        row.append(_label_text(task, preds[i]))
        if not task.is_regression:
            row += [f"{p:.6f}" for p in probs[i]]
        rows.append(row)
    return header, rows


def predictions_paths(path, names: list[str]) -> list[Path]:
    """``[FILE]`` for one split, ``[FILE-matched.tsv, FILE-mismatched.tsv]`` for two."""
    path = Path(path)
    if len(names) == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{name}{path.suffix or '.tsv'}") for name in names]


def write_predictions(path, split, logits) -> Path:
    """Write the predictions TSV of one split (atomically); returns the path."""
    header, rows = prediction_rows(split, logits)
    return write_tsv(path, header, rows)


def write_submission(folder, task, splits, logits_per_split) -> list[Path]:
    """Write GLUE's submission files of ``task`` into ``folder`` (one per test file, named
    as ``task.submission_files``); returns their paths."""
    if not task.submission_files or len(task.submission_files) != len(splits):
        raise HadrefError(f"task {task.name} has no GLUE submission file name for "
                          f"{len(splits)} test file(s)")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HadrefError(f"--submission {folder}: exists and is not a folder")
    paths = []
    for name, split, logits in zip(task.submission_files, splits, logits_per_split):
        if task.is_regression:
            preds = np.asarray(logits)[:, 0]
        else:
            preds = np.argmax(logits, axis=1)
        rows = [[idx, _label_text(task, p)] for idx, p in zip(example_index(split), preds)]
        paths.append(write_tsv(folder / name, ["index", "prediction"], rows))
    return paths


def write_tsv(path, header: list[str], rows: list[list[str]]) -> Path:
    """A tab-separated file with a header line, written to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(header) + "\n")
            for row in rows:
                f.write("\t".join(row) + "\n")
    return path

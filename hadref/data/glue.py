"""GLUE tasks in the standard local layout (``DIR/TASK/train.tsv``, ``dev.tsv``).

Each task is described by a :class:`Task` (folder, files, columns, labels, metric). Files
are read as GLUE's own loaders read them: tab-separated, UTF-8, ``csv.QUOTE_NONE`` (RTE
has a premise that starts with a double quote; a quoting reader would swallow lines).

Lines may end in LF or CRLF. A file without data rows is an error naming it. A malformed
row (wrong field count, unknown label, unparsable score, a NUL byte in a field) raises
:class:`~hadref.errors.HadrefError` naming the file and line, unless ``skip_bad_rows`` is
set: then it is counted and reported in :attr:`Split.skipped`, never silently dropped.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError

DATA_ENV = "HADREF_DATA"


@dataclass(frozen=True)
class Task:
    """One GLUE task: where its files are and how to read them.

    ``text_columns`` and ``label_column`` are header names when ``header`` is True, else
    0-based field indices. ``labels`` maps the label strings of the file to class ids in
    the given order; None means regression (a float score). ``fields`` is the exact field
    count a data row must have (None: the header's count).
    """

    name: str
    folder: str
    text_columns: tuple
    label_column: str | int
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    header: bool = True
    fields: int | None = None
    dev_files: tuple[str, ...] = ("dev.tsv",)
    # GLUE test files (no labels, a header with an index column; CoLA's test has a header
    # although its train and dev do not) and the names the GLUE server wants for the
    # submission file of each, in the same order
    test_files: tuple[str, ...] = ("test.tsv",)
    submission_files: tuple[str, ...] = ()
    test_text_columns: tuple | None = None    # None: the same header names as text_columns
    test_index_column: str = "index"

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Classifier outputs: the number of classes, 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


# Columns, header rules and label orders follow GLUE's files and the usual loaders
# (HF run_glue label orders, e.g. MNLI contradiction/entailment/neutral).
TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("cola", "CoLA", (3,), 1, ("0", "1"), ("matthews_correlation",),
             header=False, fields=4, submission_files=("CoLA.tsv",),
             test_text_columns=("sentence",)),
        Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",),
             submission_files=("SST-2.tsv",)),
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"),
             ("f1", "accuracy"), submission_files=("MRPC.tsv",)),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None,
             ("pearson", "spearmanr"), submission_files=("STS-B.tsv",)),
        Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
             ("f1", "accuracy"), submission_files=("QQP.tsv",), test_index_column="id"),
        Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
             ("contradiction", "entailment", "neutral"), ("accuracy",),
             dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
             test_files=("test_matched.tsv", "test_mismatched.tsv"),
             submission_files=("MNLI-m.tsv", "MNLI-mm.tsv")),
        Task("qnli", "QNLI", ("question", "sentence"), "label",
             ("entailment", "not_entailment"), ("accuracy",), submission_files=("QNLI.tsv",)),
        Task("rte", "RTE", ("sentence1", "sentence2"), "label",
             ("entailment", "not_entailment"), ("accuracy",), submission_files=("RTE.tsv",)),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",),
             submission_files=("WNLI.tsv",)),
    )
}


@dataclass
class Split:
    """One file of a task, read into memory.

    texts_a, texts_b: lists of str (texts_b None for single-sentence tasks);
    labels: (n,) int64 class ids, or float32 scores for regression;
    lines: (n,) int64 1-based line numbers in ``path`` (for messages);
    skipped: [(line, reason)] rows left out under ``skip_bad_rows``;
    index: the test file's index column as written (a test split only; its labels are -1,
    or NaN for regression), else None.
    """

    task: Task
    path: Path
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray
    lines: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    index: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts_a)

    def subset(self, indices) -> "Split":
        """The rows at ``indices`` (ints), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Split(self.task, self.path, [self.texts_a[i] for i in idx],
                     None if self.texts_b is None else [self.texts_b[i] for i in idx],
                     self.labels[idx], self.lines[idx], list(self.skipped),
                     None if self.index is None else [self.index[i] for i in idx])


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name`` (case-insensitive; 'sst-2' and 'sst2' both work)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise HadrefError(f"unknown GLUE task {name!r} (--task); expected one of "
                          f"{', '.join(TASKS)}")
    return TASKS[key]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else $HADREF_DATA; an error naming both when neither is set."""
    root = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV)
    if not root:
        raise HadrefError(f"no GLUE data folder: pass --data DIR or set {DATA_ENV} "
                          "(DIR/SST-2/train.tsv, DIR/SST-2/dev.tsv, ... as download_glue_data.py "
                          "lays it out)")
    return Path(root)


def task_files(task: Task, split: str, data_dir=None) -> list[Path]:
    """Paths of ``split`` ('train', 'dev' or 'test'; MNLI's dev and test are matched then
    mismatched)."""
    folder = data_root(data_dir) / task.folder
    if split not in ("train", "dev", "test"):
        raise HadrefError(f"unknown split {split!r}: expected 'train', 'dev' or 'test'")
    names = {"train": ("train.tsv",), "dev": task.dev_files, "test": task.test_files}[split]
    if not folder.is_dir():
        expected = ", ".join(f"{task.folder}/{n}" for n in ("train.tsv",) + task.dev_files)
        raise HadrefError(f"GLUE task folder not found: {folder} (expected {expected} under "
                          f"{folder.parent}, the layout download_glue_data.py makes; "
                          f"pass --data DIR or set {DATA_ENV})")
    paths = [folder / n for n in names]
    for p in paths:
        if not p.is_file():
            raise HadrefError(f"GLUE file not found: {p} (task {task.name} expects "
                              f"{', '.join(names)} in {folder})")
    return paths


def load_split(task: Task | str, split: str, data_dir=None, *, skip_bad_rows: bool = False,
               limit: int | None = None) -> list[Split]:
    """Read ``split`` of ``task``: one :class:`Split` per file (two for MNLI's dev and test).

    ``limit`` keeps the first ``limit`` good rows of each file (for tests and demos). The
    test split is read by :func:`read_test_tsv` (no labels).
    """
    task = get_task(task) if isinstance(task, str) else task
    read = read_test_tsv if split == "test" else read_tsv
    return [read(task, p, skip_bad_rows=skip_bad_rows, limit=limit)
            for p in task_files(task, split, data_dir)]


def read_test_tsv(task: Task, path: str | os.PathLike, *, skip_bad_rows: bool = False,
                  limit: int | None = None) -> Split:
    """Read a GLUE test file of ``task``: a header naming the index column
    (``task.test_index_column``) and the text columns, no label. Returns a :class:`Split`
    whose ``index`` holds the index column and whose labels are -1 (NaN for regression)."""
    path = Path(path)
    texts_a: list[str] = []
    texts_b: list[str] | None = [] if task.is_pair else None
    index: list[str] = []
    lines: list[int] = []
    skipped: list[tuple[int, str]] = []
    wanted = (*(task.test_text_columns or task.text_columns), task.test_index_column)
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise HadrefError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header is None:
                raise HadrefError(f"{path}: empty file, expected a header line")
            names = [h.strip() for h in header]
            missing = [w for w in wanted if w not in names]
            if missing:
                raise HadrefError(f"{path}:1: test header lacks column(s) "
                                  f"{', '.join(map(repr, missing))} for task {task.name} "
                                  f"(header: {', '.join(names)})")
            cols = [names.index(w) for w in wanted]
            for row in reader:
                if limit is not None and len(texts_a) >= limit:
                    break
                if row == [] or row == [""]:
                    continue
                if len(row) != len(names):
                    problem = f"expected {len(names)} tab-separated fields, got {len(row)}"
                    if not skip_bad_rows:
                        raise HadrefError(f"{path}:{reader.line_num}: malformed {task.name} test "
                                          f"row: {problem} (fix the file or pass --skip-bad-rows)")
                    skipped.append((reader.line_num, problem))
                    continue
                texts_a.append(row[cols[0]])
                if texts_b is not None:
                    texts_b.append(row[cols[1]])
                index.append(row[cols[-1]].strip())
                lines.append(reader.line_num)
        except csv.Error as err:
            raise HadrefError(f"{path}:{reader.line_num}: unreadable row: {err}") from None
        except UnicodeDecodeError as err:
            raise HadrefError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    labels = (np.full(len(texts_a), np.nan, np.float32) if task.is_regression
              else np.full(len(texts_a), -1, np.int64))
    return Split(task, path, texts_a, texts_b, labels, np.asarray(lines, dtype=np.int64),
                 skipped, index)


def read_tsv(task: Task, path: str | os.PathLike, *, skip_bad_rows: bool = False,
             limit: int | None = None) -> Split:
    """Read one GLUE .tsv of ``task`` (see the module docstring for the rules)."""
    path = Path(path)
    texts_a: list[str] = []
    texts_b: list[str] | None = [] if task.is_pair else None
    labels: list = []
    lines: list[int] = []
    skipped: list[tuple[int, str]] = []
    label_ids = None if task.labels is None else {s: i for i, s in enumerate(task.labels)}
    try:
        handle = open(path, encoding="utf-8-sig", newline="")  # MRPC starts with a BOM
    except OSError as err:
        raise HadrefError(f"cannot read {path}: {err.strerror}") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            if task.header:
                header = next(reader, None)
                if header is None:
                    raise HadrefError(f"{path}: empty file, expected a header line")
                cols = _resolve_columns(task, header, path)
                n_fields = len(header)
            else:
                cols = (*task.text_columns, task.label_column)
                n_fields = task.fields
            for row in reader:
                line = reader.line_num
                if limit is not None and len(texts_a) >= limit:
                    break
                if row == [] or row == [""]:
                    continue  # blank line (e.g. a trailing empty line): not a row
                problem = None
                if any("\0" in cell for cell in row):
                    field_no = next(i for i, cell in enumerate(row) if "\0" in cell) + 1
                    problem = f"NUL byte in field {field_no}"
                elif len(row) != n_fields:
                    problem = f"expected {n_fields} tab-separated fields, got {len(row)}"
                else:
                    raw = row[cols[-1]].strip()
                    if label_ids is None:
                        try:
                            value = float(raw)
                            if not np.isfinite(value):
                                raise ValueError
                        except ValueError:
                            problem = f"expected a finite number in the label field, got {raw!r}"
                    else:
                        value = label_ids.get(raw)
                        if value is None:
                            problem = (f"unknown label {raw!r}, expected one of "
                                       f"{', '.join(task.labels)}")
                if problem is not None:
                    if not skip_bad_rows:
                        raise HadrefError(f"{path}:{line}: malformed {task.name} row: {problem} "
                                          "(fix the file or pass --skip-bad-rows)")
                    skipped.append((line, problem))
                    continue
                texts_a.append(row[cols[0]])
                if texts_b is not None:
                    texts_b.append(row[cols[1]])
                labels.append(value)
                lines.append(line)
        except csv.Error as err:
            raise HadrefError(f"{path}:{reader.line_num}: unreadable row: {err}") from None
        except UnicodeDecodeError as err:
            raise HadrefError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not texts_a:
        what = (f"all {len(skipped)} rows malformed (skipped)" if skipped
                else "a header and no data rows" if task.header else "no data rows")
        raise HadrefError(f"{path}: {what}: a GLUE file needs at least one row")
    dtype = np.float32 if task.is_regression else np.int64
    return Split(task, path, texts_a, texts_b, np.asarray(labels, dtype=dtype),
                 np.asarray(lines, dtype=np.int64), skipped)


def _resolve_columns(task: Task, header: list[str], path: Path) -> tuple[int, ...]:
    names = [h.strip() for h in header]
    wanted = (*task.text_columns, task.label_column)
    missing = [w for w in wanted if w not in names]
    if missing:
        raise HadrefError(f"{path}:1: header lacks column(s) {', '.join(map(repr, missing))} "
                          f"for task {task.name} (header: {', '.join(names)})")
    # MNLI dev has label1..label5 then gold_label: the last match is the one we want
    return tuple(len(names) - 1 - names[::-1].index(w) for w in wanted)


def report_skipped(splits, stream=None) -> int:
    """Print one line per file with skipped rows (first few line numbers); return the total."""
    stream = stream or sys.stderr
    total = 0
    for s in splits:
        if s.skipped:
            total += len(s.skipped)
            first = ", ".join(str(line) for line, _ in s.skipped[:5])
            more = " ..." if len(s.skipped) > 5 else ""
            print(f"hadref: skipped {len(s.skipped)} malformed row(s) in {s.path} "
                  f"(lines {first}{more}; first: {s.skipped[0][1]})", file=stream)
    return total

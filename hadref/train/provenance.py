"""Provenance of a model file: which task, data, code, command and seeds made it.

A job that writes a model file (``finetune``, ``distill``) stores one JSON object in the
file's root attribute ``provenance`` (weights/README.md)::

    {"job": "finetune" | "distill", "task": "sst2", "labels": ["0", "1"] (null: regression),
     "data": [{"split": "train", "file": ".../SST-2/train.tsv", "sha256": "...",
               "rows": 67349, "limit": null, "skipped": 0}, {"split": "dev", ...}],
     "code": {"hadref": "0.1.0", "git_commit": "40 hex" | null, "git_dirty": bool | null,
              "git": "why there is no commit" (only when git_commit is null)},
     "command": "hadref finetune ...", "seeds": {"seed": 0}, "created": "2026-12-01T21:30:00Z",
     "settings": {...}, "teacher": {"file", "sha256", "metrics", "provenance"} (students)}

``rows`` is what the job actually used (after ``--train-limit`` / ``--dev-limit`` and
skipped rows). Files written before provenance existed load with ``model.provenance`` None;
:func:`describe_lines` prints them as "unknown". Nothing here ever fails a job: a missing
git, a detached install or an unreadable ``.git`` is recorded as such.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import subprocess
import sys
from pathlib import Path

from hadref.errors import HadrefError
from hadref.train.jobs import file_sha256


def code_version() -> dict:
    """{"hadref": version, "git_commit", "git_dirty"} of the running code; ``git_commit``
    None with a "git" reason when the package is not in a git checkout or git is absent."""
    import hadref

    out = {"hadref": hadref.__version__, "git_commit": None, "git_dirty": None}
    root = Path(hadref.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            out["git"] = f"not a git checkout ({root}): commit unknown"
            return out
        out["git_commit"] = commit.stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"],
                                capture_output=True, text=True, timeout=30)
        if status.returncode == 0:
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError) as err:
        out["git"] = f"git not available ({type(err).__name__}): commit unknown"
    return out


def command_line() -> str:
    """The command that runs now, as a shell line: ``hadref ...`` as typed under the CLI
    (recorded by hadref.cli), else the Python process's own ``sys.argv``."""
    try:
        import click

        ctx = click.get_current_context(silent=True)
    except ImportError:  # pragma: no cover - click is a dependency
        ctx = None
    if ctx is not None and ctx.meta.get("hadref.command"):
        return shlex.join(ctx.meta["hadref.command"])
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def data_record(split_name: str, split, limit) -> dict:
    """The provenance entry of one data file as a job used it (a hadref.data.Split)."""
    return {"split": split_name, "file": str(split.path), "sha256": file_sha256(split.path),
            "rows": len(split), "limit": limit, "skipped": len(split.skipped)}


def build(job: str, task, data: list, seeds: dict, settings: dict | None = None,
          teacher: dict | None = None) -> dict:
    """The provenance object of a model file a ``job`` writes (see the module docstring).

    task: hadref.data.Task; data: :func:`data_record` entries; seeds: {name: int};
    teacher: for a student, {"file", "sha256", "metrics", "provenance"}.
    """
    out = {"job": job, "task": task.name,
           "labels": None if task.labels is None else list(task.labels),
           "data": list(data), "code": code_version(), "command": command_line(),
           "seeds": dict(seeds),
           "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if settings is not None:
        out["settings"] = settings
    if teacher is not None:
        out["teacher"] = teacher
    return out


def head_task(model) -> str | None:
    """The task the model's head was trained on, from its provenance (None: unknown)."""
    prov = getattr(model, "provenance", None) or {}
    return prov.get("task")


def check_task(model, task, path, any_task: bool = False) -> None:
    """Refuse to score a head on a task other than its own (``any_task``: the user knows);
    a head of the wrong size is always an error."""
    if model.num_labels is None:
        raise HadrefError(f"{path} has no classifier head: fine-tune it first (hadref finetune)")
    if model.num_labels != task.num_labels:
        raise HadrefError(f"{path} has a {model.num_labels}-output head, task {task.name} "
                          f"needs {task.num_labels}")
    own = head_task(model)
    if own is not None and own != task.name and not any_task:
        raise HadrefError(f"{path}: its head was trained on {own}, not {task.name} "
                          f"(pass --any-task to score it on {task.name} anyway)")


def describe_lines(prov: dict | None) -> list[str]:
    """``hadref info``'s lines for a provenance object (None: a file from before it)."""
    if not prov:
        return ["provenance  unknown (written before hadref recorded provenance)"]
    code = prov.get("code", {})
    commit = code.get("git_commit")
    if commit:
        commit_text = commit[:12] + (" (uncommitted changes)" if code.get("git_dirty") else "")
    else:
        commit_text = code.get("git", "unknown")
    labels = prov.get("labels")
    lines = [f"task        {prov.get('task', 'unknown')} (head labels: "
             f"{', '.join(labels) if labels else 'a regression score'})",
             f"job         {prov.get('job', 'unknown')}, {prov.get('created', 'unknown')}",
             f"code        hadref {code.get('hadref', 'unknown')}, commit {commit_text}",
             f"command     {prov.get('command', 'unknown')}",
             f"seeds       {', '.join(f'{k} {v}' for k, v in prov.get('seeds', {}).items()) or 'unknown'}"]
    for d in prov.get("data", []):
        limit = f", limit {d['limit']}" if d.get("limit") else ""
        skipped = f", {d['skipped']} skipped" if d.get("skipped") else ""
        lines.append(f"data        {d['split']}: {d['file']} ({d['rows']:,} rows{limit}{skipped}; "
                     f"sha256 {d['sha256'][:16]}...)")
    teacher = prov.get("teacher")
    if teacher:
        lines.append(f"teacher     {teacher.get('file')} (sha256 {str(teacher.get('sha256'))[:16]}...)")
    return lines

"""Several seeds of one job (``--seed 0,1,2`` on ``finetune`` and ``distill``) and their
summary: mean and spread of every metric.

Seed S writes ``OUT-seedS.h5`` (with its own log, checkpoint and ``.metrics.json``); the
summary goes to ``OUT-seeds.json``: ``{"seeds", "runs": [{"seed", "out", "metrics"}],
"mean": {metric: value}, "std": {metric: value}, "min", "max", "n"}``. ``std`` is the sample
standard deviation (ddof = 1; 0.0 for one seed). Under ``--resume`` a seed whose file and
metrics are already written is reused, a seed with a checkpoint resumes, and the others
run from the start, so an interrupted multi-seed run continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError


def parse_seeds(text) -> list[int]:
    """'0' -> [0]; '0,1,2' -> [0, 1, 2] (order kept, duplicates refused)."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        return list(text)
    try:
        seeds = [int(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        raise HadrefError(f"--seed: expected an integer or comma-separated integers such as "
                          f"0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise HadrefError(f"--seed: expected distinct integers, got {text!r}")
    return seeds


def seed_out(out, seed: int) -> Path:
    """``DIR/NAME-seedS.h5`` for the output ``DIR/NAME.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-seed{seed}{out.suffix or '.h5'}")


def summary_path(out) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}-seeds.json")


def summarize(runs: list[dict]) -> dict:
    """Mean, sample std, min and max over runs ``[{"seed", "out", "metrics"}]``."""
    names = list(runs[0]["metrics"])
    values = {k: np.array([r["metrics"][k] for r in runs], dtype=np.float64) for k in names}
    ddof = 1 if len(runs) > 1 else 0
    return {"seeds": [r["seed"] for r in runs], "n": len(runs), "runs": runs,
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=ddof)) for k, v in values.items()},
            "min": {k: float(v.min()) for k, v in values.items()},
            "max": {k: float(v.max()) for k, v in values.items()}}


def run_seeds(run_one, seeds: list[int], out, *, resume: bool = False, checkpoint_of=None,
              notify=None) -> dict:
    """Run ``run_one(seed, out_path, resume) -> result`` (a job's dict with "metrics") for
    every seed, write and return the summary (see the module docstring).

    checkpoint_of: out_path -> the checkpoint path a run would resume from.
    """
    from hadref.train.results import beside, write_json

    say = notify or (lambda message: None)
    runs = []
    for seed in seeds:
        path = seed_out(out, seed)
        done = beside(path)
        ckpt = checkpoint_of(path) if checkpoint_of else None
        if resume and path.is_file() and done.is_file() and not (ckpt and Path(ckpt).is_file()):
            result = json.loads(done.read_text(encoding="utf-8"))
            say(f"seed {seed}: reusing {path} (already finished)")
        else:
            again = resume and ckpt is not None and Path(ckpt).is_file()
            say(f"seed {seed}: {'resuming' if again else 'running'} -> {path}")
            result = run_one(seed, path, again)
        runs.append({"seed": seed, "out": str(path), "metrics": result["metrics"]})
    summary = summarize(runs)
    summary["summary_file"] = str(write_json(summary_path(out), summary))
    return summary


def format_summary(summary: dict) -> str:
    """'accuracy 88.30 +- 0.41 (n = 3; seeds 0, 1, 2)' (percent)."""
    parts = [f"{k} {100 * m:.2f} +- {100 * summary['std'][k]:.2f}"
             for k, m in summary["mean"].items()]
    return (", ".join(parts) + f" (mean +- sample std, n = {summary['n']}; seeds "
            + ", ".join(map(str, summary["seeds"])) + ")")

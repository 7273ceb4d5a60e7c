"""A run's results on disk: one JSON file beside the file the run wrote.

``finetune`` and ``distill`` write ``OUT.metrics.json`` beside ``OUT.h5`` (``NAME.h5`` ->
``NAME.metrics.json``); ``evaluate`` writes its results where ``--results`` says, or beside
its ``--predictions`` / submission file. Each holds the metrics, the settings that produced
them and the model's provenance, so that a number can always be traced to its run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hadref.files import atomic_file


def beside(path, suffix: str = ".metrics.json") -> Path:
    """``DIR/NAME.metrics.json`` for ``DIR/NAME.h5`` (or any ``DIR/NAME.ext``)."""
    path = Path(path)
    return path.with_name(path.stem + suffix)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path, obj: dict) -> Path:
    """Write ``obj`` (NumPy values made plain) as indented JSON to ``path``, atomically
    (temporary file in the same folder, then a rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_plain(obj), f, indent=2, sort_keys=True)
            f.write("\n")
    return path

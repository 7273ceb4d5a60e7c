"""Training checkpoints: one HDF5 file written atomically (temporary file + os.replace).

Layout: groups ``params`` and ``optim`` (one dataset per array, names as given) and a
``meta`` attribute holding JSON (stage, step, c, RNG state, data position, settings, ...).
A crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from hadref.errors import HadrefError

FORMAT = "hadref-checkpoint-1"


def save_checkpoint(path, arrays: dict[str, dict[str, np.ndarray]], meta: dict) -> None:
    """Write ``arrays`` ({group: {name: array}}) and ``meta`` (JSON-able) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = json.dumps(meta)
            for group, items in arrays.items():
                g = f.create_group(group)
                for name, value in items.items():
                    g.create_dataset(name, data=np.asarray(value))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path):
    """(arrays, meta) as written by :func:`save_checkpoint`; HadrefError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise HadrefError(f"no checkpoint to resume from at {path} (--resume)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise HadrefError(f"{path}: not a hadref checkpoint (format "
                                  f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
            meta = json.loads(f.attrs["meta"])
            arrays = {g: {n: d[()] for n, d in f[g].items()} for g in f.keys()}
    except OSError as err:
        raise HadrefError(f"{path}: unreadable checkpoint ({err})") from None
    return arrays, meta

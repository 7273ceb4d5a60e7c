"""Training checkpoints: one HDF5 file written atomically (:func:`hadref.files.atomic_file`).

Layout: groups ``params`` and ``optim`` (one dataset per array, names as given) and a
``meta`` attribute holding JSON (stage, step, c, RNG state, data position, settings, ...).
A crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from hadref.errors import HadrefError
from hadref.files import atomic_file

FORMAT = "hadref-checkpoint-1"


def save_checkpoint(path, arrays: dict[str, dict[str, np.ndarray]], meta: dict) -> None:
    """Write ``arrays`` ({group: {name: array}}) and ``meta`` (JSON-able) to ``path``."""
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["meta"] = json.dumps(meta)
            for group, items in arrays.items():
                g = f.create_group(group)
                for name, value in items.items():
                    g.create_dataset(name, data=np.asarray(value))


# meta field -> the JSON type it must have (bool is not an int here)
_META_TYPES = {"kind": str, "step": int, "total_steps": int, "settings": dict, "rng": dict,
               "data": dict, "optim_t": int}
_TYPE_WORDS = {str: "a string", int: "an integer", dict: "a JSON object"}


def load_checkpoint(path):
    """(arrays, meta) as written by :func:`save_checkpoint`; HadrefError naming the file
    when it is unreadable or its metadata is malformed."""
    path = Path(path)
    if not path.is_file():
        raise HadrefError(f"no checkpoint to resume from at {path} (--resume)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise HadrefError(f"{path}: not a hadref checkpoint (format "
                                  f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
            try:
                meta = json.loads(f.attrs["meta"])
            except (KeyError, TypeError, ValueError):
                raise HadrefError(f"{path}: checkpoint attribute meta is missing or not JSON") from None
            arrays = {}
            for g in f.keys():
                if not isinstance(f[g], h5py.Group):
                    raise HadrefError(f"{path}: checkpoint entry {g!r} is not a group")
                arrays[g] = {n: d[()] for n, d in f[g].items()}
    except OSError as err:
        raise HadrefError(f"{path}: unreadable checkpoint ({err})") from None
    if not isinstance(meta, dict):
        raise HadrefError(f"{path}: checkpoint meta is not a JSON object")
    return arrays, meta


def check_meta(meta, path) -> None:
    """HadrefError naming ``path`` and the field when ``meta`` lacks what a training
    loop's checkpoint holds (:class:`hadref.train.loop.TrainLoop`)."""
    if not isinstance(meta, dict):
        raise HadrefError(f"{path}: checkpoint meta is not a JSON object")
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise HadrefError(f"{path}: checkpoint meta field {key!r} should be "
                              f"{_TYPE_WORDS[kind]}, got {shown}")
    if not 0 <= meta["step"] <= meta["total_steps"]:
        raise HadrefError(f"{path}: checkpoint meta step {meta['step']} lies outside "
                          f"[0, {meta['total_steps']}]")
    if not isinstance(meta.get("notes", {}), dict):
        raise HadrefError(f"{path}: checkpoint meta field 'notes' should be an object")

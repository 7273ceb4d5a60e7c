"""Validation rules and the worker-chunk rule shared across hadref: one definition each.

Every check returns the value in the type the caller uses and raises :class:`HadrefError`
with a one-line message naming the setting or argument and what was expected.
"""

from __future__ import annotations

import math

import numpy as np

from hadref.errors import HadrefError


def is_int(value) -> bool:
    """True for Python and NumPy integers (bools are not integers here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive(value, name: str) -> float:
    """A positive finite float (a sigma, c, a clip threshold), or HadrefError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise HadrefError(f"{name}: expected a positive finite number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise HadrefError(f"{name}: expected a positive finite number, got {value!r}")
    return out


def check_top_n(top_n, name: str = "top_n") -> int:
    """N of the top-N attention: an integer >= 1."""
    if not is_int(top_n) or top_n < 1:
        raise HadrefError(f"{name}: expected an integer >= 1, got {top_n!r}")
    return int(top_n)


def check_top_n_ratio(value, name: str = "top_n_ratio") -> float:
    """A ratio N / keys in (0, 1] (N per row of a decoder: ``hadref.had.kernels.causal``)."""
    if isinstance(value, (bool, np.bool_)):
        raise HadrefError(f"{name}: expected a number in (0, 1], got {value!r}")
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise HadrefError(f"{name}: expected a number in (0, 1], got {value!r}") from None
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise HadrefError(f"{name}: expected a number in (0, 1], got {value!r}")
    return ratio


def worker_chunks(units: int, threads: int | None = None) -> int:
    """How many chunks a parallel kernel splits ``units`` independent work items into: a
    few per thread, so that uneven items (causal rows, ragged tiles) balance out."""
    if threads is None:
        import numba

        threads = numba.get_num_threads()
    return max(1, min(int(units), 4 * threads))


def check_seed(seed, name: str = "--seed") -> int:
    """A random seed: an integer >= 0 (NumPy's generators take no negative seed)."""
    if not is_int(seed) or seed < 0:
        raise HadrefError(f"{name}: expected an integer >= 0, got {seed!r}")
    return int(seed)


def check_finite_fields(settings) -> None:
    """Every float field of a settings dataclass is finite (NaN or inf in a learning rate
    or a temperature would surface only as a diverged loss, minutes later); the message
    names the option (``lr_stage3`` -> ``--lr-stage3``)."""
    import dataclasses

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise HadrefError(f"--{f.name.replace('_', '-')}: expected a finite number, got {value}")


def check_param_shapes(params: dict, expected: dict, where: str = "parameters",
                       kind: str = "parameter", prefix: str = "") -> None:
    """Raise HadrefError naming the first missing, extra, mis-shaped, non-float or
    non-finite entry of ``params`` ({name: array}) against ``expected`` ({name: shape}).

    where: the file (or "parameters"); kind/prefix: how the message names one entry
    (e.g. kind="dataset", prefix="params/" for our HDF5 files).
    """
    missing = [n for n in expected if n not in params]
    if missing:
        raise HadrefError(f"{where}: missing {kind} {prefix}{missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [n for n in params if n not in expected]
    if extra:
        raise HadrefError(f"{where}: unexpected {kind} {prefix}{extra[0]}"
                          + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                          + " for this config")
    for name, shape in expected.items():
        value = params[name]
        if tuple(value.shape) != shape:
            raise HadrefError(f"{where}: {kind} {prefix}{name} has shape {tuple(value.shape)}, "
                              f"the config expects {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise HadrefError(f"{where}: {kind} {prefix}{name} has dtype {value.dtype}, "
                              "expected float")
        if not np.isfinite(value).all():
            raise HadrefError(f"{where}: {kind} {prefix}{name} holds non-finite values")


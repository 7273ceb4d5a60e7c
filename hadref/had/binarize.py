"""The Q/K transforms of HAD training (distillation stages 1-3) with hand-written backwards.

Per layer, with that layer's standardization coefficient ``sigma`` (a positive scalar) and
``u = x / sigma`` (``../shared/HAD.md``, "Training"):

=========  ==================================  ========================================
transform  forward ``y(x)``                    backward ``dx = dy * dy/dx``
=========  ==================================  ========================================
``tanh1``  ``c * sigma * tanh(u / c)``         ``dy * (1 - tanh(u / c)**2)``
``tanh2``  ``sigma * tanh(u / c)``             ``dy * (1 - tanh(u / c)**2) / c``
``ste``    ``sigma * sign(u)``                 ``dy * 1[|u| <= ste_t]`` (straight-through)
``hard``   ``sigma * sign(u)``                 none: inference only
=========  ==================================  ========================================

``sign(0) = +1`` everywhere (the bit of the packed path is set iff x >= 0). ``tanh1`` is
about linear at large ``c`` and ``sigma * tanh(u)`` at ``c = 1``; ``tanh2`` tends to
``sigma * sign(u)`` as ``c -> 0``. Arrays keep their dtype (float32 in training, float64
in the gradient tests).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hadref.checks import check_positive
from hadref.errors import HadrefError

# the transforms, by the distillation stage that uses them: tanh1 (stage 1), tanh2 (stage
# 2), ste (stages 3 and 4), hard (inference)
TRANSFORMS = ("tanh1", "tanh2", "ste", "hard")


class BinarizeCache(NamedTuple):
    """What ``binarize_forward`` saves for ``binarize_backward``."""

    transform: str
    saved: np.ndarray   # tanh1/tanh2: tanh(u / c); ste/hard: u = x / sigma (x's shape)
    param: float        # tanh1/tanh2: c; ste/hard: ste_t


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """+1 where ``x >= 0`` (including -0.0), -1 elsewhere, in x's dtype."""
    x = np.asarray(x)
    one = x.dtype.type(1)
    return np.where(x >= 0, one, -one)


def check_transform(transform: str) -> str:
    if transform not in TRANSFORMS:
        raise HadrefError(f"transform: expected one of {', '.join(TRANSFORMS)}, got {transform!r}")
    return transform


def binarize_forward(x, sigma, transform, c=1.0, ste_t=1.0):
    """Transform queries or keys (one of ``TRANSFORMS``).

    x: (...) float array (the continuous Q_c or K_c of one layer); sigma > 0: the layer's
    coefficient; transform: one of ``TRANSFORMS``; c > 0: the tanh temperature (tanh1, tanh2);
    ste_t > 0: the STE's pass-through window (ste).
    Returns ``(y, cache)``: y has x's shape and dtype; cache is what ``binarize_backward``
    needs.
    """
    check_transform(transform)
    x = np.asarray(x)
    sigma = check_positive(sigma, "sigma")
    dtype = x.dtype.type
    if transform in ("tanh1", "tanh2"):
        c = check_positive(c, "c")
        t = np.tanh(x * dtype(1.0 / (c * sigma)))
        scale = c * sigma if transform == "tanh1" else sigma
        return t * dtype(scale), BinarizeCache(transform, t, c)
    ste_t = check_positive(ste_t, "ste_t")
    u = x * dtype(1.0 / sigma)
    return sign_pm1(x) * dtype(sigma), BinarizeCache(transform, u, ste_t)


def binarize_backward(dy, cache):
    """Gradient with respect to x of ``binarize_forward``'s output: dy (x's shape) -> dx."""
    saved = cache.saved
    dtype = saved.dtype.type
    if cache.transform == "tanh1":
        return dy * (dtype(1) - saved * saved)
    if cache.transform == "tanh2":
        return dy * ((dtype(1) - saved * saved) * dtype(1.0 / cache.param))
    if cache.transform == "ste":
        return dy * (np.abs(saved) <= cache.param).astype(saved.dtype)
    raise HadrefError("transform 'hard' is inference only: it has no gradient (train with 'ste')")

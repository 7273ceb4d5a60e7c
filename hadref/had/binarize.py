"""The Q/K transforms of HAD training (stages 1-3) with hand-written backwards.

Per layer, with that layer's standardization coefficient ``sigma`` (a positive scalar) and
``u = x / sigma`` (``../shared/HAD.md``, "Training"):

=========  ==================================  ========================================
stage      forward ``y(x)``                    backward ``dx = dy * dy/dx``
=========  ==================================  ========================================
``tanh1``  ``c * sigma * tanh(u / c)``         ``dy * (1 - tanh(u / c)**2)``
``tanh2``  ``sigma * tanh(u / c)``             ``dy * (1 - tanh(u / c)**2) / c``
``ste``    ``sigma * sign(u)``                 ``dy * 1[|u| <= ste_t]`` (straight-through)
``hard``   ``sigma * sign(u)``                 none: inference only
=========  ==================================  ========================================

``sign(0) = +1`` everywhere (the bit of the packed path is set iff x >= 0). Stage 1 is
about linear at large ``c`` and ``sigma * tanh(u)`` at ``c = 1``; stage 2 tends to
``sigma * sign(u)`` as ``c -> 0``. Arrays keep their dtype (float32 in training, float64
in the gradient tests).
"""

from __future__ import annotations

import numpy as np

from hadref.checks import check_positive
from hadref.errors import HadrefError

STAGES = ("tanh1", "tanh2", "ste", "hard")


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """+1 where ``x >= 0`` (including -0.0), -1 elsewhere, in x's dtype."""
    x = np.asarray(x)
    one = x.dtype.type(1)
    return np.where(x >= 0, one, -one)


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise HadrefError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    return stage


def binarize_forward(x, sigma, stage, c=1.0, ste_t=1.0):
    """Transform queries or keys for one stage.

    x: (...) float array (the continuous Q_c or K_c of one layer); sigma > 0: the layer's
    coefficient; stage: one of ``STAGES``; c > 0: the tanh temperature (stages 1-2);
    ste_t > 0: the STE's pass-through window (stage 3).
    Returns ``(y, cache)``: y has x's shape and dtype; cache is what ``binarize_backward``
    needs.
    """
    check_stage(stage)
    x = np.asarray(x)
    sigma = check_positive(sigma, "sigma")
    dtype = x.dtype.type
    if stage in ("tanh1", "tanh2"):
        c = check_positive(c, "c")
        t = np.tanh(x * dtype(1.0 / (c * sigma)))
        scale = c * sigma if stage == "tanh1" else sigma
        return t * dtype(scale), (stage, t, c)
    ste_t = check_positive(ste_t, "ste_t")
    u = x * dtype(1.0 / sigma)
    return sign_pm1(x) * dtype(sigma), (stage, u, ste_t)


def binarize_backward(dy, cache):
    """Gradient with respect to x of ``binarize_forward``'s output: dy (x's shape) -> dx."""
    stage, saved, param = cache
    dtype = saved.dtype.type
    if stage == "tanh1":
        return dy * (dtype(1) - saved * saved)
    if stage == "tanh2":
        return dy * ((dtype(1) - saved * saved) * dtype(1.0 / param))
    if stage == "ste":
        return dy * (np.abs(saved) <= param).astype(saved.dtype)
    raise HadrefError("stage 'hard' is inference only: it has no gradient (train with 'ste')")

"""RMSNorm over the last axis: y = x / sqrt(mean(x^2) + eps) * weight (no mean, no bias).

The forward keeps x and the reciprocal root mean squares (rstd) for the backward.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RMSNormCache(NamedTuple):
    """What :func:`rmsnorm_forward` saves: x (..., H), rstd (..., 1), weight (H,)."""

    x: np.ndarray
    rstd: np.ndarray
    weight: np.ndarray


def rmsnorm_forward(x, weight, eps):
    """x (..., H) float, weight (H,) -> (y (..., H), RMSNormCache). Statistics in x's dtype."""
    rstd = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + x.dtype.type(eps))
    y = x * rstd
    y *= weight
    return y, RMSNormCache(x, rstd, weight)


def rmsnorm_backward(dy, cache: RMSNormCache):
    """dy (..., H) -> (dx (..., H), dweight (H,)).

    With xhat = x * rstd and g = dy * weight: dx = rstd * (g - xhat * mean(g * xhat)),
    dweight = sum over rows of dy * xhat.
    """
    x, rstd, weight = cache
    xhat = x * rstd
    h = x.shape[-1]
    dweight = (dy * xhat).reshape(-1, h).sum(axis=0)
    g = dy * weight
    dot = np.einsum("...h,...h->...", g, xhat)[..., None] / x.dtype.type(h)
    dx = (g - xhat * dot) * rstd
    return dx, dweight.astype(x.dtype, copy=False)

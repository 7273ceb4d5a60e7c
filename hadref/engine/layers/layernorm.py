"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * gamma + beta.

Forward keeps x, the row means and the reciprocal standard deviations (rstd) for the
backward; both passes are single fused Numba kernels (hadref.engine.elementwise).
"""

from typing import NamedTuple

import numpy as np

from hadref.engine import elementwise


class LayerNormCache(NamedTuple):
    """What ``layernorm_forward`` saves for the backward."""

    x2: np.ndarray      # (N, H) the input rows
    mean: np.ndarray    # (N,)
    rstd: np.ndarray    # (N,) 1 / sqrt(var + eps)
    gamma: np.ndarray   # (H,)


def layernorm_forward(x, gamma, beta, eps):
    """x (..., H), gamma, beta (H,) -> (y (..., H), LayerNormCache)."""
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    n = x2.shape[0]
    out = np.empty_like(x2)
    mean = np.empty(n, dtype=x2.dtype)
    rstd = np.empty(n, dtype=x2.dtype)
    elementwise.layernorm_forward(x2, gamma, beta, float(eps), out, mean, rstd)
    return out.reshape(x.shape), LayerNormCache(x2, mean, rstd, gamma)


def layernorm_backward(dy, cache):
    """dy (..., H) -> (dx (..., H), dgamma (H,), dbeta (H,))."""
    x2, mean, rstd, gamma = cache
    dy2 = np.ascontiguousarray(dy.reshape(x2.shape))
    dx = np.empty_like(x2)
    dgamma = np.zeros(x2.shape[1], dtype=np.float64)
    dbeta = np.zeros(x2.shape[1], dtype=np.float64)
    elementwise.layernorm_backward(dy2, x2, mean, rstd, gamma, dx, dgamma, dbeta)
    return dx.reshape(dy.shape), dgamma.astype(x2.dtype), dbeta.astype(x2.dtype)

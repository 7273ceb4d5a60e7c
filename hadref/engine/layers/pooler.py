"""BERT pooler: pooled = tanh(dense(hidden[:, 0])) (the [CLS] token).

Parameters: ``pooler.dense.weight`` (H, H), ``pooler.dense.bias`` (H,).
"""

from typing import NamedTuple

import numpy as np

from hadref.engine.layers.linear import linear_backward, linear_forward

WEIGHT = "pooler.dense.weight"
BIAS = "pooler.dense.bias"


class PoolerCache(NamedTuple):
    """What ``pooler_forward`` saves for the backward."""

    pooled: np.ndarray   # (B, H) tanh output
    dense: object        # LinearCache
    shape: tuple         # (B, T, H) of the hidden states


def pooler_forward(hidden, params):
    """hidden (B, T, H) -> (pooled (B, H), cache)."""
    pre, dense_cache = linear_forward(np.ascontiguousarray(hidden[:, 0]), params[WEIGHT],
                                      params[BIAS])
    pooled = np.tanh(pre)
    return pooled, PoolerCache(pooled, dense_cache, hidden.shape)


def pooler_backward(dpooled, cache):
    """dpooled (B, H) -> (dhidden (B, T, H), zero except token 0; {name: gradient})."""
    pooled, dense_cache, shape = cache
    dpre = dpooled * (1.0 - pooled * pooled)
    dcls, dweight, dbias = linear_backward(dpre, dense_cache)
    dhidden = np.zeros(shape, dtype=dcls.dtype)
    dhidden[:, 0] = dcls
    return dhidden, {WEIGHT: dweight, BIAS: dbias}

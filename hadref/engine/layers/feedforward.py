"""Feed-forward block: dense (H -> I) -> exact GELU -> dense (I -> H).

Parameters under ``encoder.layer.{i}.``: ``intermediate.dense`` (weight (I, H), bias (I,))
and ``output.dense`` (weight (H, I), bias (H,)). The dropout, residual and LayerNorm that
follow belong to the encoder layer.
"""

from typing import NamedTuple

import numpy as np

from hadref.engine.layers.gelu import gelu_backward, gelu_forward
from hadref.engine.layers.linear import LinearCache, linear_backward, linear_forward


class FeedForwardCache(NamedTuple):
    """What ``feedforward_forward`` saves for the backward."""

    inner: LinearCache   # the H -> I dense
    gelu: np.ndarray     # (B, T, I) the GELU's input
    outer: LinearCache   # the I -> H dense
    layer: int


def _names(layer):
    return f"encoder.layer.{layer}.intermediate.dense", f"encoder.layer.{layer}.output.dense"


def feedforward_forward(x, params, layer):
    """x (B, T, H) -> (y (B, T, H), cache)."""
    inner, outer = _names(layer)
    pre, inner_cache = linear_forward(x, params[inner + ".weight"], params[inner + ".bias"])
    act, gelu_cache = gelu_forward(pre)
    y, outer_cache = linear_forward(act, params[outer + ".weight"], params[outer + ".bias"])
    return y, FeedForwardCache(inner_cache, gelu_cache, outer_cache, layer)


def feedforward_backward(dy, cache, tokens=None):
    """dy (B, T, H) -> (dx (B, T, H), {name: gradient}).

    ``tokens``: a slice of token positions outside which dy is zero; dy and dx then hold
    only those positions, (B, t, H), and the work is that of t tokens."""
    inner_cache, gelu_cache, outer_cache, layer = cache
    if tokens is not None:
        (x, inner_weight), (act, outer_weight) = inner_cache, outer_cache
        inner_cache = LinearCache(x[:, tokens], inner_weight)
        outer_cache = LinearCache(act[:, tokens], outer_weight)
        gelu_cache = np.ascontiguousarray(gelu_cache[:, tokens])
    inner, outer = _names(layer)
    grads = {}
    dact, grads[outer + ".weight"], grads[outer + ".bias"] = linear_backward(dy, outer_cache)
    dpre = gelu_backward(dact, gelu_cache)
    dx, grads[inner + ".weight"], grads[inner + ".bias"] = linear_backward(dpre, inner_cache)
    return dx, grads

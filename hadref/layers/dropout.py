"""Inverted dropout: y = x * keep / (1 - p), keep ~ Bernoulli(1 - p) from a numpy Generator.

The boolean keep-mask is the cache, so backward reproduces exactly the forward's choice.
With ``train=False`` or ``p == 0`` the layer is the identity and the cache is None.
"""

import numpy as np


def dropout_forward(x, p, rng, train):
    """x (...), p in [0, 1), rng np.random.Generator -> (y (...), keep mask bool (...) or None)."""
    if not train or p == 0.0:
        return x, None
    keep = rng.random(x.shape, dtype=np.float32) >= p
    y = x * keep
    y *= x.dtype.type(1.0 / (1.0 - p))
    return y, (keep, p)


def dropout_backward(dy, cache):
    """dy (...) -> dx (...); the identity when the forward was."""
    if cache is None:
        return dy
    keep, p = cache
    dx = dy * keep
    dx *= dy.dtype.type(1.0 / (1.0 - p))
    return dx

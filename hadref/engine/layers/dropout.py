"""Inverted dropout: y = x * keep / (1 - p), keep ~ Bernoulli(1 - p), seeded by a numpy
Generator.

Each call draws two 32-bit keys from the given ``numpy.random.Generator``; element i is
kept when 16 bits of a counter-based hash of (i, keys) are >= ``threshold = round(p *
65536)`` (hadref.engine.elementwise._hash16). So the drop probability is ``threshold / 65536``
(within 7.7e-6 of p) and kept values are scaled by the exact ``65536 / (65536 -
threshold)``, which keeps the layer unbiased. The mask is a pure function of the keys:
the cache holds the keys and backward recomputes exactly the forward's mask, without
storing it (at T = 256 an attention-probability mask would be 25 MB per layer) and
without a second pass over a random stream. The same generator state gives the same
mask. With ``train=False`` or ``p == 0`` the layer is the identity and the cache is None.
"""

from typing import NamedTuple

import numpy as np

from hadref.engine import elementwise

_LEVELS = 65536


class DropoutMask(NamedTuple):
    """One dropout mask: element i is kept when _hash16(i, key1, key2) >= threshold."""

    key1: int
    key2: int
    threshold: int
    scale: float   # 65536 / (65536 - threshold), applied to the kept values


class DropoutCache(NamedTuple):
    """What ``dropout_forward`` saves: the mask (as its keys) and the input's shape."""

    key1: int
    key2: int
    threshold: int
    scale: float
    shape: tuple


def draw_mask(p, rng, size):
    """The DropoutMask (key1, key2, threshold, scale) of one dropout mask over `size` elements, or None
    when p rounds to 0 (the keys come from rng; the mask is elementwise._hash16 of them)."""
    threshold = int(round(p * _LEVELS))
    if threshold == 0:
        return None
    if size >= 2**32:
        raise ValueError("dropout: arrays of 2**32 or more elements are not supported")
    key1, key2 = (int(k) for k in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    return DropoutMask(key1, key2, threshold, _LEVELS / (_LEVELS - threshold))


def dropout_forward(x, p, rng, train):
    """x (...) float, p in [0, 1), rng np.random.Generator -> (y (...), cache or None).

    cache: a DropoutCache (the mask's keys and the input's shape)."""
    mask = draw_mask(p, rng, x.size) if train else None
    if mask is None:
        return x, None
    key1, key2, threshold, scale = mask
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    elementwise.dropout_apply(x.reshape(-1), key1, key2, threshold, x.dtype.type(scale),
                         out.reshape(-1))
    return out, DropoutCache(key1, key2, threshold, scale, x.shape)


def dropout_backward(dy, cache):
    """dy (...) -> dx (...) = dy * keep * scale; the identity when the forward was."""
    if cache is None:
        return dy
    key1, key2, threshold, scale, _ = cache
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    elementwise.dropout_apply(dy.reshape(-1), key1, key2, threshold, dy.dtype.type(scale),
                         dx.reshape(-1))
    return dx

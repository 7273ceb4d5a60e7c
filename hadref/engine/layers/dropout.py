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

Data-parallel training (:mod:`hadref.train.parallel`) runs the forward of rows
``[first_row, first_row + n)`` of a batch on one process: given ``BatchRows(rng, first_row)``
instead of ``rng``, dropout draws the same keys and numbers each element by its flat index
in the whole batch, so those rows get exactly the masks a forward of the whole batch would
give them (every array dropout sees has the batch as its first axis). The offset is added
to ``key1``: the hash adds the counter and ``key1`` modulo 2**32, so that is the same as
offsetting the counter, in every kernel that applies a mask.
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


class BatchRows:
    """The dropout generator of rows ``[first_row, first_row + n)`` of a larger batch:
    draws from ``rng`` (a numpy Generator) exactly as ``rng`` itself would, and makes each
    mask the one of the whole batch at those rows."""

    def __init__(self, rng, first_row: int):
        self.rng, self.first_row = rng, int(first_row)

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)


def draw_mask(p, rng, size, rows: int = 1):
    """The DropoutMask (key1, key2, threshold, scale) of one dropout mask over `size`
    elements (`rows` rows along the batch axis), or None when p rounds to 0 (the keys come
    from rng; the mask is elementwise._hash16 of them; a :class:`BatchRows` rng offsets it
    by its first row)."""
    threshold = int(round(p * _LEVELS))
    if threshold == 0:
        return None
    offset = getattr(rng, "first_row", 0) * (size // max(1, rows))
    if size + offset >= 2**32:
        raise ValueError("dropout: arrays of 2**32 or more elements are not supported")
    key1, key2 = (int(k) for k in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    return DropoutMask((key1 + offset) % 2**32, key2, threshold, _LEVELS / (_LEVELS - threshold))


def dropout_forward(x, p, rng, train):
    """x (...) float, p in [0, 1), rng np.random.Generator -> (y (...), cache or None).

    cache: a DropoutCache (the mask's keys and the input's shape)."""
    mask = draw_mask(p, rng, x.size, x.shape[0] if x.ndim else 1) if train else None
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

"""The masks that hadref's kernels stand for, made visible for tests (not in the package:
nothing else needs them)."""

import numpy as np

from hadref.engine import elementwise
from hadref.had.kernels.select import float_topn_mask
from hadref.had.topn import rows_and_workspace


def dropout_mask(cache):
    """The boolean keep-mask (shape of the forward's input) a DropoutCache stands for."""
    bits = np.empty(int(np.prod(cache.shape)), dtype=np.uint16)
    elementwise.dropout_bits(bits.size, cache.key1, cache.key2, bits)
    return (bits >= cache.threshold).reshape(cache.shape)


def topn_mask(scores, key_valid, top_n: int) -> np.ndarray:
    """Boolean (..., m, n) mask of the top-N valid keys of each row, as the training path
    selects them (the quickselect of hadref.had.kernels.select).

    scores: (..., m, n) float32/float64, finite; key_valid: bool broadcastable to
    (..., m, n) (e.g. (B, 1, 1, n)), True = selectable; top_n >= 1.
    """
    scores, flat, valid, top_n, idx_ws = rows_and_workspace(scores, key_valid, top_n)
    keep = np.empty(flat.shape, dtype=np.bool_)
    float_topn_mask(flat, valid, top_n, keep, idx_ws)
    return keep.reshape(scores.shape)

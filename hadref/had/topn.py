"""Top-N masked attention, forward and backward (the training path).

``scores`` are the scaled logits of one layer (``S / sqrt(d)``, shape (..., m, n)); for
each query row the N largest scores among the valid keys survive (ties to the lower key
index, ``N_eff = min(N, valid keys)``), the softmax runs over the survivors only and
``ctx = P V``. The selected index set is a constant in backward: gradients reach the kept
scores only. A row without any valid key gives zero probabilities and a zero context.

The selection is a Numba partial select (``hadref.had.kernels.select.float_topn_softmax``,
quickselect under the order (score descending, index ascending)), not a full sort.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hadref.checks import check_top_n, worker_chunks
from hadref.errors import HadrefError
from hadref.had.kernels.select import float_topn_softmax


class TopNCache(NamedTuple):
    """What ``topn_attention_forward`` saves for its backward."""

    probs: np.ndarray   # (..., m, n), zero off the selected set
    v: np.ndarray       # (..., n, dv)


def rows_and_workspace(scores, key_valid, top_n):
    """Validated (R, n) views of the scores and the broadcast key mask, and a workspace."""
    scores = np.ascontiguousarray(scores)
    if not np.isfinite(scores).all():
        raise HadrefError("scores: expected finite attention logits, found NaN or inf")
    top_n = check_top_n(top_n)
    n = scores.shape[-1]
    flat = scores.reshape(-1, n)
    valid = np.ascontiguousarray(np.broadcast_to(key_valid, scores.shape)).reshape(-1, n)
    chunks = worker_chunks(flat.shape[0])
    return scores, flat, valid, top_n, np.empty((chunks, n), np.int64)


def topn_attention_forward(scores, v, key_valid, top_n: int):
    """softmax over the top-N of each row, then the value sum.

    scores: (..., m, n) scaled logits; v: (..., n, dv); key_valid: bool broadcastable to
    (..., m, n); top_n >= 1.
    Returns ``(ctx (..., m, dv), probs (..., m, n), cache)``; probs are exactly zero off
    the selected set. Selection and softmax are one Numba pass per row.
    """
    scores, flat, valid, top_n, idx_ws = rows_and_workspace(scores, key_valid, top_n)
    probs = np.empty(flat.shape, dtype=scores.dtype)
    float_topn_softmax(flat, valid, top_n, 0.0, probs, idx_ws)  # a fixed N (encoders)
    probs = probs.reshape(scores.shape)
    ctx = probs @ v
    return ctx, probs, TopNCache(probs, v)


def topn_attention_backward(dctx, cache):
    """dctx (..., m, dv) -> (dscores (..., m, n), dv (..., n, dv)); the index set is fixed."""
    probs, v = cache.probs, cache.v
    dv = np.swapaxes(probs, -1, -2) @ dctx
    dp = dctx @ np.swapaxes(v, -1, -2)
    dscores = probs * (dp - (dp * probs).sum(axis=-1, keepdims=True))
    return dscores, dv

"""Multi-head self-attention and the attention hook (see docs/design.md).

The layer projects x to q, k, v (B, h, T, d) (after bias, before any scaling) and hands
them to an *attention core*; the default core, :class:`FloatAttentionCore`, computes
softmax(q k^T / sqrt(d)) v with the padding mask. ``hadref.had.core.HADAttentionCore``
plugs in the same way (``model.attention_core = core``).

Parameters (Hugging Face names) under ``encoder.layer.{i}.attention.``:
``self.query``, ``self.key``, ``self.value`` and ``output.dense`` (``.weight`` (H, H),
``.bias`` (H,)). The residual and the LayerNorm that follow (``output.LayerNorm``) belong
to the encoder layer.
"""

import math
from typing import NamedTuple

import numpy as np

from hadref.engine import elementwise
from hadref.engine.attention_core import has_capability
from hadref.engine.layers.dropout import draw_mask
from hadref.engine.layers.linear import LinearCache, linear_backward, linear_forward


class FloatAttentionCache(NamedTuple):
    """What ``FloatAttentionCore.forward`` saves for its backward."""

    q: np.ndarray        # (B, h, T, d), possibly a strided view of the projection
    k: np.ndarray        # (B, h, T, d)
    v: np.ndarray        # (B, h, T, d)
    probs: np.ndarray    # (B, h, T, T) before dropout
    mask: object         # DropoutMask or None: the dropped probabilities are recomputed
    scale: float         # 1 / sqrt(d)


class SelfAttentionCache(NamedTuple):
    """What ``self_attention_forward`` saves for the backward."""

    qkv: LinearCache     # the fused (3H, H) projection
    core: object         # the attention core that ran the forward
    core_cache: object   # what that core saved
    dense: LinearCache   # the output dense
    layer: int
    num_heads: int


class FloatAttentionCore:
    """Float attention: scores = q k^T / sqrt(d); probs = masked softmax; ctx = probs v.

    ``forward(q, k, v, key_mask, layer, need_scores, dropout=None)``: q, k, v (B, h, T, d)
    float; key_mask (B, T) bool (True = valid key). Returns ``(ctx (B, h, T, d), cache,
    aux)`` with ``aux['probs']`` (B, h, T, T) (exact zeros on padding keys, all-zero rows
    when a sequence has no valid key) and, when ``need_scores``, ``aux['scores']`` (B, h,
    T, T), the scaled logits (finite everywhere, padding keys included).

    ``dropout=(p, rng)`` drops attention probabilities in training (Hugging Face's
    attention_probs_dropout_prob); ``aux['probs']`` are the probabilities before dropout.
    Cores that support it say so with ``supports_dropout = True``; this core also takes
    strided q, k, v views and the engine-only backward arguments (``takes_strided_views``;
    a subclass that overrides forward or backward must set it False unless it keeps them).

    Memory: of the (B, h, T, T) arrays only ``probs`` is new on every forward (it is
    returned and kept for the backward). The scores (unless returned), the dropped
    probabilities and the backward's probability gradient live in one scratch buffer that
    the core keeps and reuses within each call (one core, one call at a time): at T = 256
    a fresh 50 MB array costs as much in page faults as a pass of arithmetic over it. The
    dropped probabilities are not kept: the backward recomputes them from ``probs`` and the
    dropout keys, bit for bit.
    """

    supports_dropout = True
    takes_strided_views = True

    def _scratch(self, shape, dtype):
        """A (shape, dtype) view of the core's scratch buffer (grown when too small)."""
        size = math.prod(shape)
        buf = self.__dict__.get("_scratch_buf")
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self._scratch_buf = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def __getstate__(self):  # copies and pickles leave the scratch buffer behind
        state = dict(self.__dict__)
        state.pop("_scratch_buf", None)
        return state

    def forward(self, q, k, v, key_mask, layer, need_scores, dropout=None):
        scale = 1.0 / math.sqrt(q.shape[-1])
        shape = (*q.shape[:-1], k.shape[-2])
        # returned scores are a new array; otherwise they are scratch, dead after the softmax
        scores = np.empty(shape, q.dtype) if need_scores else self._scratch(shape, q.dtype)
        # (q / sqrt(d)) k^T: the scale touches (B, h, T, d), not the (B, h, T, T) scores
        np.matmul(q * q.dtype.type(scale), k.swapaxes(-1, -2), out=scores)
        probs = np.empty_like(scores)
        mask = draw_mask(dropout[0], dropout[1], probs.size, probs.shape[0]) if dropout is not None else None
        if mask is None:
            elementwise.masked_softmax(scores, key_mask, probs)
            used = probs
        else:
            # the dropped probabilities overwrite the scores row by row (or, when the
            # scores are returned, go to the scratch buffer)
            used = self._scratch(shape, q.dtype) if need_scores else scores
            key1, key2, threshold, drop_scale = mask
            elementwise.masked_softmax_dropout(scores, key_mask, key1, key2, threshold,
                                          probs.dtype.type(drop_scale), probs, used)
        # ctx in the (B, T, h, d) layout the output dense reads: a (B, h, T, d) view
        nb, nh, nt, d = q.shape
        ctx = np.matmul(used, v, out=np.empty((nb, nt, nh, v.shape[-1]), v.dtype)
                        .transpose(0, 2, 1, 3))
        aux = {"probs": probs}
        if need_scores:
            aux["scores"] = scores
        return ctx, FloatAttentionCache(q, k, v, probs, mask, scale), aux

    def backward(self, cache, dctx, dscores=None, queries=None, out=None):
        """dctx (B, h, T, d), dscores (B, h, T, T) or None -> (dq, dk, dv) (B, h, T, d).

        Engine use: ``queries``, a slice of query positions (with dscores None): dctx
        holds only those rows, (B, h, t, d), the gradient being zero at every other query;
        the work is then that of t rows (dq is still (B, h, T, d), zero elsewhere).
        ``out``: a (B, T, 3, h, d) array the three gradients are written into (they are
        returned as its (B, h, T, d) views). Inputs may be strided views."""
        q, k, v, probs, mask, scale = cache
        if out is None:
            nb, nh, nt, d = q.shape
            out = np.empty((nb, nt, 3, nh, d), q.dtype)
        dq, dk, dv = out.transpose(2, 0, 3, 1, 4)
        if queries is not None:
            return self._backward_rows(cache, dctx, queries, dq, dk, dv)
        work = self._scratch(probs.shape, probs.dtype)
        if mask is None:
            used = probs
        else:  # the forward's dropped probabilities, recomputed (same kernel arithmetic)
            key1, key2, threshold, drop_scale = mask
            elementwise.dropout_apply(probs.reshape(-1), key1, key2, threshold,
                                 probs.dtype.type(drop_scale), work.reshape(-1))
            used = work
        np.matmul(used.swapaxes(-1, -2), dctx, out=dv)
        # gradient w.r.t. the used probs, then in place -> d(scaled scores)
        dprobs = np.matmul(dctx, v.swapaxes(-1, -2), out=work)
        if mask is None:
            elementwise.softmax_backward(probs, dprobs, dprobs)
        else:
            elementwise.dropout_softmax_backward(probs, dprobs, key1, key2, threshold,
                                            probs.dtype.type(drop_scale), dprobs)
        if dscores is not None:
            dprobs += dscores
        np.matmul(dprobs, k, out=dq)
        dq *= q.dtype.type(scale)
        np.matmul(dprobs.swapaxes(-1, -2), q, out=dk)
        dk *= q.dtype.type(scale)
        return dq, dk, dv

    def _backward_rows(self, cache, dctx, queries, dq, dk, dv):
        q, k, v, probs, mask, scale = cache
        nt = probs.shape[2]
        first = queries.indices(nt)[0]
        probs = np.ascontiguousarray(probs[:, :, queries])
        if mask is None:
            used = probs
        else:
            key1, key2, threshold, drop_scale = mask
            drop_scale = probs.dtype.type(drop_scale)
            used = np.empty_like(probs)
            elementwise.dropout_rows(probs, key1, key2, threshold, drop_scale, first, nt, used)
        np.matmul(used.swapaxes(-1, -2), dctx, out=dv)
        dprobs = np.matmul(dctx, v.swapaxes(-1, -2))
        if mask is None:
            elementwise.softmax_backward(probs, dprobs, dprobs)
        else:
            elementwise.dropout_softmax_backward(probs, dprobs, key1, key2, threshold, drop_scale,
                                            dprobs, first, nt)
        dq[...] = 0
        np.matmul(dprobs, k, out=dq[:, :, queries])
        dq *= q.dtype.type(scale)
        np.matmul(dprobs.swapaxes(-1, -2), q[:, :, queries], out=dk)
        dk *= q.dtype.type(scale)
        return dq, dk, dv


def _names(layer):
    p = f"encoder.layer.{layer}.attention."
    return (p + "self.query", p + "self.key", p + "self.value", p + "output.dense")


def self_attention_forward(x, params, layer, num_heads, key_mask, core, need_scores,
                           attn_dropout_p, rng, train):
    """x (B, T, H) -> (out (B, T, H) after the output dense, cache, aux from the core).

    q, k, v come from one fused (3H, H) projection; a core sees C-contiguous (B, h, T, d)
    arrays (FloatAttentionCore: strided views of the projection, which saves a copy).
    """
    nb, nt, h = x.shape
    d = h // num_heads
    query, key, value, dense = _names(layer)
    weight = np.concatenate([params[query + ".weight"], params[key + ".weight"],
                             params[value + ".weight"]])
    bias = np.concatenate([params[query + ".bias"], params[key + ".bias"],
                           params[value + ".bias"]])
    qkv, qkv_cache = linear_forward(x, weight, bias)
    qkv = qkv.reshape(nb, nt, 3, num_heads, d).transpose(2, 0, 3, 1, 4)
    if not has_capability(core, "takes_strided_views"):  # the contract: C-contiguous arrays
        qkv = np.ascontiguousarray(qkv)
    q, k, v = qkv[0], qkv[1], qkv[2]
    dropout = None
    if train and attn_dropout_p > 0 and has_capability(core, "supports_dropout"):
        dropout = (attn_dropout_p, rng)
    if dropout is None:
        ctx, core_cache, aux = core.forward(q, k, v, key_mask, layer, need_scores)
    else:
        ctx, core_cache, aux = core.forward(q, k, v, key_mask, layer, need_scores,
                                            dropout=dropout)
    merged = np.ascontiguousarray(ctx.transpose(0, 2, 1, 3)).reshape(nb, nt, h)
    out, dense_cache = linear_forward(merged, params[dense + ".weight"], params[dense + ".bias"])
    return out, SelfAttentionCache(qkv_cache, core, core_cache, dense_cache, layer, num_heads), aux


def self_attention_backward(dout, cache, dscores=None, tokens=None):
    """dout (B, T, H), dscores (B, h, T, T) or None -> (dx (B, T, H), {name: gradient}).

    ``tokens``: a slice of token positions outside which dout is zero (dscores must then
    be None); the output dense and, for a core that supports it, the attention core run
    on those rows only. dx is in general nonzero at every token (through keys and values).
    """
    qkv_cache, core, core_cache, dense_cache, layer, num_heads = cache
    query, key, value, dense = _names(layer)
    grads = {}
    if tokens is not None:
        merged, dense_weight = dense_cache
        dense_cache = LinearCache(merged[:, tokens], dense_weight)
        dout = dout[:, tokens]
    dmerged, grads[dense + ".weight"], grads[dense + ".bias"] = linear_backward(dout, dense_cache)
    nb, nt, h = dmerged.shape
    d = h // num_heads
    dctx = dmerged.reshape(nb, nt, num_heads, d).transpose(0, 2, 1, 3)
    nt = qkv_cache[0].shape[1]
    dqkv = np.empty((nb, nt, 3, num_heads, d), dmerged.dtype)  # the (B, T, 3H) layout
    if has_capability(core, "takes_strided_views"):  # strided dctx, gradients into dqkv
        core.backward(core_cache, dctx, dscores, queries=tokens, out=dqkv)
    else:
        if tokens is None:
            dctx = np.ascontiguousarray(dctx)
        else:  # the whole (zero-padded) dctx
            full = np.zeros((nb, num_heads, nt, d), dctx.dtype)
            full[:, :, tokens] = dctx
            dctx = full
        for i, grad in enumerate(core.backward(core_cache, dctx, dscores)):
            dqkv[:, :, i] = grad.transpose(0, 2, 1, 3)
    dx, dweight, dbias = linear_backward(dqkv.reshape(nb, nt, 3 * h), qkv_cache)
    for i, name in enumerate((query, key, value)):
        grads[name + ".weight"] = dweight[i * h:(i + 1) * h]
        grads[name + ".bias"] = dbias[i * h:(i + 1) * h]
    return dx, grads

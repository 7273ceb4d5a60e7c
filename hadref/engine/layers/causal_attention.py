"""Grouped-query causal self-attention (Llama) and its attention-core hook.

The layer projects x (B, T, H) to q (B, h_q, T, d) and k, v (B, h_kv, T, d) (no biases),
rotates q and k with RoPE, and hands them to an *attention core*: the core sees the
post-RoPE q and k (what HAD binarizes) and the h_kv key/value heads as they are, never
repeated per query head (query head j reads key/value head j // (h_q / h_kv)).

:class:`CausalFloatAttentionCore` is the float core: softmax(q k^T / sqrt(d)) v over keys
at positions <= the query's (and valid in key_mask). It owns the key/value cache of
incremental decoding (``new_kv_cache``), so that another core can keep its keys in its own
form (packed sign bits for HAD).

Memory: in inference the core walks the queries in blocks (``query_block_rows``), so one
layer holds at most about ``score_budget`` scores at a time, never (T, T) per head; keys
past the block's last position are not read. Training (``train=True``) keeps the whole
(B, h_q, T, T) probabilities for the backward: meant for short sequences.

Parameters (Hugging Face names) under ``layers.{i}.self_attn.``: ``q_proj.weight``
(h_q d, H), ``k_proj.weight``, ``v_proj.weight`` (h_kv d, H), ``o_proj.weight`` (H, h_q d).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hadref.engine import elementwise
from hadref.engine.layers.linear import linear_backward, linear_forward
from hadref.engine.layers.rope import RopeTables, rope_backward, rope_forward
from hadref.errors import HadrefError

# --- the float core and its key/value cache ---------------------------------------------------

class FloatKVCache:
    """Keys and values of the positions seen so far, per layer, in float.

    ``keys[layer]``, ``values[layer]``: (B, h_kv, capacity, d); ``lengths[layer]``: how many
    positions are filled. Made by :meth:`CausalFloatAttentionCore.new_kv_cache`.
    """

    def __init__(self, num_layers, batch, num_kv_heads, capacity, head_dim, dtype):
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.keys = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.capacity = capacity

    def append(self, layer, k, v):
        """k, v (B, h_kv, t, d) -> (all keys, all values) (B, h_kv, n + t, d) views."""
        start, t = self.lengths[layer], k.shape[2]
        if start + t > self.capacity:
            raise HadrefError(f"kv cache: {start + t} positions exceed its capacity "
                              f"{self.capacity}")
        self.keys[layer][:, :, start:start + t] = k
        self.values[layer][:, :, start:start + t] = v
        self.lengths[layer] = start + t
        return self.keys[layer][:, :, :start + t], self.values[layer][:, :, :start + t]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values))


class CoreCache(NamedTuple):
    """What the float core's training forward saves: grouped q (B, h_kv, g T, d) already
    scaled by 1/sqrt(d), k, v (B, h_kv, T, d), probs (B, h_kv, g T, T), scale."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    probs: np.ndarray
    scale: float


class CausalFloatAttentionCore:
    """Float causal attention for grouped-query heads (see the module docstring).

    ``forward(q, k, v, key_mask, layer, train=False)``: q (B, h_q, T, d), k, v (B, h_kv,
    T, d), key_mask (B, T) bool or None (all valid). Returns ``(ctx (B, h_q, T, d), cache)``;
    cache is a :class:`CoreCache` when ``train`` else None.
    ``backward(cache, dctx)``: dctx (B, h_q, T, d) -> (dq (B, h_q, T, d), dk, dv (B, h_kv,
    T, d)).
    ``new_kv_cache(num_layers, batch, num_kv_heads, capacity, head_dim, dtype)`` and
    ``forward_cached(q, k, v, kv_cache, layer)``: incremental decoding; q, k, v hold the t
    new positions, which come after the cached ones.
    """

    score_budget = 1 << 24  # scores held at once per layer in inference (64 MB in float32)
    max_block_rows = 256  # smaller blocks read fewer keys past the diagonal (causal waste)

    def query_block_rows(self, batch, num_heads, num_keys) -> int:
        """Query positions per block: at most max_block_rows, and few enough that
        batch * num_heads * rows * num_keys stays within score_budget (at least one)."""
        return max(1, min(self.max_block_rows,
                          self.score_budget // max(1, batch * num_heads * num_keys)))

    def new_kv_cache(self, num_layers, batch, num_kv_heads, capacity, head_dim, dtype):
        return FloatKVCache(num_layers, batch, num_kv_heads, capacity, head_dim, dtype)

    def forward(self, q, k, v, key_mask, layer, train=False):
        if train:
            return self._forward_train(q, k, v, key_mask)
        return _attend_blocked(q, k, v, 0, key_mask, self), None

    def forward_cached(self, q, k, v, kv_cache, layer):
        start = kv_cache.lengths[layer]
        keys, values = kv_cache.append(layer, k, v)
        return _attend_blocked(q, keys, values, start, None, self)

    def _forward_train(self, q, k, v, key_mask):
        nb, hq, nt, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        scale = 1.0 / math.sqrt(d)
        qg = np.ascontiguousarray(q).reshape(nb, hkv, g * nt, d) * q.dtype.type(scale)
        probs = np.matmul(qg, k.swapaxes(-1, -2))
        elementwise.causal_softmax(probs, _all_valid(nb, nt) if key_mask is None else key_mask,
                                   0, nt)
        ctx = np.matmul(probs, v).reshape(nb, hq, nt, d)
        return ctx, CoreCache(qg, k, v, probs, scale)

    def backward(self, cache: CoreCache, dctx):
        qg, k, v, probs, scale = cache
        nb, hkv, rows, d = qg.shape
        dctx_g = np.ascontiguousarray(dctx).reshape(nb, hkv, rows, d)
        dv = np.matmul(probs.swapaxes(-1, -2), dctx_g)
        dprobs = np.matmul(dctx_g, v.swapaxes(-1, -2))
        # softmax backward, in place: dS = P * (dP - sum_j P dP)
        dprobs -= np.einsum("bhrk,bhrk->bhr", probs, dprobs)[..., None]
        dprobs *= probs
        dq = np.matmul(dprobs, k)
        dq *= qg.dtype.type(scale)
        dk = np.matmul(dprobs.swapaxes(-1, -2), qg)  # qg carries the scale already
        return dq.reshape(dctx.shape), dk, dv


def _all_valid(nb, nkeys):
    return np.ones((nb, nkeys), dtype=bool)


def _attend_blocked(q, k, v, first_pos, key_mask, core):
    """Inference attention in query blocks. q (B, h_q, t, d) at positions first_pos + i;
    k, v (B, h_kv, n, d) at positions 0..n-1 (n >= first_pos + t) -> ctx (B, h_q, t, d)."""
    nb, hq, nt, d = q.shape
    hkv, nkeys = k.shape[1], k.shape[2]
    g = hq // hkv
    qg = q.reshape(nb, hkv, g, nt, d)
    ctx = np.empty((nb, hq, nt, d), q.dtype)
    ctx_g = ctx.reshape(nb, hkv, g, nt, d)
    scale = q.dtype.type(1.0 / math.sqrt(d))
    block = core.query_block_rows(nb, hq, nkeys)
    mask = _all_valid(nb, nkeys) if key_mask is None else key_mask
    for s in range(0, nt, block):
        e = min(nt, s + block)
        keys_used = min(nkeys, first_pos + e)  # causal: later keys are never read
        qb = (qg[:, :, :, s:e] * scale).reshape(nb, hkv, g * (e - s), d)
        scores = np.matmul(qb, k[:, :, :keys_used].swapaxes(-1, -2))
        elementwise.causal_softmax(scores, mask, first_pos + s, e - s)
        out = np.matmul(scores, v[:, :, :keys_used])
        ctx_g[:, :, :, s:e] = out.reshape(nb, hkv, g, e - s, d)
    return ctx


# --- the layer --------------------------------------------------------------------------------

class AttentionCache(NamedTuple):
    """What :func:`causal_attention_forward` saves for the backward."""

    q_proj: tuple
    k_proj: tuple
    v_proj: tuple
    tables: RopeTables
    core: object
    core_cache: object
    o_proj: tuple
    layer: int


def _names(layer):
    p = f"layers.{layer}.self_attn."
    return tuple(p + n + "_proj.weight" for n in ("q", "k", "v", "o"))


def _heads(y, num_heads):
    """(B, T, h d) -> (B, h, T, d) view."""
    nb, nt, hd = y.shape
    return y.reshape(nb, nt, num_heads, hd // num_heads).transpose(0, 2, 1, 3)


def _merge(x):
    """(B, h, T, d) -> (B, T, h d) (a copy)."""
    nb, nh, nt, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(nb, nt, nh * d)


def causal_attention_forward(x, params, layer, num_heads, num_kv_heads, tables, key_mask,
                             core, train=False, kv_cache=None):
    """x (B, T, H) -> (out (B, T, H) after o_proj, AttentionCache or None).

    tables: RoPE cos/sin for the T positions of x; key_mask (B, T) bool or None;
    kv_cache: a cache from ``core.new_kv_cache`` (inference only: x holds the positions
    after the cached ones). The cache is returned only when ``train``.
    """
    wq, wk, wv, wo = _names(layer)
    q, q_cache = linear_forward(x, params[wq], None)
    k, k_cache = linear_forward(x, params[wk], None)
    v, v_cache = linear_forward(x, params[wv], None)
    q = rope_forward(_heads(q, num_heads), tables)
    k = rope_forward(_heads(k, num_kv_heads), tables)
    v = np.ascontiguousarray(_heads(v, num_kv_heads))
    core_cache = None
    if kv_cache is not None:
        if train:
            raise HadrefError("attention: a kv cache is for inference (train=False) only")
        ctx = core.forward_cached(q, k, v, kv_cache, layer)
    else:
        ctx, core_cache = core.forward(q, k, v, key_mask, layer, train)
    out, o_cache = linear_forward(_merge(ctx), params[wo], None)
    if not train:
        return out, None
    return out, AttentionCache(q_cache, k_cache, v_cache, tables, core, core_cache, o_cache, layer)


def causal_attention_backward(dout, cache: AttentionCache):
    """dout (B, T, H) -> (dx (B, T, H), {name: gradient} for the four projections)."""
    wq, wk, wv, wo = _names(cache.layer)
    grads = {}
    dmerged, grads[wo], _ = linear_backward(dout, cache.o_proj)
    nq_out = cache.q_proj[1].shape[0]
    d = cache.tables.cos.shape[-1]
    dctx = np.ascontiguousarray(_heads(dmerged, nq_out // d))
    dq, dk, dv = cache.core.backward(cache.core_cache, dctx)
    dq = rope_backward(dq, cache.tables)
    dk = rope_backward(dk, cache.tables)
    dx, grads[wq], _ = linear_backward(_merge(dq), cache.q_proj)
    dx_k, grads[wk], _ = linear_backward(_merge(dk), cache.k_proj)
    dx_v, grads[wv], _ = linear_backward(_merge(dv), cache.v_proj)
    dx += dx_k
    dx += dx_v
    return dx, grads

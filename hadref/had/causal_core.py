"""``HADCausalCore``: HAD attention in the Llama decoder (causal, grouped-query heads).

The decoder's attention layer (:mod:`hadref.engine.layers.causal_attention`) hands each
layer's post-RoPE q (B, h_q, T, d) and k, v (B, h_kv, T, d) to ``model.attention_core``;
this core plugs in exactly like ``CausalFloatAttentionCore`` (same methods). Query head j
reads key/value head ``j // g`` with ``g = h_q / h_kv``: keys are transformed (and, on the
packed path, packed) once per key head, never repeated per query head.

Per layer, with that layer's ``sigma_q``, ``sigma_k`` (:mod:`hadref.had.binarize`):

- the transform (``tanh1``, ``tanh2``, ``ste`` for training; ``hard`` for inference) acts
  on the post-RoPE q and k; the logits are ``S = Q_t K_t^T / sqrt(d)`` (with ``ste`` and
  ``hard`` the integer dot product of the signs, formed exactly, so ties are exact);
- query i sees keys ``j <= i`` that are valid in key_mask (``seen_i`` of them); its
  ``N_i`` largest logits survive (ties to the lower key index, padding never), the softmax
  runs over the survivors, ``ctx = P V``. N per row: ``N_i = min(top_n, seen_i)`` with a
  fixed top_n, else ``N_i = min(seen_i, max(1, round(top_n_ratio * seen_i)))`` (round
  half to even; :func:`hadref.had.kernels.causal.ratio_top_n`, the one definition the
  kernels, this training path and the caches share), so a token attends the same way in a
  full forward, in a longer forward and in cached decoding (:meth:`top_n_for`);
- backward holds the selected set constant (gradients reach the kept logits only).

Memory: queries are walked in blocks of rows (:meth:`query_block_rows`): one block holds
(B, h_q, rows, T) logits at a time, never (T, T) per head for the whole sequence. A
training forward keeps, besides the transformed q and k, only the N selected key indices
and probabilities of each row ((B, h_q, T, N) int32 and float); the backward rebuilds one
block's dense probabilities at a time.

Attention distillation (``core.attention_targets``, see :class:`HADCausalCore`): with
targets set and ``train=True``, each layer's forward adds
``KL(softmax(S_T) || softmax(S_S))`` over the causal valid keys of every valid query row,
``S_T = q_t k_t^T / sqrt(d)`` the teacher's, ``S_S`` the student's transformed logits
*before* the top-N mask (``../shared/HAD.md``, "Losses"), summed over the layer's maps and
divided by ``M * R`` (M = layers x h_q, R = valid query rows of the batch), into
``core.attention_loss``; backward adds ``weight * dL/dS_S``, recomputed block by block.
Peak memory of the loss: the blocks of one layer.

``use_kernels`` (transform ``hard``, ``train=False``): the forward runs on packed sign
bits (:func:`hadref.had.attention.had_attention` with ``causal``, key heads shared by
their query groups) and equals the dense forward. Decoding (``new_kv_cache``,
``forward_cached``) keeps the keys as packed sign bits (:class:`PackedCausalKVCache`).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from hadref.checks import check_top_n, check_top_n_ratio, worker_chunks
from hadref.errors import HadrefError
from hadref.had.attention_kl import causal_kl_rows
from hadref.had.binarize import (
    TRANSFORMS,
    BinarizeCache,
    binarize_backward,
    binarize_forward,
    sign_pm1,
)
from hadref.had.core import StageSettings, _sigmas
from hadref.had.kernels.causal import ratio_top_n
from hadref.had.kernels.select import float_topn_softmax

DEFAULT_TOP_N_RATIO = 0.117  # the paper's N / length (30 of 256 tokens)


class CausalCoreCache(NamedTuple):
    """What ``HADCausalCore.forward(train=True)`` saves for its backward."""

    transform: str
    qt: np.ndarray                 # (B, h_kv, g, T, d) transformed queries (grouped view)
    kt: np.ndarray                 # (B, h_kv, T, d) transformed keys
    v: np.ndarray                  # (B, h_kv, T, d)
    q: BinarizeCache               # the query transform's cache
    k: BinarizeCache               # the key transform's cache
    idx: np.ndarray                # (B, h_kv, g, T, N') int32 selected keys in key order
    probs: np.ndarray              # (B, h_kv, g, T, N') their probabilities ((0, 0) unused)
    key_mask: np.ndarray           # (B, T) bool
    block: int                     # query rows per block
    inv_sqrt_d: float
    exact: bool                    # logits from the exact sign dot product (ste, hard)
    sigma_prod: float              # sigma_q * sigma_k of the layer
    targets: tuple | None          # (q_t, k_t, weight / (M R)) when the attention loss is on


class HADCausalCore(StageSettings):
    """HAD attention for the decoder's attention hook (see the module docstring).

    sigma_q, sigma_k: (L,) positive per-layer coefficients; top_n: a fixed N >= 1, or None
    for N per query row, ``N_i = max(1, round(top_n_ratio * seen_i))`` of the ``seen_i``
    valid keys row i sees (the module docstring; the same in every forward, the packed
    kernels and cached decoding); transform: ``"tanh1"``, ``"tanh2"``,
    ``"ste"`` or ``"hard"`` (inference only); c > 0: the tanh temperature; ste_t > 0: the
    STE window; use_kernels: run ``hard`` inference forwards on packed bits.

    ``forward(q, k, v, key_mask, layer, train=False)``: q (B, h_q, T, d), k, v (B, h_kv,
    T, d) float32 or float64, key_mask (B, T) bool or None -> ``(ctx (B, h_q, T, d),
    cache)`` (cache None unless train). ``backward(cache, dctx)`` -> ``(dq, dk, dv)``.

    ``attention_targets``: None (no attention loss) or an object with ``qk(layer)`` ->
    (q_t (B, h_q, T, d), k_t (B, h_kv, T, d)), the teacher's post-RoPE q and k, and
    ``weight`` (float). ``attention_loss``: the (unweighted) L_attn accumulated by the
    training forwards since the caller last set it to 0.0; the gradient that backward
    adds is ``weight * dL_attn / dS_S``, so the total loss is ``L_out + weight *
    attention_loss``.
    """

    score_budget = 1 << 22  # logits held at once per block (16 MB in float32)
    max_block_rows = 256

    def __init__(self, sigma_q, sigma_k, top_n=None, top_n_ratio=DEFAULT_TOP_N_RATIO,
                 transform: str = "tanh1", c: float = 5.0, ste_t: float = 1.0,
                 use_kernels: bool = False):
        self.sigma_q = _sigmas(sigma_q, "sigma_q")
        self.sigma_k = _sigmas(sigma_k, "sigma_k")
        if self.sigma_q.shape != self.sigma_k.shape:
            raise HadrefError(f"sigma_k: expected {self.sigma_q.size} values (as sigma_q), "
                              f"got {self.sigma_k.size}")
        self.top_n = None if top_n is None else check_top_n(top_n)
        self.top_n_ratio = check_top_n_ratio(top_n_ratio)
        self.transform = transform
        self.c = c
        self.ste_t = ste_t
        self.use_kernels = bool(use_kernels)
        self.attention_targets = None
        self.attention_loss = 0.0

    @classmethod
    def for_inference(cls, sigma_q, sigma_k, top_n=None,
                      top_n_ratio=DEFAULT_TOP_N_RATIO) -> "HADCausalCore":
        """A ``hard`` core on the packed Numba path (what ``hadref.load`` gives a student)."""
        return cls(sigma_q, sigma_k, top_n, top_n_ratio, transform="hard", use_kernels=True)


    def top_n_for(self, length: int) -> int:
        """N of a query row that sees ``length`` (>= 1) valid keys: the fixed top_n, else
        ``max(1, round(top_n_ratio * length))`` (round half to even,
        ``kernels.causal.ratio_top_n``). Row i of a forward keeps ``min(N, length)`` with
        ``length = seen_i``; the largest, ``top_n_for(T)``, sizes the training cache."""
        if self.top_n is not None:
            return self.top_n
        return max(1, int(ratio_top_n(self.top_n_ratio, int(length))))

    @property
    def top_n_rule(self) -> str | None:
        """"per row" when N scales with the keys each query row sees (a ratio), None with a
        fixed top_n. Results files record it: before N per row, one N per forward served
        every row, so files without it must not be resumed as per-row results."""
        return None if self.top_n is not None else "per row"

    def _ratio(self) -> float:
        """The kernels' ratio argument: 0.0 with a fixed top_n, else top_n_ratio."""
        return 0.0 if self.top_n is not None else self.top_n_ratio

    def query_block_rows(self, batch, num_heads, num_keys) -> int:
        """Query positions per block: at most max_block_rows, and few enough that
        batch * num_heads * rows * num_keys stays within score_budget (at least one)."""
        return max(1, min(self.max_block_rows,
                          self.score_budget // max(1, batch * num_heads * num_keys)))

    def __repr__(self) -> str:
        n = f"top_n={self.top_n}" if self.top_n is not None else f"top_n_ratio={self.top_n_ratio:g}"
        return (f"HADCausalCore(layers={self.n_layers}, {n}, transform={self.transform!r}, "
                f"c={self.c:g}, ste_t={self.ste_t:g}, use_kernels={self.use_kernels})")

    def __deepcopy__(self, memo):
        other = copy.copy(self)
        other.sigma_q, other.sigma_k = self.sigma_q.copy(), self.sigma_k.copy()
        other.attention_targets = None  # a teacher's recording is not part of the core
        return other

    # ------------------------------------------------------------------------- checks

    def _check_layer(self, layer):
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise HadrefError(f"layer: expected 0..{self.n_layers - 1}, got {layer!r}")

    def _check(self, q, k, v, key_mask, layer):
        self._check_layer(layer)
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.ndim != 4:
                raise HadrefError(f"{name}: expected shape (B, h, T, d), got {x.shape}")
            if x.dtype.type not in (np.float32, np.float64):
                raise HadrefError(f"{name}: expected float32 or float64, got {x.dtype}")
        nb, hq, nt, d = q.shape
        if k.shape[0] != nb or k.shape[2:] != (nt, d):
            raise HadrefError(f"k: expected shape (B, h_kv, T, d) with B, T, d = {nb}, {nt}, "
                              f"{d} (as q), got {k.shape}")
        if v.shape[:3] != k.shape[:3]:
            raise HadrefError(f"v: expected shape {k.shape[:3]} + (d,) (as k), got {v.shape}")
        if hq % k.shape[1]:
            raise HadrefError(f"k: query heads {hq} are not a multiple of key heads {k.shape[1]}")
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not np.isfinite(x).all():
                raise HadrefError(f"{name} of layer {layer}: expected finite values, "
                                  f"found NaN or inf")
        if key_mask is None:
            return np.ones((nb, nt), dtype=np.bool_)
        key_mask = np.asarray(key_mask)
        if key_mask.shape != (nb, nt):
            raise HadrefError(f"key_mask: expected shape {(nb, nt)}, got {key_mask.shape}")
        return key_mask.astype(np.bool_, copy=False)

    def _targets(self, layer, q, k, key_mask):
        """(q_t grouped, k_t, weight / (M R)) of the attention loss, or None."""
        targets = self.attention_targets
        if targets is None:
            return None
        q_t, k_t = targets.qk(layer)
        q_t, k_t = np.asarray(q_t), np.asarray(k_t)
        if q_t.shape != q.shape:
            raise HadrefError(f"attention_targets.qk({layer}): expected q_t of shape {q.shape}, "
                              f"got {q_t.shape}")
        if k_t.shape != k.shape:
            raise HadrefError(f"attention_targets.qk({layer}): expected k_t of shape {k.shape}, "
                              f"got {k_t.shape}")
        weight = float(targets.weight)
        if not (math.isfinite(weight) and weight >= 0):
            raise HadrefError(f"attention_targets.weight: expected a number >= 0, got "
                              f"{targets.weight!r}")
        nb, hq, nt, d = q.shape
        g = hq // k.shape[1]
        rows = max(1, int(key_mask.sum()))
        norm = float(self.n_layers * hq * rows)
        qg = np.ascontiguousarray(q_t, dtype=q.dtype).reshape(nb, k.shape[1], g, nt, d)
        return qg, np.ascontiguousarray(k_t, dtype=q.dtype), weight, norm

    # ------------------------------------------------------------------------- forward

    def forward(self, q, k, v, key_mask, layer, train=False):
        q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
        key_mask = self._check(q, k, v, key_mask, layer)
        if train and self.transform == "hard":
            raise HadrefError("transform 'hard' is inference only: it has no gradient "
                              "(train with transform 'ste')")
        sq, sk = float(self.sigma_q[layer]), float(self.sigma_k[layer])
        if not train and self.transform == "hard" and self.use_kernels:
            from hadref.had import attention as hamming

            ratio = None if self.top_n is not None else self.top_n_ratio
            ctx = hamming.had_attention(q, k, v, self.top_n, sq, sk,
                                        key_mask=key_mask[:, None, :], causal=True,
                                        top_n_ratio=ratio)
            return ctx.astype(np.result_type(q, k, v), copy=False), None
        # the most a row keeps (the last, seeing all T keys): the width of the saved selection
        n = self.top_n_for(q.shape[2])
        return self._forward_dense(q, k, v, key_mask, layer, sq, sk, n, train)

    def _logit_operands(self, q, k, sq, sk):
        """Transformed q, k and the operands of the logits: (qt, kt, qa, ka, qc, kc,
        exact); logits = (qa ka^T) * factor, with factor 1/sqrt(d) (tanh) or
        sigma_q sigma_k / sqrt(d) on the exact sign dot products (ste, hard)."""
        qt, qc = binarize_forward(q, sq, self.transform, self.c, self.ste_t)
        kt, kc = binarize_forward(k, sk, self.transform, self.c, self.ste_t)
        exact = self.transform in ("ste", "hard")
        if exact:  # +-1 entries: the dot products are exact integers in either float type
            return qt, kt, sign_pm1(q), sign_pm1(k), qc, kc, True
        return qt, kt, qt, kt, qc, kc, False

    def _forward_dense(self, q, k, v, key_mask, layer, sq, sk, top_n, train):
        dtype = np.result_type(q, k, v).type
        nb, hq, nt, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        qt, kt, qa, ka, qc, kc, exact = self._logit_operands(q, k, sq, sk)
        factor = (sq * sk if exact else 1.0) / math.sqrt(d)
        qa_g = qa.reshape(nb, hkv, g, nt, d)
        targets = self._targets(layer, q, k, key_mask) if train else None
        ctx = np.empty((nb, hkv, g, nt, d), dtype)
        width = min(top_n, nt)
        if train:
            idx = np.zeros((nb, hkv, g, nt, width), np.int32)
            kept = np.zeros((nb, hkv, g, nt, width), dtype)
        block = self.query_block_rows(nb, hq, nt)
        loss = 0.0
        for s in range(0, nt, block):
            e = min(nt, s + block)
            scores = _block_logits(qa_g, ka, s, e, factor, exact, dtype)
            valid = _block_valid(key_mask, s, e, scores.shape)
            probs = _topn_softmax(scores, valid, top_n, self._ratio())
            ctx[:, :, :, s:e] = np.matmul(probs, v[:, :, None, :e])
            if train:
                block_idx = np.zeros(probs.shape[:-1] + (width,), np.int32)
                block_kept = np.zeros(probs.shape[:-1] + (width,), dtype)
                _sparse_rows(probs.reshape(-1, e), block_idx.reshape(-1, width),
                             block_kept.reshape(-1, width))
                idx[:, :, :, s:e] = block_idx
                kept[:, :, :, s:e] = block_kept
            if targets is not None:
                loss += _block_kl(targets, scores, key_mask, s, e)[0]
        ctx = ctx.reshape(nb, hq, nt, d)
        if not train:
            return ctx, None
        if targets is not None:
            self.attention_loss += loss / targets[3]
        cache = CausalCoreCache(self.transform, qt.reshape(nb, hkv, g, nt, d), kt, v, qc, kc,
                                idx, kept, key_mask, block, 1.0 / math.sqrt(d), exact,
                                sq * sk, targets)
        return ctx, cache

    # ------------------------------------------------------------------------- backward

    def backward(self, cache: CausalCoreCache, dctx):
        """dctx (B, h_q, T, d) -> (dq (B, h_q, T, d), dk, dv (B, h_kv, T, d))."""
        if cache is None or cache.transform == "hard":
            raise HadrefError("transform 'hard' is inference only: it has no gradient "
                              "(train with transform 'ste')")
        qt, kt, v = cache.qt, cache.kt, cache.v
        nb, hkv, g, nt, d = qt.shape
        dtype = v.dtype.type
        dctx_g = np.ascontiguousarray(dctx, dtype=dtype).reshape(nb, hkv, g, nt, d)
        dqt = np.empty_like(qt)
        dkt = np.zeros(kt.shape, dtype)
        dv = np.zeros(v.shape, dtype)
        targets = cache.targets
        if targets is not None:
            qa_g = sign_pm1(cache.q.saved).reshape(qt.shape) if cache.exact else qt
            ka = sign_pm1(cache.k.saved) if cache.exact else kt
            factor = (cache.sigma_prod if cache.exact else 1.0) * cache.inv_sqrt_d
        for s in range(0, nt, cache.block):
            e = min(nt, s + cache.block)
            probs = np.zeros((nb, hkv, g, e - s, e), dtype)
            width = cache.idx.shape[-1]
            _dense_rows(np.ascontiguousarray(cache.idx[:, :, :, s:e]).reshape(-1, width),
                        np.ascontiguousarray(cache.probs[:, :, :, s:e]).reshape(-1, width),
                        probs.reshape(-1, e))
            dc = dctx_g[:, :, :, s:e]
            # dv += sum over the group of P^T dctx
            dv[:, :, :e] += np.matmul(probs.swapaxes(-1, -2), dc).sum(axis=2)
            dp = np.matmul(dc, v[:, :, None, :e].swapaxes(-1, -2))
            dp -= np.einsum("bhgrk,bhgrk->bhgr", probs, dp)[..., None]
            dp *= probs  # dS of the top-N softmax
            if targets is not None:
                scores = _block_logits(qa_g, ka, s, e, factor, cache.exact, dtype)
                grad = _block_kl(targets, scores, cache.key_mask, s, e, grad=True)[1]
                dp += dtype(targets[2]) * grad
            dp *= dtype(cache.inv_sqrt_d)  # gradient w.r.t. Q_t K_t^T
            dqt[:, :, :, s:e] = np.matmul(dp, kt[:, :, None, :e])
            dkt[:, :, :e] += np.matmul(dp.swapaxes(-1, -2), qt[:, :, :, s:e]).sum(axis=2)
        dq = binarize_backward(dqt.reshape(nb, hkv * g, nt, d), cache.q)
        dk = binarize_backward(dkt, cache.k)
        return dq, dk, dv

    # ------------------------------------------------------------------------- decoding

    def new_kv_cache(self, num_layers, batch, num_kv_heads, capacity, head_dim, dtype):
        """A :class:`hadref.had.cache.PackedCausalKVCache`: keys as packed sign bits."""
        from hadref.had.cache import PackedCausalKVCache

        return PackedCausalKVCache(num_layers, batch, num_kv_heads, capacity, head_dim, dtype)

    def forward_cached(self, q, k, v, kv_cache, layer):
        """q (B, h_q, t, d), k, v (B, h_kv, t, d): the t positions after the cached ones ->
        ctx (B, h_q, t, d). Each new position keeps its own N (N per row: of the keys it
        sees, every cached one and itself), as in a full forward of the sequence; the
        ``hard`` selection whatever the core's transform. Cached decoding thus equals full
        forwards exactly (same selection), with a fixed top_n or with top_n_ratio."""
        self._check_layer(layer)
        kv_cache.append(layer, k, v)
        sq, sk = float(self.sigma_q[layer]), float(self.sigma_k[layer])
        ratio = None if self.top_n is not None else self.top_n_ratio
        return kv_cache.attend(layer, q, self.top_n, sq, sk, top_n_ratio=ratio)


# --- blocks --------------------------------------------------------------------------------

@njit(cache=True)
def _sparse_rows(probs, idx, kept):
    """The nonzero entries of each row of probs (R, n) (the top-N survivors; one whose
    probability underflowed to 0 adds nothing to forward or backward) into idx, kept
    (R, N') in key order; the rest of each row of idx, kept is left as it was (zeros)."""
    for r in range(probs.shape[0]):
        c = 0
        for j in range(probs.shape[1]):
            if probs[r, j] != 0 and c < idx.shape[1]:
                idx[r, c] = j
                kept[r, c] = probs[r, j]
                c += 1


@njit(cache=True)
def _dense_rows(idx, kept, probs):
    """Inverse of ``_sparse_rows``: adds kept (R, N') at columns idx into probs (R, n)
    (zeros; the unused (0, 0.0) places add nothing)."""
    for r in range(idx.shape[0]):
        for c in range(idx.shape[1]):
            probs[r, idx[r, c]] += kept[r, c]


def _block_logits(qa_g, ka, s, e, factor, exact, dtype):
    """(B, h_kv, g, e - s, e) logits of query rows s..e-1 against keys 0..e-1."""
    dots = np.matmul(qa_g[:, :, :, s:e], ka[:, :, None, :e].swapaxes(-1, -2))
    if exact:
        return (dots.astype(np.float64) * factor).astype(dtype)
    dots *= dtype(factor)
    return dots


def _block_valid(key_mask, s, e, shape):
    """(B, 1, 1, e - s, e) bool: key j valid and j <= i for query rows i = s..e-1."""
    causal = np.arange(e)[None, :] <= np.arange(s, e)[:, None]
    return key_mask[:, None, None, None, :e] & causal


def _topn_softmax(scores, valid, top_n, ratio):
    """Softmax over the top N_i valid logits of each row, zeros elsewhere (scores' shape);
    N_i = ``kernels.causal.row_top_n(top_n, ratio, valid keys of the row)`` (ratio 0.0:
    min(top_n, valid keys))."""
    flat = np.ascontiguousarray(scores).reshape(-1, scores.shape[-1])
    valid_flat = np.ascontiguousarray(np.broadcast_to(valid, scores.shape)).reshape(flat.shape)
    probs = np.empty(flat.shape, scores.dtype)
    chunks = worker_chunks(flat.shape[0])
    float_topn_softmax(flat, valid_flat, top_n, ratio, probs,
                       np.empty((chunks, flat.shape[1]), np.int64))
    return probs.reshape(scores.shape)


def _block_kl(targets, scores, key_mask, s, e, grad=False):
    """Sum over the block's maps and valid query rows of KL(softmax(S_T) || softmax(S_S))
    over the keys each row sees, and (grad) its gradient w.r.t. the student logits
    divided by M R, in scores' dtype (:mod:`hadref.had.attention_kl`)."""
    q_t, k_t, _, norm = targets
    d = q_t.shape[-1]
    s_t = np.matmul(q_t[:, :, :, s:e], k_t[:, :, None, :e].swapaxes(-1, -2))
    s_t *= s_t.dtype.type(1.0 / math.sqrt(d))
    nb, hkv, g, rows, n = scores.shape
    shape = (nb, hkv * g, rows, n)
    out = np.empty(shape if grad else (1, 1, 1, 1), scores.dtype)
    row_loss = np.empty(shape[:3])
    causal_kl_rows(np.ascontiguousarray(s_t).reshape(shape),
                   np.ascontiguousarray(scores).reshape(shape), key_mask, s, 1.0 / norm,
                   grad, out, row_loss)
    return float(row_loss.sum()), (out.reshape(scores.shape) if grad else None)


# --- the teacher's recording -----------------------------------------------------------------

class RecordingCausalCore:
    """A wrapper around a decoder attention core (the float teacher's, usually) that keeps
    each layer's post-RoPE q (B, h_q, T, d) and k (B, h_kv, T, d) of the last
    ``forward``, and the key_mask ((B, T) bool or None) it saw.

    ``qk(layer)`` -> (q, k) of that layer (what ``HADCausalCore.attention_targets`` reads,
    and what sigma estimation measures); ``clear()`` drops them. Everything else (backward,
    new_kv_cache, forward_cached, query_block_rows) is the inner core's. ``weight``: the
    attention-loss weight when the recording serves as attention targets (default 1.0).
    """

    def __init__(self, inner, weight: float = 1.0):
        self.inner = inner
        self.weight = float(weight)
        self.recorded: dict = {}
        self.key_mask = None

    def forward(self, q, k, v, key_mask, layer, train=False):
        self.recorded[int(layer)] = (np.array(q, copy=True), np.array(k, copy=True))
        self.key_mask = None if key_mask is None else np.array(key_mask, dtype=bool)
        return self.inner.forward(q, k, v, key_mask, layer, train)

    def qk(self, layer):
        try:
            return self.recorded[int(layer)]
        except KeyError:
            raise HadrefError(f"RecordingCausalCore: nothing recorded for layer {layer} "
                              f"(run the teacher's forward first)") from None

    def clear(self) -> None:
        self.recorded.clear()
        self.key_mask = None

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy / unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)


def binarized_teacher(model, sigma_q, sigma_k, top_n=None, top_n_ratio=DEFAULT_TOP_N_RATIO):
    """A copy of the decoder ``model`` (weights shared, not copied) whose attention core is
    ``HADCausalCore.for_inference(sigma_q, sigma_k, top_n, top_n_ratio)``: the teacher
    binarized without distillation. Its ``had`` metadata (stage ``"binarized"``) lets
    ``hadref.engine.io.save`` write it as a student file."""
    other = model.with_attention_core(
        HADCausalCore.for_inference(sigma_q, sigma_k, top_n, top_n_ratio))
    if other.attention_core.n_layers != model.config.num_hidden_layers:
        raise HadrefError(f"sigma_q: expected {model.config.num_hidden_layers} values (one per "
                          f"layer), got {other.attention_core.n_layers}")
    core = other.attention_core
    other.had = {"sigma_q": core.sigma_q.copy(), "sigma_k": core.sigma_k.copy(),
                 "top_n": core.top_n or 0, "top_n_ratio": core.top_n_ratio, "ste_t": 1.0,
                 "stage": "binarized", "settings": {}, "teacher_sha256": ""}
    return other


__all__ = ["HADCausalCore", "RecordingCausalCore", "binarized_teacher", "TRANSFORMS",
           "DEFAULT_TOP_N_RATIO"]

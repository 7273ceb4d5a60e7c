"""``HADAttentionCore``: HAD attention behind the engine's attention hook.

The engine hands each layer's ``q, k, v`` (B, h, T, d) (after bias, before scaling) to
``core.forward(q, k, v, key_mask, layer, need_scores)`` (``docs/design.md``, "The
attention hook"). This core binarizes q and k with the layer's ``sigma_q``, ``sigma_k``
according to its transform (:mod:`hadref.had.binarize`; the distillation stage sets it),
forms ``scores = Q_t K_t^T / sqrt(d)``,
keeps the top-N valid keys of each query row and runs the softmax and value sum over them
(:mod:`hadref.had.topn`). ``backward`` returns ``(dq, dk, dv)`` and accepts the gradient of the
distillation loss with respect to ``aux['scores']`` (the transformed logits *before* the
top-N mask, where the attention KL is taken: ``../shared/HAD.md``, "Losses").

With the transforms ``ste`` and ``hard`` the logits are ``sigma_q sigma_k (sign(q) . sign(k)) /
sqrt(d)`` with the integer dot product formed exactly, so ties are exact and the selected
set is the packed kernels' set. ``for_inference`` builds a ``hard`` core whose forward
runs on packed bits (:mod:`hadref.had.attention`) and equals the training path's forward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hadref.checks import check_positive, check_top_n
from hadref.errors import HadrefError
from hadref.had import attention as hamming
from hadref.had.binarize import (
    TRANSFORMS,
    BinarizeCache,
    binarize_backward,
    binarize_forward,
    check_transform,
    sign_pm1,
)
from hadref.had.topn import TopNCache, topn_attention_backward, topn_attention_forward


def _sigmas(values, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise HadrefError(f"{name}: expected a 1-D array with one value per layer, "
                          f"got shape {np.shape(values)}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise HadrefError(f"{name}: expected positive finite values, got {arr.tolist()}")
    return arr


class _LazyProbs(dict):
    """aux dict whose 'probs' is computed on first access (the packed path needs none)."""

    def __init__(self, compute):
        super().__init__()
        self._compute = compute

    def __missing__(self, key):
        if key != "probs":
            raise KeyError(key)
        self["probs"] = value = self._compute()
        return value

    def __contains__(self, key):
        return key == "probs" or super().__contains__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


class StageSettings:
    """The settings of a HAD core that the distillation loop changes between steps
    (``transform``, ``c``, ``ste_t``), validated on every set; shared by the encoder's
    :class:`HADAttentionCore` and the decoder's ``HADCausalCore``. The core sets
    ``sigma_q`` (L,) itself."""

    @property
    def transform(self) -> str:
        return self._transform

    @transform.setter
    def transform(self, value: str) -> None:
        self._transform = check_transform(value)

    @property
    def c(self) -> float:
        return self._c

    @c.setter
    def c(self, value: float) -> None:
        self._c = check_positive(value, "c")

    @property
    def ste_t(self) -> float:
        return self._ste_t

    @ste_t.setter
    def ste_t(self, value: float) -> None:
        self._ste_t = check_positive(value, "ste_t")

    @property
    def n_layers(self) -> int:
        return self.sigma_q.size


class HADCoreCache(NamedTuple):
    """What ``HADAttentionCore.forward`` saves for its backward (the packed ``hard`` path
    saves only its transform: it has no backward)."""

    transform: str
    qt: np.ndarray | None = None          # (B, h, T, d) transformed queries
    kt: np.ndarray | None = None          # (B, h, T, d) transformed keys
    q: BinarizeCache | None = None        # the query transform's cache
    k: BinarizeCache | None = None        # the key transform's cache
    topn: TopNCache | None = None         # the top-N softmax's cache
    inv_sqrt_d: float = 0.0


class HADAttentionCore(StageSettings):
    """HAD attention for the engine's attention hook (training path and packed inference).

    sigma_q, sigma_k: (L,) positive per-layer coefficients; top_n: N >= 1, one N for every
    row of a sequence (an encoder's rule, HAD.md; ``min(N, valid keys)`` per row, no ratio:
    N per row is the decoders', :class:`hadref.had.causal_core.HADCausalCore`); transform: one of
    ``"tanh1"``, ``"tanh2"``, ``"ste"`` (training) or ``"hard"`` (inference, no backward);
    c: the tanh temperature (> 0; the distillation schedule sets ``core.c`` between steps);
    ste_t: the STE window (> 0). ``use_kernels`` (``hard`` only): compute the context on
    packed bits with the Numba kernels when no scores are asked for.
    """

    supports_dropout = False      # capabilities (hadref.engine.attention_core)
    takes_strided_views = False

    def __init__(self, sigma_q, sigma_k, top_n: int, transform: str = "tanh1", c: float = 5.0,
                 ste_t: float = 1.0, use_kernels: bool = False):
        self.sigma_q = _sigmas(sigma_q, "sigma_q")
        self.sigma_k = _sigmas(sigma_k, "sigma_k")
        if self.sigma_q.shape != self.sigma_k.shape:
            raise HadrefError(f"sigma_k: expected {self.sigma_q.size} values (as sigma_q), "
                              f"got {self.sigma_k.size}")
        self.top_n = check_top_n(top_n)
        self.transform = transform
        self.c = c
        self.ste_t = ste_t
        self.use_kernels = bool(use_kernels)

    @classmethod
    def for_inference(cls, sigma_q, sigma_k, top_n: int) -> "HADAttentionCore":
        """A ``hard`` core on the packed Numba path (what ``hadref.load`` gives a student)."""
        return cls(sigma_q, sigma_k, top_n, transform="hard", use_kernels=True)


    def __repr__(self) -> str:
        return (f"HADAttentionCore(layers={self.n_layers}, top_n={self.top_n}, "
                f"transform={self.transform!r}, c={self.c:g}, ste_t={self.ste_t:g})")

    # ------------------------------------------------------------------------- forward

    def _check(self, q, k, v, key_mask, layer):
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise HadrefError(f"layer: expected 0..{self.n_layers - 1}, got {layer!r}")
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.ndim != 4 or x.shape != q.shape[:3] + (x.shape[3],):
                raise HadrefError(f"{name}: expected shape (B, h, T, d) = {q.shape}, got "
                                  f"{x.shape}")
            if x.dtype.type not in (np.float32, np.float64):
                raise HadrefError(f"{name}: expected float32 or float64, got {x.dtype}")
            if not np.isfinite(x).all():
                raise HadrefError(f"{name} of layer {layer}: expected finite values, "
                                  f"found NaN or inf")
        if k.shape != q.shape:
            raise HadrefError(f"k: expected shape {q.shape} (as q), got {k.shape}")
        batch, tokens = q.shape[0], q.shape[2]
        if key_mask is None:
            return np.ones((batch, tokens), dtype=np.bool_)
        key_mask = np.asarray(key_mask)
        if key_mask.shape != (batch, tokens):
            raise HadrefError(f"key_mask: expected shape {(batch, tokens)}, got {key_mask.shape}")
        return key_mask.astype(np.bool_, copy=False)

    def forward(self, q, k, v, key_mask, layer: int, need_scores: bool = False):
        """q, k, v: (B, h, T, d) float; key_mask: (B, T) bool (True = valid) or None.

        Returns ``(ctx (B, h, T, d), cache, aux)``; ``aux['probs']`` (B, h, T, T) the
        probabilities used (zero off the top-N set and on padding keys);
        ``aux['scores']`` (B, h, T, T) when ``need_scores``: the transformed
        ``Q_t K_t^T / sqrt(d)`` before the top-N mask.
        """
        q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
        key_mask = self._check(q, k, v, key_mask, layer)
        sq, sk = float(self.sigma_q[layer]), float(self.sigma_k[layer])
        if self.transform == "hard" and self.use_kernels and not need_scores:
            return self._forward_packed(q, k, v, key_mask, sq, sk, layer)
        return self._forward_dense(q, k, v, key_mask, sq, sk, need_scores)

    def _forward_dense(self, q, k, v, key_mask, sq, sk, need_scores):
        dtype = np.result_type(q, k, v).type
        d = q.shape[-1]
        inv_sqrt_d = dtype(1.0 / math.sqrt(d))
        qt, q_cache = binarize_forward(q, sq, self.transform, self.c, self.ste_t)
        kt, k_cache = binarize_forward(k, sk, self.transform, self.c, self.ste_t)
        if self.transform in ("ste", "hard"):
            # the exact integer dot product of the signs, one rounding when scaled: equal
            # popcounts give equal scores, as in the packed path
            signs_q = sign_pm1(q).astype(np.float64)
            dots = signs_q @ np.swapaxes(sign_pm1(k), -1, -2).astype(np.float64)
            scores = (dots * (sq * sk / math.sqrt(d))).astype(dtype)
        else:
            scores = (qt @ np.swapaxes(kt, -1, -2)) * inv_sqrt_d
        ctx, probs, topn_cache = topn_attention_forward(
            scores, v, key_mask[:, None, None, :], self.top_n)
        aux = {"probs": probs}
        if need_scores:
            aux["scores"] = scores
        cache = HADCoreCache(self.transform, qt, kt, q_cache, k_cache, topn_cache, inv_sqrt_d)
        return ctx.astype(dtype, copy=False), cache, aux

    def _forward_packed(self, q, k, v, key_mask, sq, sk, layer):
        batch, heads, tokens, d = q.shape
        ctx = hamming.had_attention(q, k, v, self.top_n, sq, sk,
                                    key_mask=key_mask[:, None, :])

        def probs():
            return self._forward_dense(q, k, v, key_mask, sq, sk, False)[2]["probs"]

        return ctx, HADCoreCache("hard"), _LazyProbs(probs)

    # ------------------------------------------------------------------------- backward

    def backward(self, cache, dctx, dscores=None):
        """dctx (B, h, T, d); dscores (B, h, T, T) or None: the gradient with respect to
        ``aux['scores']``. Returns ``(dq, dk, dv)``, each (B, h, T, d)."""
        if cache.transform == "hard":
            raise HadrefError("transform 'hard' is inference only: it has no gradient "
                              "(train with transform 'ste')")
        dlogits, dv = topn_attention_backward(dctx, cache.topn)
        if dscores is not None:
            dlogits = dlogits + dscores
        ds = dlogits * cache.inv_sqrt_d  # gradient with respect to Q_t K_t^T
        dqt = ds @ cache.kt
        dkt = np.swapaxes(ds, -1, -2) @ cache.qt
        return binarize_backward(dqt, cache.q), binarize_backward(dkt, cache.k), dv


__all__ = ["HADAttentionCore", "TRANSFORMS"]

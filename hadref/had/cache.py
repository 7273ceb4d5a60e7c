"""Key caches on packed sign bits, for decoding: keys packed once, with their values.

``PackedKeyCache`` (plain arrays, the public API) and ``PackedCausalKVCache`` (the
decoder's per-layer cache behind ``HADCausalCore``). Each new query attends over the whole
cache through the same kernels as :func:`hadref.had.attention.had_attention`, without
touching float keys again; grouped queries read their key head (no copies per query head).

With N per row (``top_n_ratio``), a new query row keeps ``max(1, round(ratio * seen))`` of
the ``seen`` keys it sees (every cached key before it, and itself), exactly what the same
row keeps in a full causal forward of the sequence: cached decoding equals full forwards.
"""

from __future__ import annotations

import numpy as np

from hadref.checks import check_positive
from hadref.errors import HadrefError
from hadref.had.attention import (
    _as_float,
    _attend,
    _check_d,
    _key_valid,
    _kv_group,
    _n_rule,
    _pack,
    _scores,
    _topn_groups,
    _two_scale,
)


class PackedKeyCache:
    """Packed keys (and their values) kept across queries: pack once, query many times.

    The decode-style use: keys are packed as they arrive (``append``) and every new query
    attends over the whole cache without touching float keys again. Key storage is
    ``ceil(d/64) * 8`` bytes per token and head instead of ``4 d`` for float32 keys.

    k: (..., n, d), v: (..., n, dv) float; key_mask: bool broadcastable to (..., n);
    sigma_k: the layer's key coefficient (> 0). Queries may have more heads (axis -3)
    than the keys when that is a multiple of the key heads (grouped-query attention:
    query head j reads key head j // (h_q / h_kv); the keys are packed once per key head).

    >>> cache = hadref.PackedKeyCache(k, v)
    >>> cache.append(k_new, v_new)                  # (..., t, d), (..., t, dv)
    >>> o = cache.attend(q_new, top_n=30)           # (..., m, dv)
    """

    def __init__(self, k, v, key_mask=None, sigma_k: float = 1.0):
        k = _as_float(k, "k", finite=False)
        v = _as_float(v, "v")
        if k.shape[:-2] != v.shape[:-2] or k.shape[-2] != v.shape[-2]:
            raise HadrefError(f"v: expected shape (..., {k.shape[-2]}, dv) matching k "
                              f"{k.shape}, got {v.shape}")
        self.d = _check_d(k.shape[-1])
        self.sigma_k = check_positive(sigma_k, "sigma_k")
        self.lead = k.shape[:-2]
        self.dv = v.shape[-1]
        self._groups = int(np.prod(self.lead, dtype=np.int64))
        self._words = (self.d + 63) // 64
        self._n = 0
        capacity = k.shape[-2]
        self._bits = np.empty((self._groups, capacity, self._words), np.uint64)
        self._v = np.empty((self._groups, capacity, self.dv), v.dtype)
        self._valid = np.empty((self._groups, capacity), np.bool_)
        self.append(k, v, key_mask)

    @property
    def n_keys(self) -> int:
        """Tokens held."""
        return self._n

    @property
    def key_bytes_per_token(self) -> int:
        """Bytes of packed keys per token, over all leading dims (heads)."""
        return self._groups * self._words * 8

    def _grow(self, need: int) -> None:
        capacity = self._bits.shape[1]
        if need <= capacity:
            return
        capacity = max(need, 2 * capacity)
        for name in ("_bits", "_v", "_valid"):
            old = getattr(self, name)
            new = np.empty((old.shape[0], capacity, *old.shape[2:]), old.dtype)
            new[:, : self._n] = old[:, : self._n]
            setattr(self, name, new)

    def append(self, k, v, key_mask=None) -> None:
        """Pack and add t new keys: k (..., t, d), v (..., t, dv) with the cache's leading dims."""
        k = _as_float(k, "k", finite=False)
        v = _as_float(v, "v")
        if k.shape[:-2] != self.lead or k.shape[-1] != self.d:
            raise HadrefError(f"k: expected shape {(*self.lead, 't', self.d)}, got {k.shape}")
        if v.shape != (*k.shape[:-1], self.dv):
            raise HadrefError(f"v: expected shape {(*k.shape[:-1], self.dv)}, got {v.shape}")
        t = k.shape[-2]
        self._grow(self._n + t)
        sl = slice(self._n, self._n + t)
        self._bits[:, sl] = _pack(k, "k").reshape(self._groups, t, self._words)
        self._v[:, sl] = v.reshape(self._groups, t, self.dv)
        self._valid[:, sl] = _key_valid(key_mask, self.lead, t)
        self._n += t

    def topn(self, q, top_n, causal=False, top_n_ratio=None):
        """:func:`hamming_topn` of float queries (..., m, d) against the cached keys
        (top_n None with top_n_ratio: N per row)."""
        q, kv_group = self._check_q(q)
        top_n, ratio = _n_rule(top_n, top_n_ratio)
        m, n, lead = q.shape[-2], self._n, q.shape[:-2]
        idx, lev, _ = _topn_groups(_pack(q, "q").reshape(-1, m, self._words),
                                   self._bits, self._valid, n, self.d, top_n, causal, kv_group,
                                   ratio)
        width = idx.shape[-1]
        return (idx.reshape(*lead, m, width),
                _scores(idx, lev, self.d).reshape(*lead, m, width))

    def attend(self, q, top_n, sigma_q: float = 1.0, causal=False, top_n_ratio=None):
        """HAD attention of queries (..., m, d) over the cached keys and values -> (..., m, dv).

        Same result as ``had_attention(q, K, V, top_n, sigma_q, sigma_k, key_mask, causal,
        top_n_ratio)`` on everything appended so far (top_n None with top_n_ratio: N per
        row).
        """
        q, kv_group = self._check_q(q)
        top_n, ratio = _n_rule(top_n, top_n_ratio)
        sigma_q = check_positive(sigma_q, "sigma_q")
        m, n = q.shape[-2], self._n
        out = _attend(_pack(q, "q").reshape(-1, m, self._words), self._bits,
                      self._v, self._valid, n, self.d, top_n,
                      _two_scale(sigma_q, self.sigma_k, self.d), causal, kv_group=kv_group,
                      ratio=ratio)
        return out.reshape(*q.shape[:-2], m, self.dv)

    def _check_q(self, q):
        q = _as_float(q, "q", finite=False)
        if q.shape[-1] != self.d:
            raise HadrefError(f"q: expected shape {(*self.lead, 'm', self.d)}, got {q.shape}")
        return q, _kv_group(q.shape[:-2], self.lead, "q", "the cached keys")


class PackedCausalKVCache:
    """The decoder's key/value cache with keys as packed sign bits (``HADCausalCore``).

    Per layer: ``key_bits[layer]`` (B * h_kv, capacity, ceil(d/64)) uint64 (8 bytes per key
    per key head at d <= 64), ``values[layer]`` (B * h_kv, capacity, d) in ``dtype``
    (float32 for a float32 model); ``lengths[layer]``: positions filled. Keys are packed
    once as they arrive and never kept in float; each new query runs the fused kernels
    (the row kernel for a few new positions) against the first ``lengths[layer]`` keys,
    query head j reading key head ``j // (h_q / h_kv)``. Made by
    :meth:`hadref.had.causal_core.HADCausalCore.new_kv_cache`.
    """

    def __init__(self, num_layers, batch, num_kv_heads, capacity, head_dim, dtype):
        self.d = _check_d(head_dim)
        self.batch, self.num_kv_heads, self.capacity = int(batch), int(num_kv_heads), int(capacity)
        groups, words = self.batch * self.num_kv_heads, (self.d + 63) // 64
        self.key_bits = [np.zeros((groups, capacity, words), np.uint64) for _ in range(num_layers)]
        self.values = [np.zeros((groups, capacity, self.d), dtype) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self._valid = np.ones((groups, capacity), np.bool_)  # decoding has no padding keys

    @property
    def nbytes(self) -> int:
        """Bytes held for keys and values, all layers, at full capacity."""
        return int(sum(a.nbytes for a in self.key_bits) + sum(a.nbytes for a in self.values))

    @property
    def bytes_per_token(self) -> int:
        """Bytes per cached position, all layers and key heads (packed keys + values)."""
        return self.nbytes // max(1, self.capacity * self.batch) if self.capacity else 0

    @property
    def key_bytes_per_token(self) -> int:
        """Bytes of packed keys per position, per layer and key head (8 at d <= 64)."""
        return self.key_bits[0].shape[2] * 8 if self.key_bits else 0

    def append(self, layer, k, v) -> int:
        """Pack and store t new keys k (B, h_kv, t, d) with their values v; returns the
        number of keys now cached for the layer."""
        k = _as_float(k, "k", finite=False)
        v = np.asarray(v)
        expected = (self.batch, self.num_kv_heads, k.shape[2], self.d)
        if k.shape != expected or v.shape != expected:
            raise HadrefError(f"kv cache: expected k and v of shape {expected}, got "
                              f"{k.shape} and {v.shape}")
        start, t = self.lengths[layer], k.shape[2]
        if start + t > self.capacity:
            raise HadrefError(f"kv cache: {start + t} positions exceed its capacity "
                              f"{self.capacity}")
        groups = self.batch * self.num_kv_heads
        self.key_bits[layer][:, start:start + t] = _pack(k, "k").reshape(groups, t, -1)
        self.values[layer][:, start:start + t] = v.reshape(groups, t, self.d)
        self.lengths[layer] = start + t
        return start + t

    def attend(self, layer, q, top_n, sigma_q, sigma_k, top_n_ratio=None):
        """HAD attention of the newest positions' queries q (B, h_q, t, d) over the layer's
        cached keys (the t newest included), causal -> (B, h_q, t, d) in the values' dtype.
        top_n: a fixed N, or None with top_n_ratio: N per row, each new position keeping
        ``max(1, round(ratio * seen))`` of the ``seen`` keys up to and including itself
        (as in a full forward of the sequence)."""
        top_n, ratio = _n_rule(top_n, top_n_ratio)
        q = _as_float(q, "q", finite=False)
        nb, hq, t, d = q.shape
        if nb != self.batch or d != self.d or hq % self.num_kv_heads:
            raise HadrefError(f"q: expected shape ({self.batch}, a multiple of "
                              f"{self.num_kv_heads}, t, {self.d}), got {q.shape}")
        n = self.lengths[layer]
        out = _attend(_pack(q, "q").reshape(nb * hq, t, -1), self.key_bits[layer],
                      self.values[layer], self._valid, n, self.d, top_n,
                      _two_scale(sigma_q, sigma_k, self.d), True,
                      kv_group=hq // self.num_kv_heads, ratio=ratio)
        return out.reshape(nb, hq, t, d)

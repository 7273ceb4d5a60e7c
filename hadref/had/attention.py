"""HAD attention on plain arrays: the public inference API (Numba kernels on packed bits).

>>> import numpy as np, hadref
>>> rng = np.random.default_rng(0)
>>> q, k, v = (rng.standard_normal((2, 12, 256, 64), dtype=np.float32) for _ in range(3))
>>> o = hadref.had_attention(q, k, v, top_n=30)          # (2, 12, 256, 64) float32
>>> o_ref = hadref.float_attention(q, k, v)              # dense softmax(QK^T/sqrt(d)) V

Conventions (``../shared/HAD.md``): the sign of 0 is +1 (bit set iff x >= 0); the score of
a query/key pair is ``sigma_q * sigma_k * (d - 2 * popcount(q_bits XOR k_bits))``; the N
largest scores of each query row survive, ties to the lower key index, padding keys never;
``N_eff = min(N, valid keys)``; the softmax ``softmax(score / sqrt(d))`` runs over the
survivors only; a row without any valid key outputs zeros.

N per row (``top_n_ratio``, the decoders' rule): instead of a fixed ``top_n``, a ratio in
(0, 1]; each query row keeps ``N_i = min(seen_i, max(1, round(ratio * seen_i)))`` of the
``seen_i`` selectable keys it sees (valid, and with ``causal`` not in its future), round
half to even (:func:`hadref.had.kernels.causal.ratio_top_n`). A token thus attends the same
way in a full forward and in cached decoding. Without ``causal`` every row of a sequence
sees the same keys, so N is one per sequence there.

Grouped-query attention: k and v (and the packed keys) may have fewer heads than q on axis
-3 when h_q is a multiple of h_kv; query head j then reads key/value head
``j // (h_q / h_kv)``, and the keys are packed once per key head (never copied per query
head). key_mask then broadcasts against k's leading dims.

Everything else in the module is private. Bad input raises :class:`HadrefError` naming the
argument and what was expected.
"""

from __future__ import annotations

import math

import numpy as np

from hadref.checks import check_positive, check_top_n, check_top_n_ratio, is_int
from hadref.errors import HadrefError
from hadref.had import workspaces as _ws
from hadref.had.kernels import fused as _fused
from hadref.had.kernels import tile as _tile
from hadref.had.kernels.causal import ratio_top_n as _ratio_top_n
from hadref.had.kernels.finite import count_nonfinite_rows as _count_nonfinite_rows
from hadref.had.kernels.pack import pack_rows as _pack_rows

__all__ = ["pack_signs", "hamming_topn", "had_attention", "float_attention"]

_FLOATS = (np.float32, np.float64)
_MAX_D = 32766  # popcount levels are stored as int16


# ----------------------------------------------------------------------------- validation

def _as_float(x, name: str, min_ndim: int = 2, finite: bool = True) -> np.ndarray:
    """x as a C-contiguous float array; finite=False leaves the NaN/inf check to the
    caller (``_pack`` with a name does it while packing)."""
    x = np.asarray(x)
    if x.dtype.type not in _FLOATS:
        raise HadrefError(f"{name}: expected float32 (or float64) array, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise HadrefError(f"{name}: expected shape (..., n, d), got {x.shape}")
    if 0 in x.shape:
        raise HadrefError(f"{name}: expected non-empty array, got shape {x.shape}")
    x = np.ascontiguousarray(x)
    if finite and not _all_finite(x):
        raise HadrefError(f"{name}: expected finite values, found NaN or inf")
    return x


def _all_finite(x: np.ndarray) -> bool:
    """True when no NaN or inf (x C-contiguous): one parallel pass on the cores."""
    return _count_nonfinite_rows(x.reshape(-1, x.shape[-1])) == 0


def _two_scale(sigma_q: float, sigma_k: float, d: int) -> float:
    """One popcount level in logit units: 2 * sigma_q * sigma_k / sqrt(d)."""
    scale = 2.0 * sigma_q * sigma_k / math.sqrt(d)
    if not math.isfinite(scale):
        raise HadrefError(f"sigma_q * sigma_k: too large (logit scale {scale})")
    return scale


def _key_valid(key_mask, lead: tuple, n: int, name: str = "key_mask") -> np.ndarray:
    """key_mask broadcastable to (*lead, n), bool -> (G, n) bool, C-contiguous."""
    groups = int(np.prod(lead, dtype=np.int64))
    if key_mask is None:
        return np.ones((groups, n), dtype=np.bool_)
    mask = np.asarray(key_mask)
    if mask.dtype != np.bool_:
        if mask.dtype.kind in "iu" and np.isin(mask, (0, 1)).all():
            mask = mask.astype(np.bool_)
        else:
            raise HadrefError(f"{name}: expected a bool (or 0/1) array, got dtype {mask.dtype}")
    try:
        mask = np.broadcast_to(mask, (*lead, n))
    except ValueError:
        raise HadrefError(f"{name}: expected shape broadcastable to {(*lead, n)}, "
                          f"got {mask.shape}") from None
    return np.ascontiguousarray(mask.reshape(groups, n))


def _n_rule(top_n, top_n_ratio) -> tuple[int | None, float]:
    """The checked (top_n, ratio) of a call: (N, 0.0) for a fixed N, (None, ratio) for
    N per row; exactly one of the two must be given."""
    if top_n_ratio is None:
        return check_top_n(top_n), 0.0
    if top_n is not None:
        raise HadrefError(f"top_n: expected None when top_n_ratio is given (N per row), "
                          f"got {top_n!r}")
    return None, check_top_n_ratio(top_n_ratio)


def _top_n_cap(top_n, ratio: float, n: int) -> int:
    """What the kernels take as top_n for n keys: min(top_n, n) for a fixed N; with a ratio
    the N of a row that sees all n keys, the most any row keeps (>= 1 for n >= 1)."""
    if ratio > 0.0:
        return max(1, int(_ratio_top_n(ratio, n)))
    return min(top_n, n)


def _valid_before(valid: np.ndarray, n: int) -> np.ndarray:
    """(G, >= n) bool -> (G, n + 1) int32: valid keys among the first j, for j = 0..n."""
    out = np.zeros((valid.shape[0], n + 1), dtype=np.int32)
    np.cumsum(valid[:, :n], axis=1, dtype=np.int32, out=out[:, 1:])
    return out


# ----------------------------------------------------------------------------- public API

def pack_signs(x) -> np.ndarray:
    """Pack the signs of the last axis into 64-bit words.

    x: (..., d) float32 or float64, finite.
    Returns (..., ceil(d / 64)) uint64: bit ``i % 64`` of word ``i // 64`` is set iff
    ``x[..., i] >= 0`` (sign(0) = +1); the padding bits of the last word are zero, so
    ``d - 2 * popcount(a ^ b)`` is the exact dot product of the +-1 sign vectors for any d.

    >>> hadref.pack_signs(np.array([0.5, -1.0, 0.0], np.float32))
    array([5], dtype=uint64)
    """
    return _pack(_as_float(x, "x", min_ndim=1, finite=False), "x")


def _pack(x: np.ndarray, name: str | None = None) -> np.ndarray:
    """``pack_signs`` of a C-contiguous float array; with a name, raise ``HadrefError``
    naming it when x holds a NaN or an infinity (checked in the packing pass)."""
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    out = np.empty((rows.shape[0], (d + 63) // 64), dtype=np.uint64)
    if _pack_rows(rows, out) and name is not None:
        raise HadrefError(f"{name}: expected finite values, found NaN or inf")
    return out.reshape(*x.shape[:-1], out.shape[1])


def _as_bits(bits, name: str, d: int) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.dtype != np.uint64:
        raise HadrefError(f"{name}: expected uint64 packed bits (hadref.pack_signs), "
                          f"got dtype {bits.dtype}")
    if bits.ndim < 2 or 0 in bits.shape:
        raise HadrefError(f"{name}: expected non-empty shape (..., n, words), got {bits.shape}")
    if bits.shape[-1] != (d + 63) // 64:
        raise HadrefError(f"{name}: expected {(d + 63) // 64} words per row for d = {d}, "
                          f"got {bits.shape[-1]}")
    return np.ascontiguousarray(bits)


def _check_d(d) -> int:
    if not is_int(d) or not 1 <= d <= _MAX_D:
        raise HadrefError(f"d: expected an integer in 1..{_MAX_D}, got {d!r}")
    return int(d)


def _kv_group(q_lead: tuple, k_lead: tuple, q_name: str = "q", k_name: str = "k") -> int:
    """Query heads per key head: 1 when the leading dims agree; h_q / h_kv when only axis
    -3 differs and h_q is a multiple of h_kv (grouped-query attention)."""
    if q_lead == k_lead:
        return 1
    if (len(q_lead) == len(k_lead) and len(q_lead) >= 1 and q_lead[:-1] == k_lead[:-1]
            and q_lead[-1] % k_lead[-1] == 0):
        return q_lead[-1] // k_lead[-1]
    raise HadrefError(f"{k_name}: expected leading dims {q_lead} (as {q_name}), or the same "
                      f"with a number of heads on axis -3 that divides {q_name}'s (grouped "
                      f"queries), got {k_lead}")


def _topn_groups(q_bits, k_bits, valid, n, d, top_n, causal, kv_group=1, ratio=0.0):
    """(G, m, W), (G / kv_group, >= n, W) packed -> indices (G, m, N) int32, levels,
    counts; N = top_n (fixed) or, with a ratio, the most a row keeps (``_top_n_cap``)."""
    groups, m, _ = q_bits.shape
    if ratio > 0.0:
        top_n = _top_n_cap(None, ratio, n)
    idx = np.full((groups, m, top_n), -1, dtype=np.int32)
    lev = np.full((groups, m, top_n), d + 1, dtype=np.int16)
    count = np.empty((groups, m), dtype=np.int32)
    _fused.topn_packed(q_bits, k_bits, valid, _valid_before(valid, n), n, d, top_n, ratio,
                       bool(causal), idx, lev, count,
                       *_ws.topn_workspace(groups * m, n, d, top_n), kv_group)
    return idx, lev, count


def _scores(idx: np.ndarray, lev: np.ndarray, d: int) -> np.ndarray:
    """Popcount levels of the selected keys -> int32 scores ``d - 2 * level``; ``-(d + 1)``
    where a row had fewer than N selectable keys (index -1)."""
    scores = d - 2 * lev.astype(np.int32)
    scores[idx < 0] = -(d + 1)
    return scores


def hamming_topn(q_bits, k_bits, d, top_n, key_mask=None, causal=False, top_n_ratio=None):
    """The top-N keys of each query by Hamming similarity of packed sign bits.

    q_bits: (..., m, W) uint64 and k_bits: (..., n, W) uint64 from :func:`pack_signs`
    (same leading dims, W = ceil(d / 64); or fewer heads on axis -3 for k_bits, h_q a
    multiple of h_kv: grouped queries, see the module docstring); d: the unpacked
    dimension; top_n: N >= 1 (or None with top_n_ratio); key_mask: bool broadcastable to
    k_bits' (..., n), True = valid key; causal: query i sees keys ``j <= i + n - m`` only;
    top_n_ratio: None, or a ratio in (0, 1] for N per row (module docstring).

    Returns ``(indices, scores)``, both (..., m, N) int32 (with a ratio N is the N of a row
    that sees all n keys, ``max(1, round(ratio * n))``): key indices by score descending
    (lower index first on ties) and their scores ``d - 2 * popcount(q XOR k)`` (the dot
    product of the +-1 sign vectors). Where a row keeps fewer than N keys, the tail holds
    index -1 and score ``-(d + 1)``.
    """
    d = _check_d(d)
    top_n, ratio = _n_rule(top_n, top_n_ratio)
    q_bits = _as_bits(q_bits, "q_bits", d)
    k_bits = _as_bits(k_bits, "k_bits", d)
    lead, k_lead = q_bits.shape[:-2], k_bits.shape[:-2]
    kv_group = _kv_group(lead, k_lead, "q_bits", "k_bits")
    m, n, words = q_bits.shape[-2], k_bits.shape[-2], q_bits.shape[-1]
    valid = _key_valid(key_mask, k_lead, n)
    idx, lev, _ = _topn_groups(q_bits.reshape(-1, m, words), k_bits.reshape(-1, n, words),
                               valid, n, d, top_n, causal, kv_group, ratio)
    width = idx.shape[-1]
    return idx.reshape(*lead, m, width), _scores(idx, lev, d).reshape(*lead, m, width)


def _check_qkv(q, k, v, finite_qk: bool = True):
    """finite_qk=False: q and k are checked for NaN/inf later, by ``_pack(x, name)``.
    Returns q, k, v and the query heads per key head (1 unless grouped)."""
    q = _as_float(q, "q", finite=finite_qk)
    k = _as_float(k, "k", finite=finite_qk)
    v = _as_float(v, "v")
    if v.shape[:-2] != k.shape[:-2]:
        raise HadrefError(f"v: expected leading dims {k.shape[:-2]} (as k), got shape "
                          f"{v.shape}")
    kv_group = _kv_group(q.shape[:-2], k.shape[:-2])
    if q.shape[-1] != k.shape[-1]:
        raise HadrefError(f"k: expected head size d = {q.shape[-1]} (as q), got {k.shape[-1]}")
    if v.shape[-2] != k.shape[-2]:
        raise HadrefError(f"v: expected n = {k.shape[-2]} rows (as k), got {v.shape[-2]}")
    return q, k, v, kv_group


_ROW_KERNEL_GROUP = 32  # the row kernel: query rows that share one pass over V in blocks
_BLOCK_BYTES = 128 * 1024  # a block of V that stays in a core's L2 cache (row kernel)
# From this many query rows on, the tile kernel: a tile of 32 lanes costs about as much
# for 1 row as for 32, so decoding a few tokens keeps the row kernel.
_TILE_MIN_ROWS = 16
# Tile kernel: levels in 8 bits up to this d (d + 1, the level of a padding key, must fit)
_LEVELS8_MAX_D = 254
# The tile kernel's ``stop_after`` code for each ``stop_after`` word of ``_attend``
_STOP_AFTER = {None: _tile.RUN_ALL, "levels": _tile.STOP_LEVELS, "select": _tile.STOP_SELECT}


def _attend(q_bits, k_bits, v, valid, n, d, top_n, two_scale, causal, stop_after=None,
            kv_group=1, ratio=0.0):
    """Packed (G, m, W), (G / kv_group, >= n, W), v (G / kv_group, >= n, dv) -> (G, m, dv),
    a fused kernel (kv_group: query heads per key head). ratio 0.0: every row keeps
    min(top_n, its selectable keys); a ratio in (0, 1]: N per row (top_n is then not read).

    stop_after (the benchmark's split of the tile kernel, which it forces for any m):
    None runs the whole attention; "levels" stops after the popcount levels, "select"
    after the top-N selection, and the output is then not written."""
    if stop_after not in _STOP_AFTER:
        raise ValueError(f"stop_after: expected one of {sorted(map(str, _STOP_AFTER))}, "
                         f"got {stop_after!r}")
    groups, m, _ = q_bits.shape
    dv = v.shape[2]
    top_n = _top_n_cap(top_n, ratio, n)
    out = np.empty((groups, m, dv), dtype=v.dtype)
    valid_before = _valid_before(valid, n)
    if m >= _TILE_MIN_ROWS or stop_after is not None:
        lev_type = np.uint8 if d <= _LEVELS8_MAX_D else np.uint16
        ws = _ws.tile_workspace(groups, m, n, d, dv, v.dtype, lev_type)
        _fused.attend_tiles(q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio,
                            two_scale, bool(causal), _STOP_AFTER[stop_after], out, *ws,
                            kv_group=kv_group)
        return out
    block = max(8, _BLOCK_BYTES // (dv * v.itemsize))
    ws = _ws.row_workspace(groups, m, n, d, dv, top_n, v.dtype, _ROW_KERNEL_GROUP)
    _fused.attend_rows(q_bits, k_bits, v, valid, valid_before, n, d, top_n, ratio,
                       two_scale, bool(causal), out, block, *ws, kv_group=kv_group)
    return out


def had_attention(q, k, v, top_n, sigma_q=1.0, sigma_k=1.0, key_mask=None, causal=False,
                  top_n_ratio=None):
    """HAD attention: binarized queries and keys, top-N, sparse softmax and value sum.

    q: (..., m, d), k: (..., n, d), v: (..., n, dv), float32 (float64 accepted; the output
    takes v's dtype), finite, same leading dims, except that k and v may have fewer heads
    (axis -3) than q when h_q is a multiple of h_kv (grouped queries: query head j reads
    key head j // (h_q / h_kv); keys packed once per key head). top_n: N >= 1 (N > n means
    all keys), or None with top_n_ratio: a ratio in (0, 1], N per row (each row keeps
    ``min(seen, max(1, round(ratio * seen)))`` of the ``seen`` keys it may select; see
    the module docstring).
    sigma_q, sigma_k: the layer's standardization coefficients (> 0); only their product
    matters here, as the logit scale ``sigma_q * sigma_k / sqrt(d)``. key_mask: bool
    broadcastable to k's (..., n), True = valid key. causal: query i sees keys
    ``j <= i + n - m``.

    Returns (..., m, dv): ``softmax(topN(S) / sqrt(d)) V`` with
    ``S = (sigma_q sign(q)) (sigma_k sign(k))^T``, computed on packed bits by a fused
    kernel: from 16 query rows on, tiles of 32 rows share every pass over the packed keys
    and over V (in 64-key blocks that stay in L1); fewer rows go one at a time. No (m, n)
    matrix: extra memory about 4 * threads * 32 n bytes (the 8-bit levels of a tile; 64 n
    for d > 254).
    """
    top_n, ratio = _n_rule(top_n, top_n_ratio)
    sigma_q = check_positive(sigma_q, "sigma_q")
    sigma_k = check_positive(sigma_k, "sigma_k")
    q, k, v, kv_group = _check_qkv(q, k, v, finite_qk=False)
    lead, (m, d), (n, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    _check_d(d)
    valid = _key_valid(key_mask, k.shape[:-2], n)
    q_bits = _pack(q, "q").reshape(-1, m, (d + 63) // 64)  # NaN/inf checked while packing
    k_bits = _pack(k, "k").reshape(-1, n, (d + 63) // 64)
    out = _attend(q_bits, k_bits, v.reshape(-1, n, dv), valid, n, d, top_n,
                  _two_scale(sigma_q, sigma_k, d), causal, kv_group=kv_group, ratio=ratio)
    return out.reshape(*lead, m, dv)


def float_attention(q, k, v, key_mask=None, causal=False):
    """Dense float attention ``softmax(Q K^T / sqrt(d)) V`` (NumPy/BLAS), the reference.

    Shapes (grouped queries too: keys and values repeated per query head here), dtypes,
    key_mask and causal as :func:`had_attention`. One (m, n) score matrix per (batch, head)
    at a time, softmax in place (max-subtracted): extra memory m*n floats. A row without
    any valid key outputs zeros.
    """
    q, k, v, kv_group = _check_qkv(q, k, v)
    lead, (m, d), (n, dv) = q.shape[:-2], q.shape[-2:], v.shape[-2:]
    valid = _key_valid(key_mask, k.shape[:-2], n)
    if kv_group > 1:  # the reference repeats keys, values and masks per query head
        k, v = np.repeat(k, kv_group, axis=-3), np.repeat(v, kv_group, axis=-3)
        valid = np.repeat(valid, kv_group, axis=0)
    dtype = np.result_type(q, k, v)
    qf, kf, vf = q.reshape(-1, m, d), k.reshape(-1, n, d), v.reshape(-1, n, dv)
    out = np.empty((qf.shape[0], m, dv), dtype=dtype)
    inv_sqrt_d = dtype.type(1.0 / math.sqrt(d))
    allowed = None
    if causal:
        allowed = np.arange(n)[None, :] <= (np.arange(m)[:, None] + (n - m))
    s = np.empty((m, n), dtype=dtype)  # one score matrix, reused for every (batch, head)
    for g in range(qf.shape[0]):
        np.matmul(qf[g], kf[g].T, out=s)
        s *= inv_sqrt_d
        keep = valid[g][None, :] if allowed is None else (allowed & valid[g][None, :])
        if not (allowed is None and valid[g].all()):
            np.copyto(s, -np.inf, where=~keep)
        row_max = s.max(axis=1, keepdims=True)
        empty = ~np.isfinite(row_max)
        row_max[empty] = 0.0
        s -= row_max
        np.exp(s, out=s)
        total = s.sum(axis=1, keepdims=True)
        total[empty] = 1.0
        s /= total
        np.matmul(s, vf[g], out=out[g])
    return out.reshape(*lead, m, dv)

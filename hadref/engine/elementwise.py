"""Numba-fused elementwise kernels of the engine (one pass over memory each).

LayerNorm, exact (erf) GELU, masked softmax, their backwards, dropout, the embedding
gather and scatter-add, and the Adam update. Every kernel works on plain, C-contiguous
NumPy arrays and writes into arrays the caller allocates.

Two precisions. float64 (gradient checks) runs the exact formulas with libm's erf/exp.
float32 (training and inference) runs SIMD-friendly versions of the transcendental
kernels: a rational erf (max abs error 5e-7) and a Cephes-style exp (max relative error
1e-7), both within a few float32 ulps. The wrappers ``gelu_forward``, ``gelu_backward``,
``masked_softmax`` and ``softmax_backward`` pick the version from the dtype. Every kernel
is tested against its plain NumPy formula (tests/test_engine_fused.py).

Choices that make the loops vectorize:
- ``error_model="numpy"``: Python's error model puts a zero-division branch in every
  division, which keeps LLVM from vectorizing the loop.
- row sums are reassociated (``_SUMS``: no ``nnan``/``ninf``, so tests against -inf keep
  their meaning); the float32 softmax runs with full fastmath and never meets inf or NaN.
- single-threaded on purpose: these loops run near memory speed; the engine's parallelism
  is BLAS's, and on shared cores OpenMP-parallel versions lose to serial ones (threads
  spinning at barriers while other processes hold the cores).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SUMS = {"reassoc", "contract", "nsz", "arcp"}
_F32 = np.float32
_LOWEST_F32 = np.float32(-3.4e38)  # finite "minus infinity" for the fastmath softmax


# --- LayerNorm over the last axis -------------------------------------------------------

@njit(cache=True, error_model="numpy", fastmath=_SUMS)
def layernorm_forward(x, gamma, beta, eps, out, mean, rstd):
    """x (N, H) -> out (N, H) = (x - mean) * rstd * gamma + beta; fills mean, rstd (N,).

    Mean and variance (two-pass) are accumulated in float64."""
    n, h = x.shape
    for i in range(n):
        s = 0.0
        for j in range(h):
            s += x[i, j]
        m = s / h
        var = 0.0
        for j in range(h):
            dev = x[i, j] - m
            var += dev * dev
        r = 1.0 / math.sqrt(var / h + eps)
        mean[i] = m
        rstd[i] = r
        for j in range(h):
            out[i, j] = (x[i, j] - m) * r * gamma[j] + beta[j]


@njit(cache=True, error_model="numpy", fastmath=_SUMS)
def layernorm_backward(dout, x, mean, rstd, gamma, dx, dgamma, dbeta):
    """dx (N, H); adds sum_rows dout * xhat into dgamma and sum_rows dout into dbeta ((H,)
    float64, zeroed by the caller)."""
    n, h = x.shape
    for i in range(n):
        m = mean[i]
        r = rstd[i]
        a = 0.0  # mean of dout * gamma
        b = 0.0  # mean of dout * gamma * xhat
        for j in range(h):
            xhat = (x[i, j] - m) * r
            g = dout[i, j] * gamma[j]
            a += g
            b += g * xhat
            dgamma[j] += dout[i, j] * xhat
            dbeta[j] += dout[i, j]
        a /= h
        b /= h
        for j in range(h):
            xhat = (x[i, j] - m) * r
            dx[i, j] = r * (dout[i, j] * gamma[j] - a - xhat * b)


# --- float32 transcendental helpers ---------------------------------------------------------

@intrinsic
def _pow2_f32(typingctx, n):
    """2.0**n as float32 for a float32 n holding an integer in [-126, 127]: the IEEE
    exponent field (n + 127) << 23, bit-cast (exact; no libm call, SIMD-friendly)."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        k = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(k, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@njit(cache=True, inline="always", error_model="numpy")
def _erf_f32(x):
    """erf(x) for float32 x: odd rational approximation on [-4, 4] (|error| < 5e-7)."""
    x = min(max(x, _F32(-4.0)), _F32(4.0))
    x2 = x * x
    p = x2 * _F32(-2.72614225801306e-10) + _F32(2.77068142495902e-08)
    p = x2 * p + _F32(-2.10102402082508e-06)
    p = x2 * p + _F32(-5.69250639462346e-05)
    p = x2 * p + _F32(-7.34990630326855e-04)
    p = x2 * p + _F32(-2.95459980854025e-03)
    p = x2 * p + _F32(-1.60960333262415e-02)
    q = x2 * _F32(-1.45660718464996e-05) + _F32(-2.13374055278905e-04)
    q = x2 * q + _F32(-1.68282697438203e-03)
    q = x2 * q + _F32(-7.37332916720468e-03)
    q = x2 * q + _F32(-1.42647390514189e-02)
    return x * p / q


@njit(cache=True, inline="always", error_model="numpy")
def _exp_nonpos_f32(y):
    """exp(y) for float32 y <= 0 (Cephes expf; relative error < 1e-7 down to y = -87,
    below which it returns exp(-87) ~ 1.6e-38): y = n ln2 + r, exp(r) by polynomial,
    2^n from its exponent bits. Inlined, it vectorizes (libm's expf does not)."""
    y = max(y, _F32(-87.0))
    n = _F32(np.int32(y * _F32(1.4426950408889634) + _F32(128.5))) - _F32(128.0)
    r = y - n * _F32(0.693359375) - n * _F32(-2.12194440e-4)
    p = _F32(1.9875691500e-4) * r + _F32(1.3981999507e-3)
    p = p * r + _F32(8.3334519073e-3)
    p = p * r + _F32(4.1665795894e-2)
    p = p * r + _F32(1.6666665459e-1)
    p = p * r + _F32(5.0000001201e-1)
    e = p * (r * r) + r + _F32(1.0)
    return e * _pow2_f32(n)


# --- exact GELU -------------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _gelu_forward_exact(x, out):
    for i in range(x.size):
        xi = x[i]
        out[i] = 0.5 * xi * (1.0 + math.erf(xi * _INV_SQRT2))


@njit(cache=True, error_model="numpy")
def _gelu_backward_exact(dout, x, dx):
    for i in range(x.size):
        xi = x[i]
        cdf = 0.5 * (1.0 + math.erf(xi * _INV_SQRT2))
        pdf = math.exp(-0.5 * xi * xi) * _INV_SQRT_2PI
        dx[i] = dout[i] * (cdf + xi * pdf)


@njit(cache=True, error_model="numpy")
def _gelu_forward_f32(x, out):
    for i in range(x.size):
        xi = x[i]
        out[i] = _F32(0.5) * xi * (_F32(1.0) + _erf_f32(xi * _F32(_INV_SQRT2)))


@njit(cache=True, error_model="numpy")
def _gelu_backward_f32(dout, x, dx):
    for i in range(x.size):
        xi = x[i]
        cdf = _F32(0.5) * (_F32(1.0) + _erf_f32(xi * _F32(_INV_SQRT2)))
        pdf = _exp_nonpos_f32(_F32(-0.5) * xi * xi) * _F32(_INV_SQRT_2PI)
        dx[i] = dout[i] * (cdf + xi * pdf)


def gelu_forward(x, out):
    """out = 0.5 x (1 + erf(x / sqrt 2)) over flat arrays x, out (same dtype)."""
    (_gelu_forward_f32 if x.dtype == np.float32 else _gelu_forward_exact)(x, out)


def gelu_backward(dout, x, dx):
    """dx = dout * (Phi(x) + x phi(x)) over flat arrays."""
    (_gelu_backward_f32 if x.dtype == np.float32 else _gelu_backward_exact)(dout, x, dx)


# --- softmax over keys with a padding mask ----------------------------------------------

@njit(cache=True, error_model="numpy")
def _masked_softmax_exact(scores, key_mask, out):
    nb, nh, nt, ns = scores.shape
    for b in range(nb):
        for hh in range(nh):
            for i in range(nt):
                row_max = -np.inf
                for j in range(ns):
                    if key_mask[b, j] and scores[b, hh, i, j] > row_max:
                        row_max = scores[b, hh, i, j]
                if row_max == -np.inf:
                    for j in range(ns):
                        out[b, hh, i, j] = 0.0
                    continue
                total = 0.0
                for j in range(ns):
                    if key_mask[b, j]:
                        e = math.exp(scores[b, hh, i, j] - row_max)
                        out[b, hh, i, j] = e
                        total += e
                    else:
                        out[b, hh, i, j] = 0.0
                inv = 1.0 / total
                for j in range(ns):
                    out[b, hh, i, j] *= inv


@njit(inline="always", error_model="numpy", fastmath=True)
def _masked_exp_row_f32(row, keep, keep_f, dst):
    """dst[j] = exp(row[j] - max over valid j) on valid keys, 0 elsewhere; returns the sum.

    The unnormalized half of a masked softmax row, shared by the plain and the dropout
    kernels (inlined into both, so each still vectorizes as one loop nest)."""
    row_max = _LOWEST_F32
    for j in range(row.size):
        row_max = max(row_max, row[j] if keep[j] else _LOWEST_F32)
    total = _F32(0.0)
    for j in range(row.size):
        e = _exp_nonpos_f32(min(row[j] - row_max, _F32(0.0))) * keep_f[j]
        dst[j] = e
        total += e
    return total


@njit(inline="always", error_model="numpy")
def _key_weights_f32(keep, keep_f):
    """keep_f[j] = 1.0 where key j is valid, else 0.0 (a multiplier for the exp row);
    returns the number of valid keys."""
    n_valid = 0
    for j in range(keep.shape[0]):
        keep_f[j] = _F32(1.0) if keep[j] else _F32(0.0)
        n_valid += 1 if keep[j] else 0
    return n_valid


@njit(cache=True, error_model="numpy", fastmath=True)
def _masked_softmax_f32(scores, key_mask, out):
    # Full fastmath is safe here: for finite scores no inf or NaN is ever formed (masked
    # keys use a finite sentinel, exp arguments are clamped to <= 0, and rows without a
    # valid key are decided before any arithmetic).
    nb, nh, nt, ns = scores.shape
    keep_f = np.empty(ns, dtype=np.float32)
    for b in range(nb):
        keep = key_mask[b]
        n_valid = _key_weights_f32(keep, keep_f)
        for hh in range(nh):
            for i in range(nt):
                row = scores[b, hh, i]
                dst = out[b, hh, i]
                if n_valid == 0:
                    dst[:] = 0.0
                    continue
                inv = _F32(1.0) / _masked_exp_row_f32(row, keep, keep_f, dst)
                for j in range(ns):
                    dst[j] *= inv


@njit(cache=True, error_model="numpy", fastmath=_SUMS)
def _softmax_backward_any(probs, dprobs, dscores):
    # The row of dprobs goes through a scratch row: in place (dscores is dprobs) a loop
    # that reads dp[j] and writes ds[j] fails LLVM's runtime overlap check and runs scalar.
    nb, nh, nt, ns = probs.shape
    g = np.empty(ns, dtype=dprobs.dtype)
    for b in range(nb):
        for hh in range(nh):
            for i in range(nt):
                p = probs[b, hh, i]
                dp = dprobs[b, hh, i]
                ds = dscores[b, hh, i]
                dot = 0.0
                for j in range(ns):
                    g[j] = dp[j]
                    dot += p[j] * dp[j]
                for j in range(ns):
                    ds[j] = p[j] * (g[j] - dot)


# --- causal softmax (decoder attention, rows of grouped query heads) -------------------------

@njit(cache=True, error_model="numpy")
def _causal_softmax_exact(scores, key_mask, first_pos, rows_per_group):
    nb, nh, nr, nk = scores.shape
    for b in range(nb):
        for hh in range(nh):
            for r in range(nr):
                row = scores[b, hh, r]
                last = min(first_pos + r % rows_per_group + 1, nk)
                row_max = -np.inf
                for j in range(last):
                    if key_mask[b, j] and row[j] > row_max:
                        row_max = row[j]
                total = 0.0
                for j in range(last):
                    if key_mask[b, j] and row_max > -np.inf:
                        e = math.exp(row[j] - row_max)
                        row[j] = e
                        total += e
                    else:
                        row[j] = 0.0
                for j in range(last, nk):
                    row[j] = 0.0
                if total > 0.0:
                    inv = 1.0 / total
                    for j in range(last):
                        row[j] *= inv


@njit(cache=True, error_model="numpy", fastmath=True)
def _causal_softmax_f32(scores, key_mask, first_pos, rows_per_group):
    # fastmath as in _masked_softmax_f32: finite sentinel, clamped exp arguments, rows
    # without a valid key decided before any arithmetic. The exp row goes to a scratch row
    # (in place, LLVM's overlap check would keep the loop scalar).
    nb, nh, nr, nk = scores.shape
    keep_f = np.empty(nk, dtype=np.float32)
    tmp = np.empty(nk, dtype=np.float32)
    valid_upto = np.empty(nk + 1, dtype=np.int64)  # valid keys among the first j
    for b in range(nb):
        keep = key_mask[b, :nk]
        _key_weights_f32(keep, keep_f)
        valid_upto[0] = 0
        for j in range(nk):
            valid_upto[j + 1] = valid_upto[j] + (1 if keep[j] else 0)
        for hh in range(nh):
            for r in range(nr):
                row = scores[b, hh, r]
                last = min(first_pos + r % rows_per_group + 1, nk)
                if valid_upto[last] == 0:
                    row[:] = 0.0
                    continue
                inv = _F32(1.0) / _masked_exp_row_f32(row[:last], keep[:last], keep_f[:last],
                                                      tmp[:last])
                for j in range(last):
                    row[j] = tmp[j] * inv
                for j in range(last, nk):
                    row[j] = 0.0


def causal_softmax(scores, key_mask, first_pos, rows_per_group):
    """In place: scores (B, h, R, K) -> causal probabilities over keys.

    Row r is query position first_pos + r % rows_per_group (grouped query heads stacked
    along the rows); it attends keys j <= that position with key_mask[b, j] (key_mask
    (B, >= K) bool). Other keys get exactly 0; a row without a valid key is all zeros.
    """
    (_causal_softmax_f32 if scores.dtype == np.float32 else _causal_softmax_exact)(
        scores, key_mask, int(first_pos), int(rows_per_group))


def masked_softmax(scores, key_mask, out):
    """scores (B, h, T, S), key_mask (B, S) bool -> out (B, h, T, S) probabilities.

    Padding keys get exactly 0; a row without a valid key is all zeros (never NaN).
    """
    (_masked_softmax_f32 if scores.dtype == np.float32 else _masked_softmax_exact)(
        scores, key_mask, out)


def softmax_backward(probs, dprobs, dscores):
    """dscores = probs * (dprobs - sum_j probs * dprobs) over the last axis (4-D arrays);
    dscores may be dprobs itself (in place). The row dot is accumulated in float64."""
    _softmax_backward_any(probs, dprobs, dscores)


# --- dropout ------------------------------------------------------------------------------

@intrinsic
def _hash16(typingctx, counter, key1, key2):
    """16 random bits for element `counter` under the keys (key1, key2): two rounds of the
    lowbias32 integer hash (C. Wellons), h = H(H(counter + key1) + key2), in 32-bit lanes
    so that the loop vectorizes. Counter-based: the same (counter, keys) always give the
    same bits, so backward recomputes the forward's mask instead of storing it."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)

        def lowbias32(h):
            h = builder.xor(h, builder.lshr(h, ir.Constant(i32, 16)))
            h = builder.mul(h, ir.Constant(i32, 0x7FEB352D))
            h = builder.xor(h, builder.lshr(h, ir.Constant(i32, 15)))
            h = builder.mul(h, ir.Constant(i32, 0x846CA68B))
            return builder.xor(h, builder.lshr(h, ir.Constant(i32, 16)))

        c, k1, k2 = (builder.trunc(a, i32) for a in args)
        h = lowbias32(builder.add(c, k1))
        h = lowbias32(builder.add(h, k2))
        return builder.trunc(builder.lshr(h, ir.Constant(i32, 16)), ir.IntType(16))

    return types.uint16(types.int64, types.int64, types.int64), codegen


@njit(cache=True, error_model="numpy")
def dropout_apply(x, key1, key2, threshold, scale, out):
    """out[i] = x[i] * scale if bits(i) >= threshold else 0, over flat arrays, where
    bits(i) = _hash16(i, key1, key2) (uint16). Forward and backward call it with the same
    keys, so they see the same mask."""
    zero = x.dtype.type(0.0)
    for i in range(x.size):
        out[i] = x[i] * scale if _hash16(i, key1, key2) >= threshold else zero


@njit(cache=True, error_model="numpy")
def dropout_bits(n, key1, key2, bits):
    """bits[i] = _hash16(i, key1, key2) for i < n (the mask dropout_apply uses; tests)."""
    for i in range(n):
        bits[i] = _hash16(i, key1, key2)



@njit(cache=True, error_model="numpy", fastmath=True)
def _softmax_dropout_f32(scores, key_mask, key1, key2, threshold, scale, probs, used):
    # _masked_softmax_f32 with the dropout of dropout_apply(probs.ravel(), key1, key2, ...)
    # (same flat element index) applied while each row is still in cache. `used` may be
    # `scores` itself: a row of scores is read in full before its row of used is written.
    nb, nh, nt, ns = scores.shape
    keep_f = np.empty(ns, dtype=np.float32)
    zero = _F32(0.0)
    for b in range(nb):
        keep = key_mask[b]
        n_valid = _key_weights_f32(keep, keep_f)
        for hh in range(nh):
            for i in range(nt):
                row = scores[b, hh, i]
                dst = probs[b, hh, i]
                u = used[b, hh, i]
                if n_valid == 0:
                    dst[:] = 0.0
                    u[:] = 0.0
                    continue
                inv = _F32(1.0) / _masked_exp_row_f32(row, keep, keep_f, dst)
                for j in range(ns):
                    dst[j] *= inv
                # a second loop over the stored probabilities: u is then exactly
                # dropout_apply(probs) (fastmath may not fold inv * scale into one factor),
                # which the attention backward recomputes instead of keeping u
                base = ((b * nh + hh) * nt + i) * ns
                for j in range(ns):
                    u[j] = dst[j] * scale if _hash16(base + j, key1, key2) >= threshold else zero


@njit(cache=True, error_model="numpy")
def _dropout_rows(x, key1, key2, threshold, scale, first_row, rows_total, out):
    # dropout_apply over rows first_row.. of a (B, h, rows_total, S) array, given only those
    # rows x (B, h, t, S): each element keeps the flat index it has in the whole array
    nb, nh, nt, ns = x.shape
    zero = x.dtype.type(0.0)
    for b in range(nb):
        for hh in range(nh):
            for i in range(nt):
                base = ((b * nh + hh) * rows_total + first_row + i) * ns
                for j in range(ns):
                    xj = x[b, hh, i, j]
                    out[b, hh, i, j] = xj * scale if _hash16(base + j, key1, key2) >= threshold else zero


def dropout_rows(x, key1, key2, threshold, scale, first_row, rows_total, out):
    """out = x * keep * scale for x the rows first_row..first_row + t of a (B, h,
    rows_total, S) array under the flat-index mask of ``dropout_apply(whole.ravel(), ...)``
    (x, out (B, h, t, S))."""
    _dropout_rows(x, key1, key2, threshold, scale, first_row, rows_total, out)


@njit(cache=True, error_model="numpy", fastmath=_SUMS)
def _dropout_softmax_backward_any(probs, dused, key1, key2, threshold, scale, first_row,
                                  rows_total, dscores):
    # dropped gradients go to a scratch row, not to ds: in place (dscores is dused) the
    # first loop would read du[j] and write ds[j] and run scalar (see _softmax_backward_any)
    nb, nh, nt, ns = probs.shape
    zero = dused.dtype.type(0.0)
    g = np.empty(ns, dtype=dused.dtype)
    for b in range(nb):
        for hh in range(nh):
            for i in range(nt):
                base = ((b * nh + hh) * rows_total + first_row + i) * ns
                p = probs[b, hh, i]
                du = dused[b, hh, i]
                ds = dscores[b, hh, i]
                dot = 0.0
                for j in range(ns):
                    gj = du[j] * scale if _hash16(base + j, key1, key2) >= threshold else zero
                    g[j] = gj
                    dot += p[j] * gj
                for j in range(ns):
                    ds[j] = p[j] * (g[j] - dot)


def masked_softmax_dropout(scores, key_mask, key1, key2, threshold, scale, probs, used):
    """probs = masked_softmax(scores); used = probs * keep * scale with the mask of
    ``dropout_apply(probs.ravel(), key1, key2, threshold, scale, ...)`` (4-D arrays; scale
    in the arrays' dtype), bit for bit. One pass for float32. used may be scores itself
    (the scores are then overwritten)."""
    if scores.dtype == np.float32:
        _softmax_dropout_f32(scores, key_mask, key1, key2, threshold, scale, probs, used)
    else:
        _masked_softmax_exact(scores, key_mask, probs)
        dropout_apply(probs.reshape(-1), key1, key2, threshold, scale, used.reshape(-1))


def dropout_softmax_backward(probs, dused, key1, key2, threshold, scale, dscores,
                             first_row=0, rows_total=None):
    """dscores = softmax_backward(probs, dropout_backward(dused)) in one pass (4-D arrays);
    dscores may be dused itself. With first_row / rows_total the arrays hold only the rows
    first_row.. of (B, h, rows_total, S) ones, under that whole array's mask."""
    if rows_total is None:
        rows_total = probs.shape[2]
    _dropout_softmax_backward_any(probs, dused, key1, key2, threshold, scale, first_row,
                                  rows_total, dscores)

# --- embeddings ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def embedding_sum(input_ids, token_type_ids, word, position, token_type, out):
    """input_ids, token_type_ids (B, T) int64 -> out (B, T, H) = word + position + type."""
    nb, nt = input_ids.shape
    h = word.shape[1]
    for b in range(nb):
        for t in range(nt):
            wi = input_ids[b, t]
            ti = token_type_ids[b, t]
            for j in range(h):
                out[b, t, j] = word[wi, j] + position[t, j] + token_type[ti, j]


@njit(cache=True, error_model="numpy")
def scatter_add_rows(ids, rows, table):
    """table[ids[n]] += rows[n] for flat ids (N,) and rows (N, H) (repeated ids add up)."""
    h = rows.shape[1]
    for n in range(ids.shape[0]):
        r = ids[n]
        for j in range(h):
            table[r, j] += rows[n, j]


# --- optimizer ------------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    """One Adam(W) step on flat arrays, in place (arithmetic in float64).

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - lr * (wd * p + (m / bias1) / (sqrt(v / bias2) + eps))   (decoupled decay).
    """
    for i in range(param.size):
        g = np.float64(grad[i])
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        p = param[i]
        param[i] = p - lr * (weight_decay * p + (mi / bias1) / (math.sqrt(vi / bias2) + eps))


@njit(cache=True, error_model="numpy", fastmath=_SUMS)
def sum_of_squares(x):
    """sum(x**2) of a flat array, accumulated in float64."""
    total = 0.0
    for i in range(x.size):
        xi = np.float64(x[i])
        total += xi * xi
    return total

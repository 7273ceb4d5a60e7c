"""Numba-fused elementwise kernels of the engine (one pass over memory each).

LayerNorm, exact (erf) GELU, masked softmax, their backwards, the embedding gather and
scatter-add, and the Adam update. Every kernel works on plain, C-contiguous NumPy arrays
(float32, or float64 for gradient checks: Numba compiles one version per dtype) and writes
into arrays the caller allocates. Sums are accumulated in float64. No fastmath: these
kernels must agree with the plain NumPy formulas (tests/test_engine_fused.py).
"""

import math

import numpy as np
from numba import njit, prange

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_LN_BWD_CHUNKS = 16  # row chunks with their own dgamma/dbeta partial sums (no write races)


# --- LayerNorm over the last axis -------------------------------------------------------

@njit(cache=True, parallel=True)
def layernorm_forward(x, gamma, beta, eps, out, mean, rstd):
    """x (N, H) -> out (N, H) = (x - mean) * rstd * gamma + beta; fills mean, rstd (N,)."""
    n, h = x.shape
    for i in prange(n):
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


@njit(cache=True, parallel=True)
def layernorm_backward(dout, x, mean, rstd, gamma, dx, dgamma_parts, dbeta_parts):
    """dx (N, H); dgamma_parts, dbeta_parts (chunks, H) float64 partial sums (sum them)."""
    n, h = x.shape
    chunks = dgamma_parts.shape[0]
    per = (n + chunks - 1) // chunks
    for c in prange(chunks):
        for i in range(c * per, min(n, (c + 1) * per)):
            m = mean[i]
            r = rstd[i]
            a = 0.0  # mean of dout * gamma
            b = 0.0  # mean of dout * gamma * xhat
            for j in range(h):
                xhat = (x[i, j] - m) * r
                g = dout[i, j] * gamma[j]
                a += g
                b += g * xhat
                dgamma_parts[c, j] += dout[i, j] * xhat
                dbeta_parts[c, j] += dout[i, j]
            a /= h
            b /= h
            for j in range(h):
                xhat = (x[i, j] - m) * r
                dx[i, j] = r * (dout[i, j] * gamma[j] - a - xhat * b)


# --- exact GELU ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def gelu_forward(x, out):
    """out = 0.5 x (1 + erf(x / sqrt 2)), elementwise over flat arrays."""
    for i in prange(x.size):
        xi = x[i]
        out[i] = 0.5 * xi * (1.0 + math.erf(xi * _INV_SQRT2))


@njit(cache=True, parallel=True)
def gelu_backward(dout, x, dx):
    """dx = dout * (Phi(x) + x phi(x)), elementwise over flat arrays."""
    for i in prange(x.size):
        xi = x[i]
        cdf = 0.5 * (1.0 + math.erf(xi * _INV_SQRT2))
        pdf = math.exp(-0.5 * xi * xi) * _INV_SQRT_2PI
        dx[i] = dout[i] * (cdf + xi * pdf)


# --- softmax over keys with a padding mask ----------------------------------------------

@njit(cache=True, parallel=True)
def masked_softmax(scores, key_mask, out):
    """scores (B, h, T, S), key_mask (B, S) bool -> out (B, h, T, S) probabilities.

    Padding keys get exactly 0; a row without a valid key is all zeros (never NaN).
    """
    nb, nh, nt, ns = scores.shape
    for bh in prange(nb * nh):
        b = bh // nh
        hh = bh % nh
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


@njit(cache=True, parallel=True)
def softmax_backward(probs, dprobs, dscores):
    """dscores = probs * (dprobs - sum_j probs * dprobs), rows over the last axis (4-D)."""
    nb, nh, nt, ns = probs.shape
    for bh in prange(nb * nh):
        b = bh // nh
        hh = bh % nh
        for i in range(nt):
            dot = 0.0
            for j in range(ns):
                dot += probs[b, hh, i, j] * dprobs[b, hh, i, j]
            for j in range(ns):
                dscores[b, hh, i, j] = probs[b, hh, i, j] * (dprobs[b, hh, i, j] - dot)


# --- embeddings ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def embedding_sum(input_ids, token_type_ids, word, position, token_type, out):
    """input_ids, token_type_ids (B, T) int64 -> out (B, T, H) = word + position + type."""
    nb, nt = input_ids.shape
    h = word.shape[1]
    for n in prange(nb * nt):
        b = n // nt
        t = n % nt
        wi = input_ids[b, t]
        ti = token_type_ids[b, t]
        for j in range(h):
            out[b, t, j] = word[wi, j] + position[t, j] + token_type[ti, j]


@njit(cache=True)
def scatter_add_rows(ids, rows, table):
    """table[ids[n]] += rows[n] for flat ids (N,) and rows (N, H); sequential (repeats)."""
    h = rows.shape[1]
    for n in range(ids.shape[0]):
        r = ids[n]
        for j in range(h):
            table[r, j] += rows[n, j]


# --- optimizer ------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    """One Adam(W) step on flat arrays, in place.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - lr * (wd * p + (m / bias1) / (sqrt(v / bias2) + eps))   (decoupled decay).
    """
    for i in prange(param.size):
        g = grad[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        p = param[i]
        param[i] = p - lr * (weight_decay * p + (mi / bias1) / (math.sqrt(vi / bias2) + eps))


@njit(cache=True, parallel=True)
def sum_of_squares(x):
    """sum(x**2) of a flat array, accumulated in float64."""
    total = 0.0
    for i in prange(x.size):
        total += np.float64(x[i]) * x[i]
    return total

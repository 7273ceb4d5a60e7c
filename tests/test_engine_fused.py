"""The Numba kernels of hadref.engine.elementwise against plain NumPy formulas: exact kernels to
float64 rounding, the float32 SIMD versions (rational erf, Cephes exp, fastmath softmax)
to a few float32 ulps, over hypothesis-drawn shapes, masks and magnitudes."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import erf as scipy_erf

from hadref.engine import elementwise

seeds = st.integers(0, 2**31 - 1)


def ref_softmax(scores, key_mask):
    valid = key_mask[:, None, None, :]
    s = np.where(valid, scores.astype(np.float64), -np.inf)
    m = s.max(-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.where(valid, np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    t = e.sum(-1, keepdims=True)
    return e / np.where(t > 0, t, 1.0)


@st.composite
def attention_scores(draw):
    nb, nh = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    nt, ns = draw(st.integers(1, 7)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(seeds))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 300.0]))
    scores = rng.standard_normal((nb, nh, nt, ns)) * scale
    if draw(st.booleans()):  # ties: few distinct values
        scores = np.round(scores / scale) * scale
    mask = rng.random((nb, ns)) < draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return scores, mask


@given(attention_scores())
def test_masked_softmax_both_precisions(case):
    scores, mask = case
    ref = ref_softmax(scores, mask)
    out64 = np.empty_like(scores)
    elementwise.masked_softmax(scores, mask, out64)
    np.testing.assert_allclose(out64, ref, rtol=1e-13, atol=1e-16)
    s32 = scores.astype(np.float32)
    out32 = np.empty_like(s32)
    elementwise.masked_softmax(s32, mask, out32)
    np.testing.assert_allclose(out32, ref_softmax(s32, mask), rtol=2e-6, atol=2e-7)
    for out in (out64, out32):
        assert (out[np.broadcast_to(~mask[:, None, None, :], out.shape)] == 0).all()
        rows = out.sum(-1)
        has_key = np.broadcast_to(mask.any(-1)[:, None, None], rows.shape)
        np.testing.assert_allclose(rows[has_key], 1.0, rtol=1e-5)
        assert (rows[~has_key] == 0).all() and np.isfinite(out).all()


@given(attention_scores())
def test_softmax_backward_in_place(case):
    scores, mask = case
    rng = np.random.default_rng(0)
    probs = ref_softmax(scores, mask)
    dprobs = rng.standard_normal(probs.shape)
    ref = probs * (dprobs - (probs * dprobs).sum(-1, keepdims=True))
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        p, d = probs.astype(dtype), dprobs.astype(dtype)
        elementwise.softmax_backward(p, d, d)  # in place
        np.testing.assert_allclose(d, ref, rtol=tol, atol=tol)


def test_erf_and_exp_f32_accuracy_on_a_dense_grid():
    x = np.linspace(-9, 9, 400_001).astype(np.float32)
    out = np.empty_like(x)
    elementwise._gelu_forward_f32(x, out)
    ref = 0.5 * x.astype(np.float64) * (1 + scipy_erf(x.astype(np.float64) / math.sqrt(2)))
    # |error| < 1.2e-6 absolute (float32 rounding of the result alone is up to 5e-7 at 9)
    np.testing.assert_allclose(out, ref, rtol=2e-7, atol=1.2e-6)
    dx = np.empty_like(x)
    elementwise._gelu_backward_f32(np.ones_like(x), x, dx)
    xd = x.astype(np.float64)
    dref = 0.5 * (1 + scipy_erf(xd / math.sqrt(2))) + xd * np.exp(-0.5 * xd * xd) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(dx, dref, rtol=2e-6, atol=6e-7)
    # exp on (-87, 0] through the softmax of a 2-key row: p0 = 1 / (1 + exp(-d))
    d = np.linspace(0, 87, 100_001).astype(np.float32)
    scores = np.stack([np.zeros_like(d), -d], -1)[None, None]
    probs = np.empty_like(scores)
    elementwise.masked_softmax(scores, np.ones((1, 2), bool), probs)
    e = np.exp(-d.astype(np.float64))
    np.testing.assert_allclose(probs[0, 0, :, 1], e / (1 + e), rtol=3e-7, atol=1e-38)


@given(st.integers(1, 6), st.integers(2, 70), seeds, st.sampled_from([np.float32, np.float64]))
def test_layernorm_kernels(n, h, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, h)) * 5 + 3).astype(dtype)
    g, b = rng.standard_normal(h).astype(dtype), rng.standard_normal(h).astype(dtype)
    out, mean, rstd = np.empty_like(x), np.empty(n, dtype), np.empty(n, dtype)
    elementwise.layernorm_forward(x, g, b, 1e-12, out, mean, rstd)
    xd = x.astype(np.float64)
    mu = xd.mean(1, keepdims=True)
    r = 1 / np.sqrt(((xd - mu) ** 2).mean(1, keepdims=True) + 1e-12)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(out, (xd - mu) * r * g + b, rtol=tol, atol=tol)
    dy = rng.standard_normal((n, h)).astype(dtype)
    dx = np.empty_like(x)
    dgp, dbp = np.zeros(h), np.zeros(h)
    elementwise.layernorm_backward(dy, x, mean, rstd, g, dx, dgp, dbp)
    xhat = (xd - mu) * r
    gy = dy * g.astype(np.float64)
    ref = r * (gy - gy.mean(1, keepdims=True) - xhat * (gy * xhat).mean(1, keepdims=True))
    # dx is a difference of terms of size r*|g*dy| that cancel (exactly so for h = 2):
    # its rounding error scales with those terms, not with dx itself
    term_scale = np.maximum(1.0, (r * np.abs(gy)).max(1, keepdims=True))
    err = np.abs(dx - ref)
    assert (err <= tol * 10 * (np.abs(ref) + term_scale)).all(), (err.max(), term_scale.max())
    np.testing.assert_allclose(dgp, (dy * xhat).sum(0), rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(dbp, dy.astype(np.float64).sum(0), rtol=1e-12, atol=1e-12)


@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 9), seeds)
def test_embedding_gather_and_scatter(nb, nt, vocab, seed):
    rng = np.random.default_rng(seed)
    word, pos = rng.standard_normal((vocab, 3)), rng.standard_normal((nt, 3))
    typ = rng.standard_normal((2, 3))
    ids, types = rng.integers(0, vocab, (nb, nt)), rng.integers(0, 2, (nb, nt))
    out = np.empty((nb, nt, 3))
    elementwise.embedding_sum(ids, types, word, pos, typ, out)
    np.testing.assert_array_equal(out, word[ids] + pos[None] + typ[types])
    rows = rng.standard_normal((nb * nt, 3))
    table = np.zeros((vocab, 3))
    elementwise.scatter_add_rows(ids.reshape(-1), rows, table)
    ref = np.zeros((vocab, 3))
    np.add.at(ref, ids.reshape(-1), rows)  # repeated ids add up
    np.testing.assert_allclose(table, ref, rtol=1e-14, atol=1e-15)


def test_dropout_hash_is_deterministic_and_key_dependent():
    a, b, c = (np.empty(1000, np.uint16) for _ in range(3))
    elementwise.dropout_bits(1000, 1, 2, a)
    elementwise.dropout_bits(1000, 1, 2, b)
    elementwise.dropout_bits(1000, 1, 3, c)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.99
    x = np.arange(1000, dtype=np.float32)
    out = np.empty_like(x)
    elementwise.dropout_apply(x, 1, 2, 30000, np.float32(2.0), out)
    np.testing.assert_array_equal(out, np.where(a >= 30000, x * 2, 0))


def test_sum_of_squares_accumulates_in_float64():
    x = np.full(10_000_001, 0.1, np.float32)
    assert elementwise.sum_of_squares(x) == pytest.approx(10_000_001 * float(np.float32(0.1)) ** 2,
                                                     rel=1e-9)  # float32 sums: ~1e-3 off


@given(attention_scores(), st.sampled_from([np.float32, np.float64]), st.integers(1, 65535))
def test_fused_softmax_dropout_equals_the_two_kernels(case, dtype, threshold):
    scores, mask = case
    scores = scores.astype(dtype)
    scale = dtype(65536 / (65536 - threshold))
    probs, used = np.empty_like(scores), np.empty_like(scores)
    elementwise.masked_softmax_dropout(scores, mask, 7, 11, threshold, scale, probs, used)
    ref = np.empty_like(scores)
    elementwise.masked_softmax(scores, mask, ref)
    np.testing.assert_array_equal(probs, ref)
    ref_used = np.empty_like(ref)
    elementwise.dropout_apply(ref.reshape(-1), 7, 11, threshold, scale, ref_used.reshape(-1))
    # bit for bit: the attention backward recomputes `used` with dropout_apply
    np.testing.assert_array_equal(used, ref_used)
    in_place = scores.copy()  # used may overwrite the scores
    probs2 = np.empty_like(scores)
    elementwise.masked_softmax_dropout(in_place, mask, 7, 11, threshold, scale, probs2, in_place)
    np.testing.assert_array_equal(probs2, probs)
    np.testing.assert_array_equal(in_place, used)
    dused = np.random.default_rng(threshold).standard_normal(scores.shape).astype(dtype)
    ds = dused.copy()
    elementwise.dropout_softmax_backward(probs, ds, 7, 11, threshold, scale, ds)  # in place
    dprobs = np.empty_like(dused)
    elementwise.dropout_apply(dused.reshape(-1), 7, 11, threshold, scale, dprobs.reshape(-1))
    elementwise.softmax_backward(probs, dprobs, dprobs)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ds, dprobs, rtol=tol, atol=tol)


@given(attention_scores(), st.sampled_from([np.float32, np.float64]), st.integers(1, 65535),
       st.data())
def test_dropout_kernels_on_a_band_of_rows_use_the_whole_arrays_mask(case, dtype, threshold,
                                                                     data):
    scores, mask = case
    nt = scores.shape[2]
    first = data.draw(st.integers(0, nt - 1))
    stop = data.draw(st.integers(first + 1, nt))
    probs = ref_softmax(scores, mask).astype(dtype)
    scale = dtype(65536 / (65536 - threshold))
    whole = np.empty_like(probs)
    elementwise.dropout_apply(probs.reshape(-1), 7, 11, threshold, scale, whole.reshape(-1))
    band = np.ascontiguousarray(probs[:, :, first:stop])
    out = np.empty_like(band)
    elementwise.dropout_rows(band, 7, 11, threshold, scale, first, nt, out)
    np.testing.assert_array_equal(out, whole[:, :, first:stop])
    dused = np.random.default_rng(threshold).standard_normal(probs.shape).astype(dtype)
    ref = dused.copy()
    elementwise.dropout_softmax_backward(probs, ref, 7, 11, threshold, scale, ref)
    ds = np.ascontiguousarray(dused[:, :, first:stop])
    elementwise.dropout_softmax_backward(band, ds, 7, 11, threshold, scale, ds, first, nt)
    np.testing.assert_array_equal(ds, ref[:, :, first:stop])

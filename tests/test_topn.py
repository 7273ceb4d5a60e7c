"""Top-N masked attention of the training path: partial select, forward, backward."""

import numpy as np
import pytest
from gradcheck import assert_gradient
from hypothesis import given, settings
from hypothesis import strategies as st
from masks import topn_mask

from hadref.errors import HadrefError
from hadref.had.topn import topn_attention_backward, topn_attention_forward


def _reference_mask(scores, valid, top_n):
    """Stable sort: score descending, lower index first on ties, valid keys only."""
    rows, n = scores.shape
    keep = np.zeros((rows, n), bool)
    for r in range(rows):
        cand = [j for j in range(n) if valid[r, j]]
        cand.sort(key=lambda j: (-scores[r, j], j))
        keep[r, cand[:top_n]] = True
    return keep


@settings(max_examples=60)
@given(data=st.data(), rows=st.integers(1, 6), n=st.integers(1, 40),
       top_n=st.integers(1, 45), levels=st.sampled_from([2, 3, 5, 1000]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_partial_select_equals_stable_sort_reference(data, rows, n, top_n, levels, dtype):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # few distinct levels make many ties, which the tie rule must resolve by index
    scores = rng.integers(0, levels, size=(rows, n)).astype(dtype) / 7
    valid = rng.random((rows, n)) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    keep = topn_mask(scores, valid, top_n)
    np.testing.assert_array_equal(keep, _reference_mask(scores, valid, top_n))
    assert (keep.sum(1) == np.minimum(top_n, valid.sum(1))).all()


def test_partial_select_on_sorted_and_reversed_rows():
    # quickselect's bad cases for naive pivots
    n = 300
    for scores in (np.arange(n, dtype=float), -np.arange(n, dtype=float), np.zeros(n)):
        keep = topn_mask(scores[None], np.ones((1, n), bool), 17)
        np.testing.assert_array_equal(keep, _reference_mask(scores[None], np.ones((1, n), bool), 17))


def _loss(scores, v, valid, top_n, w_ctx):
    ctx, _, _ = topn_attention_forward(scores, v, valid, top_n)
    return float((ctx * w_ctx).sum())


def test_forward_is_softmax_over_the_kept_set_and_backward_matches_fd():
    rng = np.random.default_rng(0)
    b, h, m, n, dv, top_n = 2, 2, 4, 7, 3, 3
    scores = rng.standard_normal((b, h, m, n))
    v = rng.standard_normal((b, h, n, dv))
    valid = np.ones((b, 1, 1, n), bool)
    valid[1, ..., 5:] = False
    ctx, probs, cache = topn_attention_forward(scores, v, valid, top_n)
    keep = topn_mask(scores, valid, top_n)
    # forward: softmax over the kept scores only
    expected = np.where(keep, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    assert (probs[~keep] == 0).all()
    np.testing.assert_allclose(ctx, probs @ v, rtol=1e-12)
    # backward against central differences (the kept set does not move at eps = 1e-6)
    w_ctx = rng.standard_normal(ctx.shape)
    dscores, dv_ = topn_attention_backward(w_ctx, cache)
    for name, arr, grad in (("scores", scores, dscores), ("v", v, dv_)):
        assert_gradient(grad, lambda: _loss(scores, v, valid, top_n, w_ctx), arr,
                        rtol=1e-6, atol=1e-9, err_msg=name)
    # the index set is a constant: no gradient off it
    assert (dscores[~keep] == 0).all()


def test_row_without_valid_key_gives_zeros_not_nan():
    scores = np.zeros((1, 1, 2, 4), np.float32)
    v = np.ones((1, 1, 4, 2), np.float32)
    valid = np.zeros((1, 1, 1, 4), bool)
    ctx, probs, cache = topn_attention_forward(scores, v, valid, 2)
    assert np.isfinite(ctx).all() and (ctx == 0).all() and (probs == 0).all()
    ds, dv = topn_attention_backward(np.ones_like(ctx), cache)
    assert (ds == 0).all() and (dv == 0).all()


def test_bad_input_raises():
    with pytest.raises(HadrefError, match="top_n"):
        topn_mask(np.zeros((2, 3)), np.ones((2, 3), bool), 0)
    with pytest.raises(HadrefError, match="finite"):
        topn_mask(np.array([[0.0, np.nan]]), np.ones((1, 2), bool), 1)

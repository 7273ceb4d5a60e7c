"""Grouped-query attention in the packed kernels: k and v with fewer heads than q (axis -3),
keys packed once per key head; results equal the NumPy references with K/V repeated per
query head (exact for indices and scores, allclose for outputs), for both fused kernels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hamming import _kernel, _reference_had
from test_kernels import _reference_topn

import hadref
from hadref.errors import HadrefError


def _grouped(rng, b, hkv, g, m, n, d, dv, ties):
    q = rng.standard_normal((b, hkv * g, m, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, n, d)).astype(np.float32)
    if ties:  # repeated keys: exact ties at the N-th place
        k = k[:, :, rng.integers(0, max(1, n // 2), size=n)]
    v = rng.standard_normal((b, hkv, n, dv)).astype(np.float32)
    return q, k, v


@settings(max_examples=50, deadline=None)
@given(data=st.data(), b=st.integers(1, 2), hkv=st.integers(1, 3), g=st.integers(1, 3),
       m=st.integers(1, 40), n=st.integers(1, 100), d=st.sampled_from([5, 64, 65]),
       dv=st.sampled_from([3, 64]), top_n=st.integers(1, 110), causal=st.booleans(),
       kernel=st.sampled_from([None, ("rows",), ("tiles", True), ("tiles", False)]))
def test_gqa_had_attention_equals_repeated_reference(data, b, hkv, g, m, n, d, dv, top_n,
                                                     causal, kernel):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q, k, v = _grouped(rng, b, hkv, g, m, n, d, dv, data.draw(st.booleans()))
    mask = rng.random((b, 1, n)) < data.draw(st.sampled_from([0.0, 0.6, 1.0]))
    sigma = (0.7, 1.6)
    if kernel is None:  # the size decides: row kernel below 16 query rows, tiles from 16
        out = hadref.had_attention(q, k, v, top_n, *sigma, key_mask=mask, causal=causal)
    else:
        with _kernel(*kernel):
            out = hadref.had_attention(q, k, v, top_n, *sigma, key_mask=mask, causal=causal)
    assert out.shape == (b, hkv * g, m, dv)
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    valid = np.broadcast_to(mask, (b, hkv * g, n)).reshape(-1, n)
    ref = _reference_had(q.reshape(-1, m, d), kr.reshape(-1, n, d), vr.reshape(-1, n, dv),
                         top_n, *sigma, valid, causal)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)
    dense = hadref.float_attention(q, k, v, key_mask=mask, causal=causal)
    np.testing.assert_allclose(dense, hadref.float_attention(q, kr, vr, key_mask=mask,
                                                             causal=causal), rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), hkv=st.integers(1, 3), g=st.integers(1, 4), m=st.integers(1, 8),
       n=st.integers(1, 40), d=st.sampled_from([3, 64, 100]), top_n=st.integers(1, 45),
       causal=st.booleans())
def test_gqa_hamming_topn_equals_reference_per_query_head(data, hkv, g, m, n, d, top_n, causal):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q, k, _ = _grouped(rng, 1, hkv, g, m, n, d, 1, data.draw(st.booleans()))
    valid = rng.random((1, hkv, n)) < data.draw(st.sampled_from([0.3, 1.0]))
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, top_n,
                                      key_mask=valid, causal=causal)
    assert idx.shape == (1, hkv * g, m, top_n)
    for j in range(hkv * g):
        ref_idx, ref_scores = _reference_topn(q[0, j], k[0, j // g], top_n, valid[0, j // g],
                                              causal)
        np.testing.assert_array_equal(idx[0, j], ref_idx)
        np.testing.assert_array_equal(scores[0, j], ref_scores)


@pytest.mark.parametrize("kernel", [("rows",), ("tiles", True)])
def test_gqa_packed_key_cache_decodes_as_full_causal_attention(kernel):
    rng = np.random.default_rng(3)
    b, hkv, g, n, d = 2, 3, 3, 50, 64
    q, k, v = _grouped(rng, b, hkv, g, n, n, d, d, ties=False)
    with _kernel(*kernel):
        full = hadref.had_attention(q, k, v, 9, 0.8, 1.2, causal=True)
        cache = hadref.PackedKeyCache(k[:, :, :30], v[:, :, :30], sigma_k=1.2)
        parts = [cache.attend(q[:, :, :30], 9, 0.8, causal=True)]
        for t in range(30, n, 7):
            cache.append(k[:, :, t:t + 7], v[:, :, t:t + 7])
            parts.append(cache.attend(q[:, :, t:t + 7], 9, 0.8, causal=True))
    np.testing.assert_allclose(np.concatenate(parts, axis=2), full, rtol=1e-6, atol=1e-6)
    idx, _ = cache.topn(q[:, :, -1:], 9, causal=True)
    ref, _ = hadref.hamming_topn(hadref.pack_signs(q[:, :, -1:]),
                                 hadref.pack_signs(np.repeat(k, g, axis=1)), d, 9, causal=True)
    np.testing.assert_array_equal(idx, ref)


def test_gqa_bad_head_counts():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    k = rng.standard_normal((1, 3, 3, 8)).astype(np.float32)
    with pytest.raises(HadrefError, match="^k: expected leading dims"):
        hadref.had_attention(q, k, k, 2)
    with pytest.raises(HadrefError, match="^k_bits: expected leading dims"):
        hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), 8, 2)
    with pytest.raises(HadrefError, match="^v: expected leading dims"):
        hadref.had_attention(q, k[:, :2], k[:, :1], 2)
    with pytest.raises(HadrefError, match="cached keys"):
        hadref.PackedKeyCache(k, k).attend(q, 2)

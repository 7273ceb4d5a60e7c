"""N per query row (``top_n_ratio``, the decoders' rule): the rounding, and the packed kernels
(row kernel, tile kernel, the top-N stage, the key caches) against plain NumPy references in
which every row keeps ``min(seen, max(1, round(ratio * seen)))`` of the ``seen`` keys it may
select (Python's ``round``: half to even)."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hamming import _kernel, _reference_had, _sign

import hadref
from hadref.errors import HadrefError
from hadref.had.kernels.causal import ratio_top_n, round_half_even, row_top_n


def _row_n(ratio, seen):
    """The rule, in plain Python: N of a row that sees ``seen`` selectable keys."""
    return 0 if seen == 0 else min(seen, max(1, round(ratio * seen)))


# --- the rounding ----------------------------------------------------------------------------

@pytest.mark.parametrize("x,expected", [(0.0, 0), (0.5, 0), (1.5, 2), (2.5, 2), (3.5, 4),
                                        (4.5, 4), (1e6 + 0.5, 1000000), (1e6 + 1.5, 1000002),
                                        (0.49999999999999994, 0), (2.5000000000000004, 3),
                                        (2.4999999999999996, 2), (7.0, 7), (0.9999999, 1)])
def test_round_half_even_edge_cases(x, expected):
    assert round_half_even(x) == expected == round(x)


@settings(max_examples=300)
@given(x=st.floats(0.0, 1e9, allow_nan=False, allow_infinity=False)
       | st.integers(0, 10**6).map(lambda i: i + 0.5))
def test_round_half_even_is_pythons_round(x):
    assert round_half_even(x) == round(x)


@pytest.mark.parametrize("ratio,seen,expected", [
    (0.5, 0, 0), (0.5, 1, 1), (0.5, 2, 1), (0.5, 3, 2), (0.5, 5, 2), (0.5, 7, 4), (0.5, 9, 4),
    (0.117, 1, 1), (0.117, 256, 30), (0.117, 1024, 120), (0.117, 128, 15), (1.0, 13, 13),
    (0.01, 3, 1), (0.25, 2, 1), (0.25, 6, 2), (0.25, 10, 2), (0.25, 14, 4)])
def test_ratio_top_n_edges(ratio, seen, expected):
    # x.5 products round to the even neighbour: 0.5 * 5 = 2.5 -> 2, 0.5 * 7 = 3.5 -> 4
    assert ratio_top_n(ratio, seen) == expected == _row_n(ratio, seen)
    assert row_top_n(10**6, ratio, seen) == expected
    assert row_top_n(1, ratio, seen) == min(1, expected)


@settings(max_examples=300)
@given(ratio=st.floats(1e-6, 1.0), seen=st.integers(0, 10**7), top_n=st.integers(1, 10**4))
def test_row_top_n_is_the_python_rule(ratio, seen, top_n):
    assert ratio_top_n(ratio, seen) == _row_n(ratio, seen)
    assert row_top_n(top_n, ratio, seen) == min(top_n, _row_n(ratio, seen))
    assert row_top_n(top_n, 0.0, seen) == min(top_n, seen)  # ratio 0.0: a fixed N


# --- references ------------------------------------------------------------------------------

def _candidates(valid_row, i, m, n, causal):
    return [j for j in range(n) if valid_row[j] and (not causal or j <= i + n - m)]


def _reference_rows(q, k, v, ratio, sigma_q, sigma_k, valid, causal):
    """Float attention on the +-sigma sign vectors, each row keeping its own N, float64."""
    return _reference_had(q, k, v, lambda seen: _row_n(ratio, seen), sigma_q, sigma_k, valid,
                          causal)


def _reference_topn_rows(q, k, ratio, valid, causal):
    """(m, N) indices and sign dot products per row, N = the cap (a row seeing all n)."""
    m, n, d = q.shape[0], k.shape[0], q.shape[1]
    width = max(1, _row_n(ratio, n))
    dots = _sign(q).astype(np.int64) @ _sign(k).astype(np.int64).T
    idx = np.full((m, width), -1)
    sc = np.full((m, width), -(d + 1))
    for i in range(m):
        cand = _candidates(valid, i, m, n, causal)
        cand.sort(key=lambda j: (-dots[i, j], j))
        cand = cand[:_row_n(ratio, len(cand))]
        idx[i, :len(cand)] = cand
        sc[i, :len(cand)] = dots[i, cand]
    return idx, sc


_RATIOS = st.sampled_from([0.117, 0.3, 0.5, 1.0]) | st.floats(0.01, 1.0)
_KERNELS = [("rows",), ("tiles", True), ("tiles", False)]


# --- the fused kernels -----------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 2), hkv=st.integers(1, 2), g=st.integers(1, 3),
       m=st.integers(1, 40), n=st.integers(1, 100), d=st.sampled_from([5, 64, 65]),
       dv=st.sampled_from([3, 64]), ratio=_RATIOS, causal=st.booleans(),
       kernel=st.sampled_from([None] + _KERNELS))
def test_had_attention_per_row_n_equals_reference(data, b, hkv, g, m, n, d, dv, ratio, causal,
                                                  kernel):
    # padding masks, grouped queries (K/V repeated per query head in the reference), ties
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q = rng.standard_normal((b, hkv * g, m, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, n, d)).astype(np.float32)
    if data.draw(st.booleans()):  # repeated keys: exact ties at the N-th place
        k = k[:, :, rng.integers(0, max(1, n // 2), size=n)]
    v = rng.standard_normal((b, hkv, n, dv)).astype(np.float32)
    mask = rng.random((b, 1, n)) < data.draw(st.sampled_from([0.0, 0.6, 1.0]))
    sigma = (0.7, 1.6)
    if kernel is None:  # the size decides
        out = hadref.had_attention(q, k, v, None, *sigma, key_mask=mask, causal=causal,
                                   top_n_ratio=ratio)
    else:
        with _kernel(*kernel):
            out = hadref.had_attention(q, k, v, None, *sigma, key_mask=mask, causal=causal,
                                       top_n_ratio=ratio)
    assert out.shape == (b, hkv * g, m, dv)
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    valid = np.broadcast_to(mask, (b, hkv * g, n)).reshape(-1, n)
    ref = _reference_rows(q.reshape(-1, m, d), kr.reshape(-1, n, d), vr.reshape(-1, n, dv),
                          ratio, *sigma, valid, causal)
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=1e-5, atol=1e-5)


def test_per_row_n_differs_from_one_n_per_forward():
    # the test above cannot pass with the old rule: rows that see few keys keep fewer
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 40, 64)).astype(np.float32) for _ in range(3))
    for kernel in _KERNELS:
        with _kernel(*kernel):
            per_row = hadref.had_attention(q, k, v, None, causal=True, top_n_ratio=0.25)
            per_forward = hadref.had_attention(q, k, v, 10, causal=True)
        ref = _reference_rows(q, k, v, 0.25, 1.0, 1.0, np.ones((1, 40), bool), True)
        np.testing.assert_allclose(per_row, ref, rtol=1e-5, atol=1e-5)
        assert not np.allclose(per_row[:, :30], per_forward[:, :30])
        # the last row sees all 40 keys: N = 10 either way
        np.testing.assert_allclose(per_row[:, -1], per_forward[:, -1], rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), hkv=st.integers(1, 3), g=st.integers(1, 3), m=st.integers(1, 12),
       n=st.integers(1, 50), d=st.sampled_from([3, 64, 100]), ratio=_RATIOS,
       causal=st.booleans())
def test_hamming_topn_per_row_n_equals_reference(data, hkv, g, m, n, d, ratio, causal):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q = rng.standard_normal((1, hkv * g, m, d)).astype(np.float32)
    k = rng.standard_normal((1, hkv, n, d)).astype(np.float32)
    if data.draw(st.booleans()):
        k = k[:, :, rng.integers(0, max(1, n // 2), size=n)]
    valid = rng.random((1, hkv, n)) < data.draw(st.sampled_from([0.3, 1.0]))
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, None,
                                      key_mask=valid, causal=causal, top_n_ratio=ratio)
    assert idx.shape == (1, hkv * g, m, max(1, _row_n(ratio, n)))
    for j in range(hkv * g):
        ref_idx, ref_scores = _reference_topn_rows(q[0, j], k[0, j // g], ratio,
                                                   valid[0, j // g], causal)
        np.testing.assert_array_equal(idx[0, j], ref_idx)
        np.testing.assert_array_equal(scores[0, j], ref_scores)


@pytest.mark.parametrize("kernel", _KERNELS)
def test_packed_key_cache_decodes_as_full_causal_attention_with_a_ratio(kernel):
    rng = np.random.default_rng(3)
    b, hkv, g, n, d = 2, 2, 3, 60, 64
    q = rng.standard_normal((b, hkv * g, n, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, hkv, n, d)).astype(np.float32) for _ in range(2))
    k[:, :, 40:50] = k[:, :, 7:8]  # ties
    ratio = 0.3
    with _kernel(*kernel):
        full = hadref.had_attention(q, k, v, None, 0.8, 1.2, causal=True, top_n_ratio=ratio)
        cache = hadref.PackedKeyCache(k[:, :, :20], v[:, :, :20], sigma_k=1.2)
        parts = [cache.attend(q[:, :, :20], None, 0.8, causal=True, top_n_ratio=ratio)]
        for t, step in ((20, 17), (37, 1), (38, 5), (43, 1), (44, 16)):
            cache.append(k[:, :, t:t + step], v[:, :, t:t + step])
            parts.append(cache.attend(q[:, :, t:t + step], None, 0.8, causal=True,
                                      top_n_ratio=ratio))
    np.testing.assert_allclose(np.concatenate(parts, axis=2), full, rtol=1e-6, atol=1e-6)
    idx, _ = cache.topn(q[:, :, -3:], None, causal=True, top_n_ratio=ratio)
    ref, _ = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, None,
                                 causal=True, top_n_ratio=ratio)
    np.testing.assert_array_equal(idx, ref[:, :, -3:])


@pytest.mark.parametrize("kernel", _KERNELS)
def test_decoder_kv_cache_with_a_ratio_equals_full_causal_attention(kernel):
    from hadref.had.cache import PackedCausalKVCache

    rng = np.random.default_rng(4)
    b, hkv, g, n, d = 1, 2, 2, 45, 16
    q = rng.standard_normal((b, hkv * g, n, d))
    k, v = (rng.standard_normal((b, hkv, n, d)) for _ in range(2))
    cache = PackedCausalKVCache(1, b, hkv, n, d, np.float64)
    with _kernel(*kernel):
        full = hadref.had_attention(q, k, v, None, 0.9, 1.1, causal=True, top_n_ratio=0.5)
        parts = []
        for t, step in ((0, 18), (18, 1), (19, 3), (22, 23)):
            cache.append(0, k[:, :, t:t + step], v[:, :, t:t + step])
            parts.append(cache.attend(0, q[:, :, t:t + step], None, 0.9, 1.1, top_n_ratio=0.5))
    np.testing.assert_allclose(np.concatenate(parts, axis=2), full, rtol=1e-12, atol=1e-12)


def test_top_n_and_ratio_arguments():
    x = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(HadrefError, match="^top_n: expected None when top_n_ratio"):
        hadref.had_attention(x, x, x, 2, top_n_ratio=0.5)
    for bad in (0.0, 1.5, float("nan"), True, "a"):
        with pytest.raises(HadrefError, match="^top_n_ratio: expected a number in"):
            hadref.had_attention(x, x, x, None, top_n_ratio=bad)
    with pytest.raises(HadrefError, match="^top_n: expected an integer"):
        hadref.had_attention(x, x, x, None)
    bits = hadref.pack_signs(x)
    with pytest.raises(HadrefError, match="^top_n_ratio"):
        hadref.hamming_topn(bits, bits, 8, None, top_n_ratio=-1)
    cache = hadref.PackedKeyCache(x, x)
    with pytest.raises(HadrefError, match="^top_n: expected None"):
        cache.attend(x, 3, top_n_ratio=0.2)

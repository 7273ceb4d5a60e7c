"""had_attention / float_attention / PackedKeyCache against float attention on sign vectors."""

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hadref
from hadref.errors import HadrefError


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _reference_had(q, k, v, top_n, sigma_q, sigma_k, valid, causal=False):
    """Float attention on the +-sigma sign vectors with the top-N mask (stable ties), float64.

    q (G, m, d), k (G, n, d), v (G, n, dv), valid (G, n) bool; top_n: N, or a function of
    the number of keys a row sees giving that row's N (N per row).
    """
    g_, m, d = q.shape
    n = k.shape[1]
    s = (sigma_q * _sign(q)) @ np.swapaxes(sigma_k * _sign(k), 1, 2)
    out = np.zeros((g_, m, v.shape[2]))
    for g in range(g_):
        for i in range(m):
            cand = [j for j in range(n) if valid[g, j] and (not causal or j <= i + n - m)]
            # order on the exact integer dot, as the ties are defined on it
            cand.sort(key=lambda j: (-(_sign(q[g, i]) @ _sign(k[g, j])), j))
            cand = cand[:top_n(len(cand)) if callable(top_n) else top_n]
            if not cand:
                continue
            z = s[g, i, cand] / math.sqrt(d)
            p = np.exp(z - z.max())
            out[g, i] = (p / p.sum()) @ v[g, cand].astype(np.float64)
    return out


def _dense_reference(q, k, v, valid, causal=False):
    m, n = q.shape[-2], k.shape[-2]
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / math.sqrt(q.shape[-1])
    keep = np.broadcast_to(valid[..., None, :], s.shape)
    if causal:
        keep = keep & (np.arange(n)[None, :] <= np.arange(m)[:, None] + n - m)
    s = np.where(keep, s, -np.inf)
    mx = s.max(-1, keepdims=True)
    mx[~np.isfinite(mx)] = 0
    p = np.exp(s - mx)
    tot = p.sum(-1, keepdims=True)
    tot[tot == 0] = 1
    return (p / tot) @ v.astype(np.float64)


@contextlib.contextmanager
def _kernel(name, levels8=True):
    """Force one of the two fused kernels: "tiles" (32 rows at a time) or "rows"; for the
    tile kernel, whether levels may be 8-bit (d <= 254) or are always 16-bit."""
    import hadref.had.attention as hamming

    saved = hamming._TILE_MIN_ROWS, hamming._LEVELS8_MAX_D
    hamming._TILE_MIN_ROWS = 1 if name == "tiles" else 10**9
    if not levels8:
        hamming._LEVELS8_MAX_D = 0
    try:
        yield
    finally:
        hamming._TILE_MIN_ROWS, hamming._LEVELS8_MAX_D = saved


# the tile kernel with both level types (tests/test_kernels_avx2.py: the same on AVX2 code)
_TILE_VARIANTS = [("tiles", True), ("tiles", False)]


@settings(max_examples=80)
@given(data=st.data(), g=st.integers(1, 3), m=st.integers(1, 40), n=st.integers(1, 140),
       d=st.sampled_from([1, 5, 16, 64, 65, 100]), dv=st.sampled_from([1, 3, 8, 9, 33, 64, 70]),
       top_n=st.integers(1, 150), causal=st.booleans(),
       sigma=st.sampled_from([(1.0, 1.0), (0.3, 2.0), (4.0, 5.0), (1e3, 1e3)]),
       kernel=st.sampled_from([("rows",)] + _TILE_VARIANTS))
def test_had_attention_equals_float_attention_on_signs_with_topn(data, g, m, n, d, dv, top_n,
                                                                 causal, sigma, kernel):
    # m > 32 and n > 64 cross the tile kernel's tile (32 rows) and block (64 keys) edges
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q = rng.standard_normal((g, m, d)).astype(np.float32)
    k = rng.standard_normal((g, n, d)).astype(np.float32)
    if data.draw(st.booleans()):  # repeated keys: exact ties at the N-th place
        k = k[:, rng.integers(0, max(1, n // 2), size=n)]
    v = rng.standard_normal((g, n, dv)).astype(np.float32)
    valid = rng.random((g, n)) < data.draw(st.sampled_from([0.0, 0.6, 1.0]))
    with _kernel(*kernel):
        out = hadref.had_attention(q, k, v, top_n, *sigma, key_mask=valid, causal=causal)
    assert out.dtype == np.float32 and out.shape == (g, m, dv)
    ref = _reference_had(q, k, v, top_n, *sigma, valid, causal)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), d=st.sampled_from([8, 64, 96]),
       causal=st.booleans())
def test_topn_at_least_n_is_dense_attention_on_signs(seed, n, d, causal):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((2, n, d)).astype(np.float32) for _ in range(3))
    valid = rng.random((2, n)) < 0.8
    sq, sk = 0.7, 1.3
    out = hadref.had_attention(q, k, v, n + rng.integers(0, 3), sq, sk, key_mask=valid,
                               causal=causal)
    dense = hadref.float_attention((sq * _sign(q)).astype(np.float32),
                                   (sk * _sign(k)).astype(np.float32), v, key_mask=valid,
                                   causal=causal)
    np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31), m=st.integers(1, 12), n=st.integers(1, 30), causal=st.booleans())
def test_float_attention_equals_reference(seed, m, n, causal):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((3, m, 16)).astype(np.float32)
    k, v = (rng.standard_normal((3, n, 16)).astype(np.float32) for _ in range(2))
    valid = rng.random((3, n)) < 0.7
    out = hadref.float_attention(q, k, v, key_mask=valid, causal=causal)
    np.testing.assert_allclose(out, _dense_reference(q, k, v, valid, causal), rtol=1e-5, atol=1e-6)


def test_edge_cases():
    rng = np.random.default_rng(0)
    # n = 1: the single key takes all the weight
    q, k, v = (rng.standard_normal((1, 1, 4, 8)).astype(np.float32) for _ in range(3))
    k, v = k[..., :1, :], v[..., :1, :]
    np.testing.assert_allclose(hadref.had_attention(q, k, v, 5), np.repeat(v, 4, axis=2))
    # all keys masked: zeros, never NaN (both paths)
    q, k, v = (rng.standard_normal((1, 2, 6, 8)).astype(np.float32) for _ in range(3))
    mask = np.zeros((1, 1, 6), bool)
    for out in (hadref.had_attention(q, k, v, 3, key_mask=mask),
                hadref.float_attention(q, k, v, key_mask=mask)):
        assert np.isfinite(out).all() and (out == 0).all()
    # all scores tied: the N lowest indices, equal weights
    z = np.zeros((1, 5, 64), np.float32)
    v = rng.standard_normal((1, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(hadref.had_attention(z, z, v, 2), np.broadcast_to(v[:, :2].mean(1), (1, 5, 3)),
                               rtol=1e-6)
    # huge sigma: one-hot on the best key (ties shared), finite
    q = rng.standard_normal((1, 3, 64)).astype(np.float32)
    k = rng.standard_normal((1, 9, 64)).astype(np.float32)
    v = rng.standard_normal((1, 9, 4)).astype(np.float32)
    out = hadref.had_attention(q, k, v, 4, sigma_q=1e150, sigma_k=1e150)
    idx, _ = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), 64, 1)
    np.testing.assert_allclose(out[0], v[0, idx[0, :, 0]], rtol=1e-6)
    # batch of one and no leading dims at all
    q2, k2, v2 = q[0], k[0], v[0]
    np.testing.assert_array_equal(hadref.had_attention(q2, k2, v2, 4), hadref.had_attention(q, k, v, 4)[0])


def test_float64_inputs_keep_float64():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 7, 10)) for _ in range(3))
    out = hadref.had_attention(q, k, v, 3, 0.5, 2.0)
    assert out.dtype == np.float64
    valid = np.ones((1, 7), bool)
    np.testing.assert_allclose(out, _reference_had(q, k, v, 3, 0.5, 2.0, np.ones((2, 7), bool)),
                               rtol=1e-12, atol=1e-12)
    del valid


def test_packed_key_cache_decode_equals_full_attention():
    rng = np.random.default_rng(4)
    h, n, d = 3, 25, 70
    k = rng.standard_normal((h, n, d)).astype(np.float32)
    v = rng.standard_normal((h, n, d)).astype(np.float32)
    q = rng.standard_normal((h, n, d)).astype(np.float32)
    cache = hadref.PackedKeyCache(k[:, :4], v[:, :4], sigma_k=1.5)
    outs = [cache.attend(q[:, :4], 5, sigma_q=0.5, causal=True)]
    for t in range(4, n):  # one token at a time, as in decoding
        cache.append(k[:, t:t + 1], v[:, t:t + 1])
        outs.append(cache.attend(q[:, t:t + 1], 5, sigma_q=0.5, causal=True))
    assert cache.n_keys == n and cache.key_bytes_per_token == h * 2 * 8
    full = hadref.had_attention(q, k, v, 5, 0.5, 1.5, causal=True)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-6, atol=1e-6)
    idx, scores = cache.topn(q, 5)
    ref_idx, ref_scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores)


def test_packed_key_cache_mask_and_errors():
    rng = np.random.default_rng(5)
    k, v, q = (rng.standard_normal((2, 6, 8)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
    cache = hadref.PackedKeyCache(k, v, key_mask=mask)
    np.testing.assert_allclose(cache.attend(q, 2), hadref.had_attention(q, k, v, 2, key_mask=mask))
    with pytest.raises(HadrefError, match="k: expected shape"):
        cache.append(k[:1], v[:1])
    with pytest.raises(HadrefError, match="q: expected shape"):
        cache.attend(q[..., :4], 2)


def test_bad_input_raises_hadref_error():
    x = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(HadrefError, match="top_n"):
        hadref.had_attention(x, x, x, 0)
    with pytest.raises(HadrefError, match="top_n"):
        hadref.had_attention(x, x, x, 2.5)
    with pytest.raises(HadrefError, match="q: expected float32"):
        hadref.had_attention(x.astype(np.int32), x, x, 2)
    with pytest.raises(HadrefError, match="k: expected head size"):
        hadref.had_attention(x, x[..., :4], x, 2)
    with pytest.raises(HadrefError, match="leading dims"):
        hadref.had_attention(x, x[:1], x, 2)
    with pytest.raises(HadrefError, match="v: expected n"):
        hadref.had_attention(x, x, x[:, :3], 2)
    with pytest.raises(HadrefError, match="shape"):
        hadref.had_attention(x[0, 0], x, x, 2)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(HadrefError, match="finite"):
        hadref.had_attention(x, bad, x, 2)
    with pytest.raises(HadrefError, match="sigma_q"):
        hadref.had_attention(x, x, x, 2, sigma_q=0.0)
    with pytest.raises(HadrefError, match="key_mask"):
        hadref.had_attention(x, x, x, 2, key_mask=np.ones((3, 4), bool))
    with pytest.raises(HadrefError, match="key_mask: expected a bool"):
        hadref.had_attention(x, x, x, 2, key_mask=np.full((2, 4), 0.5))
    with pytest.raises(HadrefError, match="non-empty"):
        hadref.float_attention(x[:, :0], x, x)


@pytest.mark.parametrize("tile_rows", [1, 3, 32])
def test_row_kernel_value_blocks_and_row_tiles_do_not_change_the_result(monkeypatch, tile_rows):
    # row kernel: tiny V blocks (8 keys) and tiles of a few rows, every boundary case
    import hadref.had.attention as hamming

    monkeypatch.setattr(hamming, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(hamming, "_ROW_KERNEL_GROUP", tile_rows)
    monkeypatch.setattr(hamming, "_TILE_MIN_ROWS", 10**9)
    rng = np.random.default_rng(tile_rows)
    for trial in range(12):
        g, m, n, d = 2, int(rng.integers(1, 20)), int(rng.integers(1, 60)), int(rng.choice([7, 64, 90]))
        q = rng.standard_normal((g, m, d)).astype(np.float32)
        k = rng.standard_normal((g, n, d)).astype(np.float32)
        if trial % 3 == 0:
            k = k[:, rng.integers(0, max(1, n // 4), size=n)]  # ties
        v = rng.standard_normal((g, n, 5)).astype(np.float32)
        valid = rng.random((g, n)) < 0.8
        top_n, causal = int(rng.integers(1, 25)), bool(trial % 2)
        out = hadref.had_attention(q, k, v, top_n, 0.9, 1.1, key_mask=valid, causal=causal)
        ref = _reference_had(q, k, v, top_n, 0.9, 1.1, valid, causal)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", _TILE_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_and_row_kernels_agree_on_longer_rows(dtype, variant):
    """Sizes the reference is too slow for: several tiles (m > 32), blocks (n > 64, not a
    multiple of 64), head sizes of several words, values wider than a register chunk."""
    rng = np.random.default_rng(7)
    for g, m, n, d, dv, top_n, causal in [(2, 100, 1000, 64, 64, 117, False),
                                          (1, 70, 333, 130, 70, 40, True),
                                          (3, 33, 129, 64, 33, 64, True),
                                          (1, 64, 513, 100, 130, 600, False)]:
        q = rng.standard_normal((g, m, d)).astype(dtype)
        k = rng.standard_normal((g, n, d)).astype(dtype)
        k[:, ::7] = k[:, :1]  # many exact ties
        v = rng.standard_normal((g, n, dv)).astype(dtype)
        valid = rng.random((g, n)) < 0.9
        with _kernel(*variant):
            tiles = hadref.had_attention(q, k, v, top_n, key_mask=valid, causal=causal)
        with _kernel("rows"):
            rows = hadref.had_attention(q, k, v, top_n, key_mask=valid, causal=causal)
        assert tiles.dtype == dtype
        np.testing.assert_allclose(tiles, rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", _TILE_VARIANTS)
def test_tile_kernel_tie_places_beyond_16_bits(variant):
    """All keys tied and N > 32767: the tie places (8- or 16-bit lanes in the selection)
    are handed out a block at a time; the first N keys must be taken, uniformly weighted."""
    rng = np.random.default_rng(3)
    n, top_n = 33_000, 32_800
    q = np.ones((1, 16, 1), np.float32)
    k = np.ones((1, n, 1), np.float32)
    v = rng.standard_normal((1, n, 4)).astype(np.float32)
    with _kernel(*variant):
        out = hadref.had_attention(q, k, v, top_n)
    expected = v[0, :top_n].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(out[0], np.broadcast_to(expected, (16, 4)), rtol=1e-4, atol=1e-6)

"""The Numba kernels on packed bits against plain NumPy references (exact agreement)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import hadref
from hadref.errors import HadrefError
from hadref.had.kernels.popcount import ctpop64
from hadref.had.kernels.select import _count_at_most


def _signs(x):
    return np.where(x >= 0, 1, -1).astype(np.int64)


def _reference_bits(x):
    """Bit i of word i // 64 set iff x[..., i] >= 0, padding zero, by plain Python ints."""
    d = x.shape[-1]
    words = (d + 63) // 64
    flat = x.reshape(-1, d)
    out = np.zeros((flat.shape[0], words), np.uint64)
    for r in range(flat.shape[0]):
        for w in range(words):
            value = 0
            for b in range(min(64, d - 64 * w)):
                if flat[r, 64 * w + b] >= 0:
                    value |= 1 << b
            out[r, w] = value
    return out.reshape(*x.shape[:-1], words)


def _reference_topn(q, k, top_n, valid, causal=False):
    """Stable descending order of the sign dot products, lower index on ties."""
    m, n = q.shape[0], k.shape[0]
    dots = _signs(q) @ _signs(k).T
    idx = np.full((m, top_n), -1)
    sc = np.full((m, top_n), -(q.shape[1] + 1))
    for i in range(m):
        cand = [j for j in range(n) if valid[j] and (not causal or j <= i + n - m)]
        cand.sort(key=lambda j: (-dots[i, j], j))
        cand = cand[:top_n]
        idx[i, : len(cand)] = cand
        sc[i, : len(cand)] = dots[i, cand]
    return idx, sc


@njit
def _popcounts(words):
    out = np.empty(words.shape[0], np.int64)
    for i in range(words.shape[0]):
        out[i] = ctpop64(words[i])
    return out


def test_ctpop64_counts_bits():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**63, size=200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    words[:3] = [0, 2**64 - 1, 2**63]
    np.testing.assert_array_equal(_popcounts(words), [bin(int(w)).count("1") for w in words])


_floats = st.sampled_from([np.float32, np.float64])


@given(d=st.integers(1, 200), rows=st.integers(1, 5), dtype=_floats, seed=st.integers(0, 2**31))
def test_pack_signs_bits_any_d(d, rows, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d)).astype(dtype)
    x[rng.random(x.shape) < 0.1] = 0.0  # sign(0) = +1
    x[rng.random(x.shape) < 0.05] = -0.0
    bits = hadref.pack_signs(x)
    assert bits.dtype == np.uint64 and bits.shape == (rows, (d + 63) // 64)
    np.testing.assert_array_equal(bits, _reference_bits(x))
    if d % 64:  # padding bits of the last word stay zero
        assert (bits[:, -1] >> np.uint64(d % 64) == 0).all()


@given(d=st.integers(1, 200), m=st.integers(1, 6), n=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_packed_dots_equal_float_dots_of_signs(d, m, n, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((m, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    qb, kb = hadref.pack_signs(q), hadref.pack_signs(k)
    pop = np.vectorize(lambda w: bin(int(w)).count("1"))(qb[:, None, :] ^ kb[None, :, :]).sum(-1)
    np.testing.assert_array_equal(d - 2 * pop, _signs(q) @ _signs(k).T)
    # and through the kernel: with N = n every score comes back
    idx, scores = hadref.hamming_topn(qb, kb, d, n)
    full = np.take_along_axis(_signs(q) @ _signs(k).T, idx, axis=1)
    np.testing.assert_array_equal(scores, full)


@settings(max_examples=60)
@given(data=st.data(), d=st.sampled_from([1, 3, 8, 63, 64, 65, 100, 128, 130]),
       m=st.integers(1, 7), n=st.integers(1, 40), top_n=st.integers(1, 45),
       causal=st.booleans())
def test_hamming_topn_equals_reference(data, d, m, n, top_n, causal):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q = rng.standard_normal((m, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    if data.draw(st.booleans()):  # duplicated keys: exact ties everywhere
        k = k[rng.integers(0, max(1, n // 3), size=n)]
    valid = rng.random(n) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), d, top_n,
                                      key_mask=valid, causal=causal)
    ref_idx, ref_scores = _reference_topn(q, k, top_n, valid, causal)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores)
    assert idx.dtype == np.int32 and scores.dtype == np.int32


def test_hamming_topn_batched_leading_dims_and_broadcast_mask():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 3, 5, 70)).astype(np.float32)
    k = rng.standard_normal((2, 3, 11, 70)).astype(np.float32)
    mask = rng.random((2, 1, 11)) < 0.7
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), 70, 4, mask)
    for b in range(2):
        for h in range(3):
            ri, rs = _reference_topn(q[b, h], k[b, h], 4, mask[b, 0])
            np.testing.assert_array_equal(idx[b, h], ri)
            np.testing.assert_array_equal(scores[b, h], rs)


def test_hamming_topn_all_tied_takes_lowest_indices():
    q = np.zeros((3, 64), np.float32)
    k = np.zeros((10, 64), np.float32)
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), 64, 4)
    np.testing.assert_array_equal(idx, np.tile(np.arange(4), (3, 1)))
    assert (scores == 64).all()


def test_d_of_several_words():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, 300)).astype(np.float32)
    k = rng.standard_normal((20, 300)).astype(np.float32)
    idx, scores = hadref.hamming_topn(hadref.pack_signs(q), hadref.pack_signs(k), 300, 6)
    ri, rs = _reference_topn(q, k, 6, np.ones(20, bool))
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_array_equal(scores, rs)


def test_hamming_topn_bad_input():
    bits = hadref.pack_signs(np.ones((2, 64), np.float32))
    with pytest.raises(HadrefError, match="top_n"):
        hadref.hamming_topn(bits, bits, 64, 0)
    with pytest.raises(HadrefError, match="q_bits: expected uint64"):
        hadref.hamming_topn(bits.astype(np.int64), bits, 64, 1)
    with pytest.raises(HadrefError, match="words per row"):
        hadref.hamming_topn(bits, bits, 65, 1)
    with pytest.raises(HadrefError, match="leading dims"):
        hadref.hamming_topn(bits[None], np.stack([bits, bits]), 64, 1)
    with pytest.raises(HadrefError, match="key_mask"):
        hadref.hamming_topn(bits, bits, 64, 1, key_mask=np.ones(3, bool))
    with pytest.raises(HadrefError, match="x: expected float32"):
        hadref.pack_signs(np.ones((2, 3), np.int32))
    with pytest.raises(HadrefError, match="finite"):
        hadref.pack_signs(np.array([1.0, np.inf]))


@njit
def _count_at_most_jit(levels, limit, t):
    return _count_at_most(levels, limit, t)


@pytest.mark.parametrize("limit", [0, 1, 16383, 16384, 16385, 40000, 70000])
def test_counting_pass_is_exact_across_int16_blocks(limit):
    """The counting pass sums in int16 blocks of 16384 keys: exact for rows longer than
    an int16 can count, and when every key is counted (the worst case for overflow)."""
    rng = np.random.default_rng(limit)
    levels = rng.integers(0, 66, size=max(limit, 1)).astype(np.int16)
    for t in (-1, 0, 31, 64, 65):
        assert _count_at_most_jit(levels, limit, t) == int(np.count_nonzero(levels[:limit] <= t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_nonfinite_rows(dtype):
    from hadref.had.kernels.finite import count_nonfinite_rows

    info = np.finfo(dtype)
    x = np.zeros((7, 5), dtype)
    x[0, 0] = info.max  # finite extremes are not flagged
    x[1, 4] = -info.max
    x[2, 1] = info.smallest_subnormal
    assert count_nonfinite_rows(x) == 0
    x[3, 2] = np.nan
    x[4, 0] = np.inf
    x[5, 4] = -np.inf
    x[5, 3] = np.nan  # two in one row: counted once
    assert count_nonfinite_rows(x) == 3


def test_stale_numba_cache_is_dropped_when_any_kernel_source_changes(tmp_path):
    from hadref.had.kernels import _drop_stale_cache

    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "caller.py").write_text("Y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    compiled = [cache / "caller.f-1.py311.nbi", cache / "caller.f-1.py311.1.nbc"]
    other = cache / "caller.cpython-311.pyc"
    for path in compiled + [other]:
        path.write_bytes(b"x")
    assert _drop_stale_cache(tmp_path)  # no stamp yet: dropped, stamp written
    assert not any(p.exists() for p in compiled) and other.exists()
    for path in compiled:
        path.write_bytes(b"x")
    assert not _drop_stale_cache(tmp_path)  # sources unchanged: kept
    assert all(p.exists() for p in compiled)
    (tmp_path / "helper.py").write_text("X = 3\n")  # only the inlined helper changes
    assert _drop_stale_cache(tmp_path)
    assert not any(p.exists() for p in compiled)

"""The tile kernel's 32-lane IR primitives (hadref.had.kernels.simd) against NumPy references.

Every primitive is tested with both level types (uint8, uint16). The IR is the same for
every x86-64 host; ``tests/test_kernels_avx2.py`` runs these tests again on the code LLVM
makes for an AVX2-only CPU (``NUMBA_CPU_NAME=haswell``), so an AVX-512 machine checks
both widths' machine code.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from hadref.had.kernels import simd

LANES = simd.LANES
LEVEL_TYPES = [np.uint8, np.uint16]
SLOTS = np.array([simd.lane_slot(r) for r in range(LANES)])


def _lanes(q):
    """(W, 32) queries in row order -> the primitives' lane order (simd.lane_slot)."""
    out = np.empty_like(q)
    out[:, SLOTS] = q
    return out


@njit
def _levels_dense(q_lanes, k_bits, stop, lev, top):
    simd.tile_levels_dense(q_lanes, k_bits, stop, lev, top)


@njit
def _levels(q_lanes, k_bits, valid, limit, stop, invalid, lev, top):
    simd.tile_levels(q_lanes, k_bits, valid, limit, stop, invalid, lev, top)


@njit
def _count(lev, start, stop, probe, count):
    simd.count_at_most(lev, start, stop, probe, count)


@njit
def _select(lev, start, threshold, ties_left, picks):
    simd.select_block(lev, start, threshold, ties_left, picks)


@njit
def _wsum(acc, r, v, start, picks, lev, weight):
    return simd.weighted_rows_sum_256(acc, r, 0, v, start, picks, lev, weight)


@njit
def _wsum_narrow(acc, r, col, v, start, picks, lev, weight, wide):
    if wide:
        return simd.weighted_rows_sum_32(acc, r, col, v, start, picks, lev, weight)
    return simd.weighted_rows_sum_1(acc, r, col, v, start, picks, lev, weight)


def _popcount(x):
    return np.array([bin(int(a)).count("1") for a in x.reshape(-1)]).reshape(x.shape)


def test_lane_slots_are_a_permutation():
    assert sorted(SLOTS) == list(range(LANES))


@pytest.mark.parametrize("lev_type", LEVEL_TYPES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), words=st.integers(1, 3), n=st.integers(0, 80),
       dense=st.booleans())
def test_tile_levels_equal_popcounts(lev_type, seed, words, n, dense):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2**64, (words, LANES), dtype=np.uint64)
    k = rng.integers(0, 2**64, (max(n, 1), words), dtype=np.uint64)
    pc = sum(_popcount(q[w][None, :] ^ k[:n, w][:, None]) for w in range(words)).reshape(n, LANES)
    lev = np.full((n + 1, LANES), 7, lev_type)
    top = np.zeros(LANES, np.uint16)
    if dense and words == 1:
        _levels_dense(_lanes(q), k, n, lev, top)
        expected = pc
    else:
        valid = rng.random(max(n, 1)) < 0.7
        limit = rng.integers(0, n + 2, LANES).astype(np.int32)
        bad = 64 * words + 1
        _levels(_lanes(q), k, valid, limit, n, np.uint16(bad), lev, top)
        seen = valid[:n, None] & (np.arange(n)[:, None] < limit[None, :])
        expected = np.where(seen, pc, bad)
    np.testing.assert_array_equal(lev[:n], expected)
    assert (lev[n] == 7).all()  # nothing written past stop
    empty = np.iinfo(lev_type).max
    np.testing.assert_array_equal(top, expected.min(axis=0) if n else np.full(LANES, empty))


def test_tile_levels_of_many_words_fill_16_bits():
    """512 words (d 32768): levels up to 32768 still pack into 16-bit lanes."""
    words, n = 512, 3
    q = np.zeros((words, LANES), np.uint64)
    k = np.full((n, words), 2**64 - 1, np.uint64)
    lev = np.zeros((n, LANES), np.uint16)
    top = np.zeros(LANES, np.uint16)
    _levels(_lanes(q), k, np.ones(n, bool), np.full(LANES, n, np.int32), n, np.uint16(0), lev,
            top)
    assert (lev == 64 * words).all() and (top == 64 * words).all()


@pytest.mark.parametrize("lev_type", LEVEL_TYPES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 255), high=st.sampled_from([70, 256]))
def test_count_at_most_counts_every_lane(lev_type, seed, n, high):
    rng = np.random.default_rng(seed)
    lev = rng.integers(0, high, (n + 1, LANES)).astype(lev_type)
    probe = rng.integers(0, high, LANES).astype(np.uint16)
    start = int(rng.integers(0, n + 1))
    count = rng.integers(0, 5, LANES).astype(np.int64)
    before = count.copy()
    _count(lev, start, n, probe, count)
    np.testing.assert_array_equal(count - before, (lev[start:n] <= probe).sum(axis=0))


@pytest.mark.parametrize("lev_type, span", [(np.uint8, 255), (np.uint16, 65535)])
def test_count_at_most_full_span(lev_type, span):
    lev = np.zeros((span, LANES), lev_type)
    count = np.zeros(LANES, np.int64)
    _count(lev, 0, span, np.zeros(LANES, np.uint16), count)
    assert (count == span).all()


@pytest.mark.parametrize("lev_type", LEVEL_TYPES)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), levels=st.integers(1, 6), ties=st.integers(0, 64),
       offset=st.sampled_from([0, 120, 249]))
def test_select_block_takes_below_then_lowest_ties(lev_type, seed, levels, ties, offset):
    # offset 249: levels up to 255, the top of the 8-bit range (compared unsigned)
    rng = np.random.default_rng(seed)
    lev = (offset + rng.integers(0, levels, (64, LANES))).astype(lev_type)  # many ties
    threshold = (offset + rng.integers(0, levels + 1, LANES)).clip(0, 255).astype(np.uint16)
    ties_left = rng.integers(0, ties + 1, LANES).astype(np.uint16)
    expected_left = ties_left.astype(np.int64).copy()
    expected = np.zeros(LANES, np.uint64)
    for r in range(LANES):
        bits = 0
        for t in range(64):
            x = lev[t, r]
            if x < threshold[r] or (x == threshold[r] and expected_left[r] > 0):
                expected_left[r] -= x == threshold[r]
                bits |= 1 << t
        expected[r] = bits
    picks = np.zeros(LANES, np.uint64)
    _select(lev, 0, threshold, ties_left, picks)
    np.testing.assert_array_equal(picks, expected)
    np.testing.assert_array_equal(ties_left, expected_left)


@pytest.mark.parametrize("lev_type", LEVEL_TYPES)
def test_select_block_reads_its_own_block(lev_type):
    lev = np.full((192, LANES), 9, lev_type)
    lev[64 + 5] = 0  # key 69: bit 5 of the second block
    lev[64 + 63, 3] = 0  # key 127, lane 3: the top bit
    picks = np.zeros(LANES, np.uint64)
    _select(lev, 64, np.full(LANES, 1, np.uint16), np.zeros(LANES, np.uint16), picks)
    expected = np.full(LANES, 1 << 5, np.uint64)
    expected[3] |= np.uint64(1 << 63)
    np.testing.assert_array_equal(picks, expected)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), dtype=st.sampled_from([np.float32, np.float64]),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), lev_type=st.sampled_from(LEVEL_TYPES))
def test_weighted_rows_sum_equals_numpy(seed, dtype, density, lev_type):
    rng = np.random.default_rng(seed)
    wide = 256 // np.dtype(dtype).itemsize
    dv = wide + 9  # one register chunk, then the narrower widths on the tail
    v = rng.standard_normal((128, dv)).astype(dtype)
    lev = rng.integers(0, 10, (128, LANES)).astype(lev_type)
    weight = rng.random((LANES, 12)).astype(dtype)
    acc = rng.standard_normal((LANES, dv)).astype(dtype)
    r = int(rng.integers(0, LANES))
    start = 64
    taken = np.flatnonzero(rng.random(64) < density)
    picks = np.uint64(sum(1 << int(t) for t in taken))
    w = weight[r, lev[start + taken, r]].astype(np.float64)
    expected = acc[r].astype(np.float64) + w @ v[start + taken].astype(np.float64)
    others = np.delete(acc, r, axis=0).copy()
    total = _wsum(acc, r, v, start, picks, lev, weight)
    narrow = 32 // np.dtype(dtype).itemsize
    total_narrow = _wsum_narrow(acc, r, wide, v, start, picks, lev, weight, True)
    for col in range(wide + narrow, dv):
        _wsum_narrow(acc, r, col, v, start, picks, lev, weight, False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(acc[r], expected, rtol=tol, atol=tol)
    np.testing.assert_array_equal(np.delete(acc, r, axis=0), others)  # other rows untouched
    assert total == total_narrow
    np.testing.assert_allclose(total, w.sum(), rtol=1e-12)

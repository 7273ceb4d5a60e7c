"""The tile kernel: HAD attention of 32 query rows of one (batch, head) at a time.

The row kernel (``fused.attend_rows``) selects and sums one query row at a time; per
survivor it walks a bit mask and gathers a 256-byte value row from L2, which is most of
its time. Here the 32 rows of a tile share every pass over the keys, key-major:

1. levels: ``lev[j, r] = popcount(q_r XOR k_j)`` for all keys j, one 32-lane vector per
   key (``simd.tile_levels*``: the 64-bit popcounts of four groups of 8 rows interleaved
   into 16-bit lanes by shifts and ORs, then 8-bit lanes for d <= 254), with each row's
   best (smallest) level;
2. threshold search: the same rule and search as ``select.counting_topn`` (check the
   guess, gallop away from it, bisect), all 32 rows in lockstep: one vectorized counting
   pass (``simd.count_at_most``) answers every row's probe at once;
3. per block of 64 keys: the keys each row takes (``simd.select_block``: below its
   threshold, or at it while tie places are left, lowest index first), then each row's
   weighted sum of those value rows with its running sums in registers
   (``simd.weighted_rows_sum_*``). A block of V (16 KiB at dv = 64 float32) stays in L1
   while the 32 rows use it, and V is read in key order.

Sharing the passes is what makes it faster than the row kernel at full prefill (figures
in ``benchmarks/README.md``): the value sum runs near the FMA units' rate. A tile costs
the same for 1 row as for 32, so short queries (decoding) keep the row kernel
(``attention._TILE_MIN_ROWS``).
Limits: levels are 8-bit lanes for d <= 254 (half the traffic of the counting passes and
half the workspace) and 16-bit lanes up to d = 32766 (guaranteed by the caller); tie
places are lent a block (64) at a time, so any N fits.
"""

import numpy as np
from numba import njit

from hadref.had.kernels import simd
from hadref.had.kernels.causal import key_limit, row_top_n
from hadref.had.kernels.softmax_av import finish, level_weights

LANES = simd.LANES
# stop_after codes of attend_tile: where the benchmark's split stops the kernel
STOP_LEVELS, STOP_SELECT, RUN_ALL = 1, 2, 3
BLOCK = simd.BLOCK

# per-lane search state: rows of the int64 lane workspace
_COUNT, _LO, _HI, _BELOW, _STEP, _MODE, _N_EFF, _TIES = range(8)
# search modes: probing the guess, galloping down, galloping up, bisecting, done
_GUESS, _DOWN, _UP, _BISECT, _DONE = range(5)
# rows of the uint16 lane workspace
_PROBE, _THRESHOLD, _TIES_BLOCK, _TOP = range(4)


@njit(cache=True, inline="always")
def _count(lev, stop, probe, count):
    """count[r] = #{j < stop : lev[j, r] <= probe[r]}."""
    for r in range(LANES):
        count[r] = 0
    span = 255 if lev.itemsize == 1 else 65535  # keys per call: lane counts in lev's type
    for start in range(0, stop, span):
        simd.count_at_most(lev, start, min(stop, start + span), probe, count)


@njit(cache=True, inline="always")
def _search_step(st, u16, r, d):
    """Advance lane r's search by the count of its last probe; set its next probe.
    Returns True while the lane is still searching. Same steps as ``counting_topn``."""
    mode = st[_MODE, r]
    probe = np.int64(u16[_PROBE, r])
    cp = st[_COUNT, r]
    n_eff = st[_N_EFF, r]
    if mode == _GUESS:
        if cp >= n_eff:  # the threshold is the guess or under it
            st[_LO, r], st[_HI, r], st[_BELOW, r], mode = 0, probe, 0, _DOWN
        else:
            st[_LO, r], st[_HI, r], st[_BELOW, r], mode = probe + 1, d, cp, _UP
        st[_STEP, r] = 1
    elif mode == _DOWN:
        if cp >= n_eff:
            st[_HI, r] = probe
            st[_STEP, r] *= 2
        else:
            st[_LO, r], st[_BELOW, r], mode = probe + 1, cp, _BISECT
    elif mode == _UP:
        if cp >= n_eff:
            st[_HI, r], mode = probe, _BISECT
        else:
            st[_LO, r], st[_BELOW, r] = probe + 1, cp
            st[_STEP, r] *= 2
    elif cp >= n_eff:
        st[_HI, r] = probe
    else:
        st[_LO, r], st[_BELOW, r] = probe + 1, cp
    lo, hi, step = st[_LO, r], st[_HI, r], st[_STEP, r]
    if lo >= hi:
        mode = _DONE
    elif mode == _DOWN and hi - step < lo:
        mode = _BISECT
    elif mode == _UP and lo + step - 1 >= hi:
        mode = _BISECT
    if mode == _DOWN:
        u16[_PROBE, r] = hi - step
    elif mode == _UP:
        u16[_PROBE, r] = lo + step - 1
    elif mode == _BISECT:
        u16[_PROBE, r] = (lo + hi) // 2
    else:
        u16[_PROBE, r] = 0  # a finished lane's count is not read
    st[_MODE, r] = mode
    return mode != _DONE


@njit(cache=True, inline="always")
def _thresholds(lev, stop, d, guess, st, u16):
    """Every lane's threshold level (lo) and count strictly above it (below), lockstep.

    st[_N_EFF] holds each lane's N_eff (0: nothing to select). The threshold is the
    smallest t with count(level <= t) >= N_eff; ``guess`` (0..d) is the first probe.
    """
    searching = 0
    for r in range(LANES):
        u16[_PROBE, r] = guess
        if st[_N_EFF, r] > 0:
            st[_MODE, r] = _GUESS
            searching += 1
        else:
            st[_MODE, r] = _DONE  # lo and below are not read for such a lane
    while searching > 0:
        _count(lev, stop, u16[_PROBE], st[_COUNT])
        searching = 0
        for r in range(LANES):
            if st[_MODE, r] != _DONE and _search_step(st, u16, r, d):
                searching += 1


@njit(cache=True, inline="always")
def _block_sums(acc, r, v, start, bits, lev, weight, wide, narrow):
    """acc[r] += the weighted value rows of lane r's picks ``bits`` in one block; returns
    the weights' sum. Columns in register-sized chunks: ``wide`` (256 bytes), then
    ``narrow`` (32 bytes) elements, then single. The two are computed once per tile: an
    integer division by the item size in here was not always hoisted, which slowed the
    value sums down."""
    dv = v.shape[1]
    total = -1.0
    col = 0
    while col + wide <= dv:
        s = simd.weighted_rows_sum_256(acc, r, col, v, start, bits, lev, weight)
        total = s if total < 0.0 else total
        col += wide
    while col + narrow <= dv:
        s = simd.weighted_rows_sum_32(acc, r, col, v, start, bits, lev, weight)
        total = s if total < 0.0 else total
        col += narrow
    while col < dv:
        s = simd.weighted_rows_sum_1(acc, r, col, v, start, bits, lev, weight)
        total = s if total < 0.0 else total
        col += 1
    return total


@njit(cache=True)
def attend_tile(q_bits, k_bits, v, valid, valid_before, i0, rows, m, n, d, top_n, ratio,
                decay, causal, guess, stop_after, out, lev, q_lanes, limit, st, u16, picks,
                weight, total, acc):
    """Rows ``i0 .. i0+rows-1`` (rows <= 32) of one group into ``out`` (rows, dv).

    q_bits (m, W), k_bits (>= n, W) uint64; v (>= n, dv); valid (>= n,) bool;
    valid_before (>= n+1,) int32 prefix counts; top_n, ratio: each row keeps
    ``causal.row_top_n(top_n, ratio, its selectable keys)`` (ratio 0.0: the fixed top_n;
    else N per row, top_n the cap); decay: ``softmax_av.level_decay``; guess:
    a likely threshold level (the last tile's); stop_after: RUN_ALL (the attention), or
    STOP_LEVELS / STOP_SELECT to stop after the levels / after the selection (the
    benchmark's split, ``attention._attend(stop_after=...)``; out is then not written).
    Workspaces:
    lev (>= n + 64, 32) uint8 (d <= 254) or uint16;
    q_lanes (W, 32) uint64; limit (32,) int32; st (8, 32) int64; u16 (4, 32) uint16;
    picks (32,) uint64; weight (32, d+2) and acc (32, dv) of v's dtype; total (32,)
    float64. Returns the last selecting lane's threshold (the next tile's guess).
    """
    words = q_bits.shape[1]
    dv = v.shape[1]
    stop = 0
    for r in range(LANES):
        lim = 0
        if r < rows:
            i = i0 + r
            lim = key_limit(i, m, n, causal)
        for w in range(words):
            q_lanes[w, simd.lane_slot(r)] = q_bits[i0 + r, w] if r < rows else np.uint64(0)
        limit[r] = lim
        stop = max(stop, lim)
        st[_N_EFF, r] = row_top_n(top_n, ratio, valid_before[lim])
    dense = words == 1 and valid_before[stop] == stop
    for r in range(rows):
        dense = dense and limit[r] == stop
    if dense:
        simd.tile_levels_dense(q_lanes, k_bits, stop, lev, u16[_TOP])
    else:
        simd.tile_levels(q_lanes, k_bits, valid, limit, stop, np.uint16(d + 1), lev, u16[_TOP])
    if stop_after == STOP_LEVELS:
        return guess
    _thresholds(lev, stop, d, guess, st, u16)
    for r in range(LANES):
        n_eff = st[_N_EFF, r]
        total[r] = 0.0
        for c in range(dv):
            acc[r, c] = 0.0
        if n_eff > 0:
            thr = st[_LO, r]
            u16[_THRESHOLD, r] = thr
            st[_TIES, r] = n_eff - st[_BELOW, r]
            # the row's best level is the softmax's shift
            level_weights(n_eff, np.int64(u16[_TOP, r]), thr, decay, weight[r])
            guess = thr
        else:
            u16[_THRESHOLD, r] = 0  # nothing is below level 0 and no tie place is left
            st[_TIES, r] = 0
    pad = d + 1  # above every threshold (at most d): keys past the end are never taken
    for j in range(stop, (stop + BLOCK - 1) // BLOCK * BLOCK):
        for r in range(LANES):
            lev[j, r] = pad
    wide = 256 // v.itemsize
    narrow = 32 // v.itemsize
    for start in range(0, stop, BLOCK):
        # tie places in small lanes: hand out at most a block's worth, take back the rest
        for r in range(LANES):
            lent = min(st[_TIES, r], BLOCK)
            st[_TIES, r] -= lent
            u16[_TIES_BLOCK, r] = lent
        simd.select_block(lev, start, u16[_THRESHOLD], u16[_TIES_BLOCK], picks)
        for r in range(LANES):
            st[_TIES, r] += u16[_TIES_BLOCK, r]
        if stop_after == STOP_SELECT:
            continue
        for r in range(rows):
            if picks[r] != 0:
                total[r] += _block_sums(acc, r, v, start, picks[r], lev, weight, wide, narrow)
    if stop_after == STOP_SELECT:
        return guess
    for r in range(rows):
        finish(acc[r], total[r], st[_N_EFF, r], out[r])
    return guess

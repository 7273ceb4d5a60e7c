"""Top-N selection per query row, ties to the lower key index.

Two kernels, one rule. ``counting_topn`` works on the d+1 integer popcount levels of the
packed path: the threshold level is found by a binary search over the d+1 levels, each
step one vectorized counting pass over the row (``ceil(log2(d+2))`` passes of a few
cycles per 16 keys: cheaper than a histogram, whose increments of crowded bins
serialize), then one pass gathers the survivors; no sort. ``float_topn_mask`` works on
the continuous scores of the training path (tanh stages): a quickselect over the total
order (score descending, index ascending) finds the same set in expected O(n).
"""

import numpy as np
from numba import njit, prange

from hadref.had.kernels.causal import row_top_n
from hadref.had.kernels.popcount import ctpop64, cttz64

_COUNT_BLOCK = 16384  # keys per int16 partial count (< 32768: no overflow)


@njit(cache=True, inline="always")
def _count_at_most(levels, limit, t):
    """Number of keys among ``0 .. limit-1`` with ``levels[j] <= t``.

    The partial count is an int16 re-cast every step: Numba widens small-integer sums to
    int64, which gives 4 keys per AVX2 instruction instead of 16. Blocks of
    ``_COUNT_BLOCK`` keys keep the int16 from overflowing.
    """
    tt = np.int16(t)
    count = 0
    for b0 in range(0, limit, _COUNT_BLOCK):
        b1 = min(limit, b0 + _COUNT_BLOCK)
        part = np.int16(0)
        for j in range(b0, b1):
            part = np.int16(part + np.int16(levels[j] <= tt))
        count += np.int64(part)
    return count


@njit(cache=True, inline="always")
def counting_topn(levels, limit, selectable, d, top_n, guess, marks, out_idx, out_lev):
    """Select the N smallest levels (largest scores) among keys ``0 .. limit-1``.

    levels: (>= limit,) int16 from ``row_levels`` (``d + 1`` = padding, never selected).
    selectable: the number of valid keys among the first ``limit``.
    guess:  a level where the threshold probably lies (the previous row's threshold: rows
            of one head have similar score distributions); any value in 0..d is correct,
            a good one saves counting passes.
    marks:  (10, >= ceil(limit/64)) uint64 scratch (see ``_mark``).
    out_idx: (>= N_eff,) int32, out_lev: (>= N_eff,) int16, written in positions
             ``0 .. N_eff-1``: the survivors in key-index order and their levels.
    Returns ``(N_eff, top_level, threshold_level)``: N_eff = min(top_n, selectable); every
    key with a level below the threshold is selected, and the keys at the threshold level
    fill the remaining places lowest index first. ``top_level`` is the smallest level
    selected (the row's maximum score).

    The threshold is the smallest t in 0..d with count(level <= t) >= N_eff: two counting
    passes check the guess (the usual case), otherwise galloping away from it and
    bisecting find it; each probe is one vectorized pass over the row.
    """
    n_eff = min(top_n, selectable)
    if n_eff == 0:
        return 0, 0, 0
    guess = min(max(guess, 0), d)
    at_most_guess = _count_at_most(levels, limit, guess)
    # bracket: count(<= lo - 1) = below < n_eff <= count(<= hi)
    if at_most_guess >= n_eff:  # the threshold is the guess or under it
        lo, hi, below = 0, guess, 0
        step = 1
        while hi - step >= lo:
            probe = hi - step
            cp = _count_at_most(levels, limit, probe)
            if cp >= n_eff:
                hi = probe
                step *= 2
            else:
                lo = probe + 1
                below = cp
                break
    else:  # above it
        lo, hi, below = guess + 1, d, at_most_guess
        step = 1
        while lo + step - 1 < hi:
            probe = lo + step - 1
            cp = _count_at_most(levels, limit, probe)
            if cp >= n_eff:
                hi = probe
                break
            lo = probe + 1
            below = cp
            step *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        cp = _count_at_most(levels, limit, mid)
        if cp >= n_eff:
            hi = mid
        else:
            lo = mid + 1
            below = cp
    thr = lo
    _mark(levels, limit, thr, marks)
    top = _gather(levels, limit, marks[0], marks[1], n_eff - below, n_eff, out_idx, out_lev)
    return n_eff, top, thr


_BYTE_LSBS = np.uint64(0x0101010101010101)
_GATHER_BITS = np.uint64(0x0102040810204080)  # (x * this) >> 56: the low bits of x's 8 bytes


@njit(cache=True, inline="always")
def _mark(levels, limit, thr, marks):
    """Bit masks of the keys below and at level thr, 64 keys per word.

    marks: (2 + 8, W) uint64 with W = ceil(limit/64): rows 0 and 1 are written (below,
    at); rows 2.. are scratch for one byte per key. A vectorized pass writes the byte
    ``1[level < thr] | 2 * 1[level == thr]``; then every 8 bytes become 8 mask bits by one
    multiplication (the movemask trick: AVX2 has no compress and LLVM does not emit
    ``vpmovmskb`` for this loop), cheaper than shifting each key's bit in.
    """
    words = (limit + 63) // 64
    flags = marks[2:].view(np.uint8).reshape(-1)
    t = np.int16(thr)
    for j in range(limit):
        lev = levels[j]
        flags[j] = np.uint8(lev < t) | (np.uint8(lev == t) << np.uint8(1))
    for j in range(limit, 64 * words):
        flags[j] = 0
    flags8 = marks[2:].reshape(-1)
    for w in range(words):
        below_bits = np.uint64(0)
        at_bits = np.uint64(0)
        for u in range(8):
            x = flags8[8 * w + u]
            shift = np.uint64(8 * u)
            below_bits |= (((x & _BYTE_LSBS) * _GATHER_BITS) >> np.uint64(56)) << shift
            x_at = (x >> np.uint64(1)) & _BYTE_LSBS
            at_bits |= ((x_at * _GATHER_BITS) >> np.uint64(56)) << shift
        marks[0, w] = below_bits
        marks[1, w] = at_bits


@njit(cache=True, inline="always")
def _gather(levels, limit, below_words, at_words, at_thr, n_eff, out_idx, out_lev):
    """Walk the marked keys in index order: all below the threshold, the first ``at_thr``
    at it. The scalar work is per survivor (TZCNT over set bits), not per key; a word
    whose threshold keys all fit is taken whole (one POPCNT), only the word where the
    threshold places run out is walked bit by bit. Returns the smallest level gathered."""
    one = np.uint64(1)
    placed = 0
    top = np.int64(1 << 30)
    for w in range((limit + 63) // 64):
        take = below_words[w]
        at_bits = at_words[w]
        if at_thr > 0 and at_bits != 0:
            at_count = np.int64(ctpop64(at_bits))
            if at_count <= at_thr:
                take |= at_bits
                at_thr -= at_count
            else:
                while at_thr > 0:
                    lowest = at_bits & (~at_bits + one)
                    take |= lowest
                    at_bits ^= lowest
                    at_thr -= 1
        base = np.uint64(64 * w)
        while take != 0:
            # unsigned indices: no negative-index wrap-around code in the per-survivor loop
            j = base + cttz64(take)
            lev = levels[j]
            out_idx[np.uint64(placed)] = j
            out_lev[np.uint64(placed)] = lev
            top = min(top, np.int64(lev))
            placed += 1
            take &= take - one
        if placed == n_eff:
            break
    return top


@njit(cache=True, inline="always")
def order_by_level(sel_idx, sel_lev, n_eff, top, thr, count, out_idx, out_lev):
    """Counting sort of the survivors by level (stable: index order kept within a level).

    sel_idx, sel_lev: (>= n_eff,) from ``counting_topn`` (index order).
    count: (>= thr + 2,) int32 scratch. out_idx, out_lev: (>= n_eff,) written: level
    ascending (score descending), index ascending on ties.
    """
    for lev in range(top, thr + 2):
        count[lev] = 0
    for t in range(n_eff):
        count[sel_lev[t] + 1] += 1
    for lev in range(top + 1, thr + 1):
        count[lev] += count[lev - 1]
    # count[lev] is now the first position of level lev
    for t in range(n_eff):
        lev = sel_lev[t]
        p = count[lev]
        out_idx[p] = sel_idx[t]
        out_lev[p] = lev
        count[lev] = p + 1


@njit(cache=True, inline="always")
def _before(sa, a, sb, b):
    """True when key a (score sa) ranks before key b (score sb): larger score, or equal
    score and lower index. Scalars only: no array reference counting per comparison."""
    return sa > sb or (sa == sb and a < b)


@njit(cache=True, inline="always")
def _quickselect(scores, idx, count, kth):
    """Reorder ``idx[:count]`` so that its first ``kth`` entries are the ``kth`` best keys.

    Hoare-style partition around a median-of-three pivot under the total order of
    ``_before`` (no two keys compare equal, so ties in score cannot stall it).
    """
    lo = 0
    hi = count - 1
    while hi > lo:
        mid = (lo + hi) // 2
        # median of three, by the ranking order
        a = idx[lo]
        b = idx[mid]
        c = idx[hi]
        if _before(scores[b], b, scores[a], a):
            a, b = b, a
        if _before(scores[c], c, scores[b], b):
            b, c = c, b
            if _before(scores[b], b, scores[a], a):
                a, b = b, a
        pivot = b
        pivot_score = scores[pivot]
        i = lo
        j = hi
        while i <= j:
            while _before(scores[idx[i]], idx[i], pivot_score, pivot):
                i += 1
            while _before(pivot_score, pivot, scores[idx[j]], idx[j]):
                j -= 1
            if i <= j:
                tmp = idx[i]
                idx[i] = idx[j]
                idx[j] = tmp
                i += 1
                j -= 1
        # now idx[lo..j] rank before or equal the pivot, idx[i..hi] after or equal
        if kth - 1 <= j:
            hi = j
        elif kth - 1 >= i:
            lo = i
        else:
            return


@njit(cache=True, inline="always")
def _select_row(scores_row, valid_row, top_n, ratio, idx):
    """The valid keys of one row into ``idx``, its best N_eff first, N_eff =
    ``causal.row_top_n(top_n, ratio, count)`` (ratio 0.0: min(top_n, count)).
    Returns N_eff."""
    count = 0
    for j in range(scores_row.shape[0]):
        if valid_row[j]:
            idx[count] = j
            count += 1
    keep = row_top_n(top_n, ratio, count)
    if count <= keep:
        return count
    _quickselect(scores_row, idx, count, keep)
    return keep


@njit(cache=True)
def _mask_chunk(c, chunks, scores, valid, top_n, keep, idx):
    for r in range(c, scores.shape[0], chunks):
        kept = _select_row(scores[r], valid[r], top_n, 0.0, idx)
        for j in range(scores.shape[1]):
            keep[r, j] = False
        for t in range(kept):
            keep[r, idx[t]] = True


@njit(cache=True, parallel=True)
def float_topn_mask(scores, valid, top_n, keep, idx_ws):
    """Top-N mask of each row of continuous scores.

    scores: (R, n) float32/float64 (finite).
    valid:  (R, n) bool, False = not selectable (padding).
    top_n:  N >= 1.
    keep:   (R, n) bool, written: True at the N_eff = min(N, valid keys) best valid keys
            (score descending, lower index on ties).
    idx_ws: (C, n) int64 scratch, one row per worker chunk.
    """
    chunks = idx_ws.shape[0]
    for c in prange(chunks):
        _mask_chunk(c, chunks, scores, valid, top_n, keep, idx_ws[c])


@njit(cache=True)
def _softmax_chunk(c, chunks, scores, valid, top_n, ratio, probs, idx):
    n = scores.shape[1]
    for r in range(c, scores.shape[0], chunks):
        kept = _select_row(scores[r], valid[r], top_n, ratio, idx)
        for j in range(n):
            probs[r, j] = 0.0
        if kept == 0:
            continue
        top = scores[r, idx[0]]
        for t in range(1, kept):
            top = max(top, scores[r, idx[t]])
        total = 0.0
        for t in range(kept):
            e = np.exp(np.float64(scores[r, idx[t]]) - np.float64(top))
            probs[r, idx[t]] = e
            total += e
        inv = 1.0 / total
        for t in range(kept):
            probs[r, idx[t]] *= inv


@njit(cache=True, parallel=True)
def float_topn_softmax(scores, valid, top_n, ratio, probs, idx_ws):
    """Softmax of each row over its top-N valid scores, zeros elsewhere.

    scores, valid, top_n, idx_ws as ``float_topn_mask``; ratio: 0.0 (every row keeps
    min(top_n, its valid keys)) or in (0, 1] (each row keeps
    ``causal.row_top_n(top_n, ratio, its valid keys)``: N per row, top_n the cap);
    probs: (R, n) of scores' dtype, written (exponentials and sums in float64; a row
    without a valid key is all zeros).
    """
    chunks = idx_ws.shape[0]
    for c in prange(chunks):
        _softmax_chunk(c, chunks, scores, valid, top_n, ratio, probs, idx_ws[c])

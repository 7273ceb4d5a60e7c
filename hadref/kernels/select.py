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


@njit(cache=True, inline="always")
def _count_at_most(levels, limit, t):
    count = 0
    for j in range(limit):
        count += np.int32(levels[j] <= t)
    return count


@njit(cache=True, inline="always")
def counting_topn(levels, limit, selectable, d, top_n, guess, out_idx, out_lev):
    """Select the N smallest levels (largest scores) among keys ``0 .. limit-1``.

    levels: (>= limit,) int16 from ``row_levels`` (``d + 1`` = padding, never selected).
    selectable: the number of valid keys among the first ``limit``.
    guess:  a level where the threshold probably lies (the previous row's threshold: rows
            of one head have similar score distributions); any value in 0..d is correct,
            a good one saves counting passes.
    out_idx: (>= N_eff,) int32, out_lev: (>= N_eff,) int16, written in positions
             ``0 .. N_eff-1``: the survivors in key-index order and their levels.
    Returns ``(N_eff, top_level, threshold_level)``: N_eff = min(top_n, selectable); every
    key with a level below the threshold is selected, and the keys at the threshold level
    fill the remaining places lowest index first. ``top_level`` is the smallest level
    selected (the row's maximum score).

    The threshold is the smallest t in 0..d with count(level <= t) >= N_eff: found by
    galloping from ``guess`` then bisecting, each probe one vectorized counting pass
    (two passes when the guess is right).
    """
    n_eff = min(top_n, selectable)
    if n_eff == 0:
        return 0, 0, 0
    if n_eff == selectable:  # every selectable key survives: no threshold search
        thr = d
        below = selectable - _count_equal(levels, limit, d)
    else:
        # invariant: count(<= lo - 1) < n_eff <= count(<= hi); below = count(<= lo - 1)
        g = min(max(guess, 0), d)
        c = _count_at_most(levels, limit, g)
        if c >= n_eff:
            hi = g
            lo = 0
            below = 0
            step = 1
            while hi - step >= 0:
                probe = hi - step
                cp = _count_at_most(levels, limit, probe)
                if cp >= n_eff:
                    hi = probe
                    step *= 2
                else:
                    lo = probe + 1
                    below = cp
                    break
        else:
            lo = g + 1
            below = c
            hi = d
            step = 1
            while lo + step - 1 < d:
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
            c = _count_at_most(levels, limit, mid)
            if c >= n_eff:
                hi = mid
            else:
                lo = mid + 1
                below = c
        thr = lo
    # one pass gathers the survivors in index order (branch-free but for its early exit)
    at_thr = n_eff - below  # places for keys at the threshold level, lowest index first
    seen_at_thr = 0
    placed = 0
    top = thr
    for j in range(limit):
        lev = levels[j]
        is_thr = lev == thr
        take = (lev < thr) | (is_thr & (seen_at_thr < at_thr))
        seen_at_thr += np.int32(is_thr)
        out_idx[placed] = j
        out_lev[placed] = lev
        top = min(top, lev) if take else top
        placed += np.int32(take)
        if placed == n_eff:
            break
    return n_eff, top, thr


@njit(cache=True, inline="always")
def _count_equal(levels, limit, t):
    count = 0
    for j in range(limit):
        count += np.int32(levels[j] == t)
    return count


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
def _better(scores, a, b):
    """True when key a ranks before key b: larger score, or equal score and lower index."""
    sa = scores[a]
    sb = scores[b]
    return sa > sb or (sa == sb and a < b)


@njit(cache=True)
def _quickselect(scores, idx, count, kth):
    """Reorder ``idx[:count]`` so that its first ``kth`` entries are the ``kth`` best keys.

    Hoare-style partition around a median-of-three pivot under the total order of
    ``_better`` (no two keys compare equal, so ties in score cannot stall it).
    """
    lo = 0
    hi = count - 1
    while hi > lo:
        mid = (lo + hi) // 2
        # median of three, by the ranking order
        a = idx[lo]
        b = idx[mid]
        c = idx[hi]
        if _better(scores, b, a):
            a, b = b, a
        if _better(scores, c, b):
            b, c = c, b
            if _better(scores, b, a):
                a, b = b, a
        pivot = b
        i = lo
        j = hi
        while i <= j:
            while _better(scores, idx[i], pivot):
                i += 1
            while _better(scores, pivot, idx[j]):
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


@njit(cache=True, parallel=True)
def float_topn_mask(scores, valid, top_n, keep):
    """Top-N mask of each row of continuous scores.

    scores: (R, n) float32/float64 (finite).
    valid:  (R, n) bool, False = not selectable (padding).
    top_n:  N >= 1.
    keep:   (R, n) bool, written: True at the N_eff = min(N, valid keys) best valid keys
            (score descending, lower index on ties).
    """
    rows, n = scores.shape
    for r in prange(rows):
        idx = np.empty(n, np.int64)
        count = 0
        for j in range(n):
            keep[r, j] = False
            if valid[r, j]:
                idx[count] = j
                count += 1
        if count <= top_n:
            for t in range(count):
                keep[r, idx[t]] = True
            continue
        _quickselect(scores[r], idx, count, top_n)
        for t in range(top_n):
            keep[r, idx[t]] = True

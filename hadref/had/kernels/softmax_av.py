"""Sparse softmax over the N survivors of a row and the value accumulation.

Scores take only d+1 values and the softmax is shift-invariant, so a survivor's weight
depends only on how many levels it lies below its row's best: one table of d+1
exponentials per call (``level_decay``) serves every row. The value sum is split so that the
fused driver can stream the values in key blocks: ``level_weights`` (once per row),
``accumulate`` (a range of survivors, any number of times; it also sums the weights),
``finish`` (normalize).
"""

import numpy as np
from numba import njit


@njit(cache=True)
def level_decay(two_scale, d):
    """(d + 1,) float64 table ``exp(-two_scale * k)``, k = 0..d: the softmax weight of a
    survivor ``k`` levels below its row's best. Computed once per call, so a row costs no
    exponential at all; entry 0 is exactly 1 (an infinite scale would give exp(nan))."""
    decay = np.empty(d + 1, np.float64)
    decay[0] = 1.0
    for k in range(1, d + 1):
        decay[k] = np.exp(-two_scale * k)
    return decay


@njit(cache=True, inline="always")
def level_weights(n_eff, top, last, decay, weight_of_level):
    """Fill ``weight_of_level[top..last]`` with ``decay[level - top]``.

    top, last: the smallest and largest level among a row's survivors
    level (``top`` is the row's maximum score, which makes the softmax stable without a
    max pass); decay: ``level_decay(two_scale, d)``, two_scale = 2 * sigma_q * sigma_k /
    sqrt(d) being one level step in logit units; weight_of_level: (d + 2,) of v's dtype.
    """
    if n_eff == 0:
        return
    for lev in range(top, last + 1):
        weight_of_level[lev] = decay[lev - top]


@njit(cache=True, inline="always")
def accumulate(sel_idx, sel_lev, start, stop, v, weight_of_level, acc):
    """``acc += sum_{t in [start, stop)} w(sel_lev[t]) * v[sel_idx[t]]``; returns
    ``sum w(sel_lev[t])`` over the same range in float64 (the softmax denominator's part,
    summed where the weights are loaded anyway).

    v: (n, dv) float32/float64; acc: (dv,) of v's dtype. Accumulating in v's dtype keeps
    the inner loop one vector FMA; for float32 the weights lie in [0, 1] and the error
    stays of order N * 6e-8 relative, well inside the 1e-5 the tests demand. Four value
    rows per sweep over acc: a quarter of the accumulator loads and stores.
    """
    dv = acc.shape[0]
    total = 0.0
    body = stop - (stop - start) % 4
    # unsigned indices: Numba emits negative-index wrap-around code for signed ones, a
    # noticeable part of this loop
    for t in range(start, body, 4):
        w0 = weight_of_level[np.uint64(sel_lev[t])]
        w1 = weight_of_level[np.uint64(sel_lev[t + 1])]
        w2 = weight_of_level[np.uint64(sel_lev[t + 2])]
        w3 = weight_of_level[np.uint64(sel_lev[t + 3])]
        r0 = v[np.uint64(sel_idx[t])]
        r1 = v[np.uint64(sel_idx[t + 1])]
        r2 = v[np.uint64(sel_idx[t + 2])]
        r3 = v[np.uint64(sel_idx[t + 3])]
        total += (np.float64(w0) + np.float64(w1)) + (np.float64(w2) + np.float64(w3))
        for c in range(dv):
            acc[c] += w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c]
    for t in range(body, stop):
        w = weight_of_level[sel_lev[t]]
        total += np.float64(w)
        row = v[sel_idx[t]]
        for c in range(dv):
            acc[c] += w * row[c]
    return total


@njit(cache=True, inline="always")
def finish(acc, total, n_eff, out_row):
    """out_row = acc / total; zeros when the row had no survivor."""
    dv = out_row.shape[0]
    if n_eff == 0:
        for c in range(dv):
            out_row[c] = 0.0
        return
    inv = 1.0 / total
    for c in range(dv):
        out_row[c] = acc[c] * inv


@njit(cache=True, inline="always")
def softmax_av_row(sel_idx, sel_lev, n_eff, top, last, v, decay, weight_of_level, acc,
                   out_row):
    """``out_row = sum_t p_t v[sel_idx[t]]`` with ``p = softmax(scale * (d - 2 level))``,
    one row at a time (see ``level_weights``, ``accumulate``, ``finish``)."""
    level_weights(n_eff, top, last, decay, weight_of_level)
    for c in range(acc.shape[0]):
        acc[c] = 0.0
    total = accumulate(sel_idx, sel_lev, 0, n_eff, v, weight_of_level, acc)
    finish(acc, total, n_eff, out_row)

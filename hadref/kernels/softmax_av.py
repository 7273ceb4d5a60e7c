"""Sparse softmax over the N survivors of a row and the value accumulation."""

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def softmax_av_row(sel_idx, sel_lev, n_eff, top, last, v, two_scale, weight_of_level, acc,
                   out_row):
    """``out_row = sum_t p_t v[sel_idx[t]]`` with ``p = softmax(scale * (d - 2 level))``.

    sel_idx, sel_lev: (>= n_eff,) the survivors and their levels, in any order.
    top, last: the smallest and largest level among them (``top`` is the row's maximum
            score, which makes the softmax stable without a max pass).
    v:      (n, dv) float32/float64, the values of this (batch, head).
    two_scale: 2 * sigma_q * sigma_k / sqrt(d): one level step in logit units.
    weight_of_level: (d + 2,) scratch of v's dtype: scores take only d+1 values, so a row
            needs at most d+1 exponentials (computed in float64), not N.
    acc:    (dv,) scratch of v's dtype. Accumulating in v's dtype keeps the inner loop
            one vector FMA; for float32 the N weights lie in [0, 1] and the error stays
            of order N * 6e-8 relative, well inside the 1e-5 the tests demand.
    out_row: (dv,) written; zeros when n_eff == 0.
    """
    dv = out_row.shape[0]
    if n_eff == 0:
        for c in range(dv):
            out_row[c] = 0.0
        return
    weight_of_level[top] = 1.0  # exp(0); also keeps an infinite scale from giving 0 * inf
    for lev in range(top + 1, last + 1):
        weight_of_level[lev] = np.exp(-two_scale * (lev - top))
    for c in range(dv):
        acc[c] = 0.0
    total = 0.0
    # four value rows per sweep over acc: a quarter of the accumulator loads and stores
    body = n_eff - n_eff % 4
    for t in range(0, body, 4):
        w0 = weight_of_level[sel_lev[t]]
        w1 = weight_of_level[sel_lev[t + 1]]
        w2 = weight_of_level[sel_lev[t + 2]]
        w3 = weight_of_level[sel_lev[t + 3]]
        total += np.float64(w0) + np.float64(w1) + np.float64(w2) + np.float64(w3)
        r0 = v[sel_idx[t]]
        r1 = v[sel_idx[t + 1]]
        r2 = v[sel_idx[t + 2]]
        r3 = v[sel_idx[t + 3]]
        for c in range(dv):
            acc[c] += w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c]
    for t in range(body, n_eff):
        w = weight_of_level[sel_lev[t]]
        total += np.float64(w)
        row = v[sel_idx[t]]
        for c in range(dv):
            acc[c] += w * row[c]
    inv = 1.0 / total
    for c in range(dv):
        out_row[c] = acc[c] * inv

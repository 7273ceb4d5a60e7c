"""The attention-distillation KL of causal maps, row by row (a Numba kernel).

For each query row of a block of causal maps: ``KL(softmax(S_T) || softmax(S_S))`` over
the keys the row sees (``j <= i`` and valid in key_mask), and optionally its gradient with
respect to S_S, ``(softmax(S_S) - softmax(S_T)) * scale`` on those keys, zero elsewhere
(``../shared/HAD.md``, "Losses"; used by :class:`hadref.had.causal_core.HADCausalCore`).
Exponentials and sums in float64; one pass for the maxima, one for the sums, one for the
loss (and gradient); no (rows, keys) temporaries.
"""

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def causal_kl_rows(s_t, s_s, key_mask, first_pos, scale, want_grad, grad, row_loss):
    """s_t, s_s: (B, M, r, n) teacher and student logits of query rows first_pos ..
    first_pos + r - 1 (M maps) against keys 0..n-1; key_mask (B, >= n) bool (True = valid;
    a padding position's row adds nothing). Writes row_loss (B, M, r) float64 (the rows'
    KL) and, when want_grad, grad (B, M, r, n) in s_s's dtype: scale * (p_S - p_T) on the
    keys a valid row sees, 0 elsewhere."""
    nb, nm, nr, n = s_s.shape
    for flat in prange(nb * nm * nr):
        b = flat // (nm * nr)
        rest = flat - b * nm * nr
        m = rest // nr
        i = rest - m * nr
        limit = min(n, first_pos + i + 1)
        row_ok = key_mask[b, first_pos + i]
        if want_grad:
            for j in range(n):
                grad[b, m, i, j] = 0.0
        row_loss[b, m, i] = 0.0
        if not row_ok:
            continue
        top_t = -np.inf
        top_s = -np.inf
        for j in range(limit):
            if key_mask[b, j]:
                top_t = max(top_t, np.float64(s_t[b, m, i, j]))
                top_s = max(top_s, np.float64(s_s[b, m, i, j]))
        if top_t == -np.inf:  # no visible key
            continue
        sum_t = 0.0
        sum_s = 0.0
        for j in range(limit):
            if key_mask[b, j]:
                sum_t += math.exp(np.float64(s_t[b, m, i, j]) - top_t)
                sum_s += math.exp(np.float64(s_s[b, m, i, j]) - top_s)
        log_zt = top_t + math.log(sum_t)
        log_zs = top_s + math.log(sum_s)
        loss = 0.0
        for j in range(limit):
            if key_mask[b, j]:
                lt = np.float64(s_t[b, m, i, j]) - log_zt
                ls = np.float64(s_s[b, m, i, j]) - log_zs
                pt = math.exp(lt)
                loss += pt * (lt - ls)
                if want_grad:
                    grad[b, m, i, j] = (math.exp(ls) - pt) * scale
        row_loss[b, m, i] = loss

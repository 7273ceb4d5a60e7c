"""Input validation on the cores: rows holding a NaN or an infinity."""

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def count_nonfinite_rows(x):
    """Number of rows of ``x`` (R, d) float32/float64, C-contiguous, holding a NaN or an
    infinity. ``v - v == 0`` is false exactly for those (no fastmath here, so it is not
    folded away); a branch-free or over each row vectorizes, and it reads x once instead
    of summing it in float64 as NumPy's ``isfinite(x.sum())`` check would."""
    rows, d = x.shape
    bad_rows = 0
    for r in prange(rows):
        nonfinite = 0
        for c in range(d):
            value = x[r, c]
            nonfinite |= np.int64(not (value - value == 0.0))
        bad_rows += nonfinite
    return bad_rows

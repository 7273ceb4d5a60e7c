"""Packing float vectors into sign bits, with the NaN/inf check of the same values."""

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def pack_rows(x, out):
    """Pack the signs of each row of ``x`` into 64-bit words; count the rows that are not
    finite.

    x:   (R, d) float32/float64, C-contiguous.
    out: (R, ceil(d/64)) uint64, written: bit ``b`` of word ``w`` is set iff
         ``x[r, 64*w + b] >= 0`` (so sign(0) = sign(-0.0) = +1); padding bits of the last
         word stay zero, which keeps XOR-popcount exact for any d.
    Returns the number of rows holding a NaN or an infinity (``v - v == 0`` is false
    exactly for those; no fastmath here, so it is not folded away). Checking in the packing
    pass reads q and k once instead of twice.
    """
    rows, d = x.shape
    words = out.shape[1]
    bad_rows = 0
    for r in prange(rows):
        nonfinite = 0
        for w in range(words):
            base = 64 * w
            stop = min(64, d - base)
            word = np.uint64(0)
            for b in range(stop):  # branch-free: signs of real data are unpredictable
                value = x[r, base + b]
                word |= np.uint64(value >= 0) << np.uint64(b)
                nonfinite |= np.int64(not (value - value == 0.0))
            out[r, w] = word
        bad_rows += nonfinite
    return bad_rows

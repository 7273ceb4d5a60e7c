"""Packing float vectors into sign bits."""

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def pack_rows(x, out):
    """Pack the signs of each row of ``x`` into 64-bit words.

    x:   (R, d) float32/float64, C-contiguous.
    out: (R, ceil(d/64)) uint64, written: bit ``b`` of word ``w`` is set iff
         ``x[r, 64*w + b] >= 0`` (so sign(0) = sign(-0.0) = +1); padding bits of the last
         word stay zero, which keeps XOR-popcount exact for any d.
    """
    rows, d = x.shape
    words = out.shape[1]
    for r in prange(rows):
        for w in range(words):
            base = 64 * w
            stop = min(64, d - base)
            word = np.uint64(0)
            for b in range(stop):  # branch-free: signs of real data are unpredictable
                word |= np.uint64(x[r, base + b] >= 0) << np.uint64(b)
            out[r, w] = word

"""The causal key limit and the per-row N: which keys a query row may see, and how many of
them it keeps (one definition for every kernel and for the Python side).

With ``m`` query rows aligned to the end of ``n`` keys (decoding appends queries after the
cached keys; ``m == n`` is ordinary causal attention), query row ``i`` sees keys
``j <= i + n - m``, i.e. the first ``key_limit(i, m, n, True)`` keys; without ``causal``
every row sees all ``n``.

N per row (``row_top_n``): a row that sees ``seen`` selectable keys (the valid keys among
its first ``key_limit``) keeps ``N_i = min(top_n, seen)`` with a fixed N, or with a ratio
``N_i = min(seen, max(1, round(ratio * seen)))`` (``ratio_top_n``). The rounding is
Python's ``round``: half to even, of the float64 product ``ratio * seen``. Both are
jitted and callable from Python, so the kernels, the training path and the drivers' sizes
cannot disagree.
"""

import math

from numba import njit


@njit(cache=True, inline="always")
def key_limit(i, m, n, causal):
    """Number of leading keys query row i (of m) sees among n: n, or with causal
    ``clip(i + n - m + 1, 0, n)``."""
    if not causal:
        return n
    return max(0, min(n, i + n - m + 1))


@njit(cache=True, inline="always")
def round_half_even(x):
    """Python's ``round(x)`` of a finite float64 x >= 0, as an int64: the nearest integer,
    halves to the even one (``0.5 -> 0``, ``1.5 -> 2``, ``2.5 -> 2``). ``x - floor(x)`` is
    exact in floating point, so the comparison with 0.5 is too."""
    f = math.floor(x)
    rest = x - f
    if rest > 0.5 or (rest == 0.5 and f % 2.0 == 1.0):
        f += 1.0
    return int(f)


@njit(cache=True, inline="always")
def ratio_top_n(ratio, seen):
    """N of a row that sees ``seen`` (int >= 0) selectable keys under ``N = ratio x keys``
    (ratio in (0, 1]): ``min(seen, max(1, round(ratio * seen)))``, round half to even of
    the float64 product (:func:`round_half_even`); 0 when seen is 0."""
    if seen <= 0:
        return 0
    return min(seen, max(1, round_half_even(ratio * seen)))


@njit(cache=True, inline="always")
def row_top_n(top_n, ratio, seen):
    """N_eff of a query row that sees ``seen`` selectable keys: ``min(top_n, seen)`` when
    ratio is 0.0 (a fixed N), else ``min(top_n, ratio_top_n(ratio, seen))``, top_n then
    being a cap (the drivers pass ``ratio_top_n(ratio, n)`` of all n keys, the largest any
    row can take: the width of their workspaces)."""
    if ratio > 0.0:
        return min(top_n, ratio_top_n(ratio, seen))
    return min(top_n, seen)

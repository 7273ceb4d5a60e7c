"""The causal key limit: which keys a query row may see (one definition for every kernel).

With ``m`` query rows aligned to the end of ``n`` keys (decoding appends queries after the
cached keys; ``m == n`` is ordinary causal attention), query row ``i`` sees keys
``j <= i + n - m``, i.e. the first ``key_limit(i, m, n, True)`` keys; without ``causal``
every row sees all ``n``.
"""

from numba import njit


@njit(cache=True, inline="always")
def key_limit(i, m, n, causal):
    """Number of leading keys query row i (of m) sees among n: n, or with causal
    ``clip(i + n - m + 1, 0, n)``."""
    if not causal:
        return n
    return max(0, min(n, i + n - m + 1))

"""Central finite differences in float64, to check the hand-written backward passes.

Test modules import it as ``from gradcheck import ...`` (pytest puts tests/ on sys.path).
Entries are flat (C-order) indices into the perturbed array.
"""

import numpy as np


def pick_entries(size, count, rng):
    """``count`` distinct random flat indices out of ``size`` (all of them when size <= count)."""
    return rng.choice(size, min(count, size), replace=False)


def central_differences(loss, x, entries=None, eps=1e-6):
    """(loss() at x + eps - loss() at x - eps) / (2 eps) at each flat index in ``entries``
    (every entry of x when None), as a 1-D array in the order of ``entries``.

    x, a float64 array that ``loss()`` reads, is perturbed in place and restored exactly.
    """
    assert x.dtype == np.float64, f"finite differences need float64, got {x.dtype}"
    if entries is None:
        entries = np.arange(x.size)
    out = np.empty(len(entries))
    for n, i in enumerate(entries):
        at = np.unravel_index(i, x.shape)
        old = x[at]
        x[at] = old + eps
        up = loss()
        x[at] = old - eps
        down = loss()
        x[at] = old
        out[n] = (up - down) / (2 * eps)
    return out


def assert_gradient(analytic, loss, x, entries=None, *, rtol, atol, eps=1e-6, err_msg=""):
    """The analytic gradient of loss() w.r.t. x (same shape as x) equals central differences
    at ``entries`` (all when None) to |analytic - numeric| <= atol + rtol * |numeric|;
    NaN fails."""
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == x.shape, (err_msg, analytic.shape, x.shape)
    if entries is None:
        entries = np.arange(x.size)
    numeric = central_differences(loss, x, entries, eps)
    np.testing.assert_allclose(analytic.reshape(-1)[entries], numeric, rtol=rtol, atol=atol,
                               equal_nan=False, err_msg=err_msg)

"""Distillation losses: finite-difference gradients in float64, zero for identical inputs,
padding ignored."""

import numpy as np
from gradcheck import central_differences, pick_entries
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.distill.losses import attention_kl, output_kl, output_loss


def _mask(rng, b, t):
    lengths = rng.integers(1, t + 1, b)
    lengths[0] = t
    return np.arange(t)[None, :] < lengths[:, None]


def _check_fd(grad, loss, x, rng, tol, probes=12):
    """grad within tol (strictly) of central differences at `probes` random entries of x."""
    entries = pick_entries(x.size, probes, rng)
    numeric = central_differences(loss, x, entries)
    assert np.all(np.abs(grad.reshape(-1)[entries] - numeric) < tol), (entries, numeric)


@settings(max_examples=15)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(1, 5), st.integers(1, 3))
def test_attention_kl_gradient_matches_finite_differences(seed, b, t, layers):
    rng = np.random.default_rng(seed)
    h = 2
    mask = _mask(rng, b, t)
    teacher = [rng.normal(size=(b, h, t, t)) * 2 for _ in range(layers)]
    student = [rng.normal(size=(b, h, t, t)) * 2 for _ in range(layers)]
    loss, grads = attention_kl(teacher, student, mask)
    assert loss >= -1e-12
    for s, g in zip(student, grads):
        _check_fd(g, lambda: attention_kl(teacher, student, mask)[0], s, rng, 1e-6)
        # padding keys and padding query rows get no gradient
        assert np.all(g[~np.broadcast_to(mask[:, None, None, :], g.shape)] == 0)
        assert np.all(g[~np.broadcast_to(mask[:, None, :, None], g.shape)] == 0)


def test_attention_kl_zero_for_identical_and_ignores_padding_entries():
    rng = np.random.default_rng(1)
    mask = _mask(rng, 3, 6)
    s = [rng.normal(size=(3, 4, 6, 6)).astype(np.float32) for _ in range(2)]
    loss, grads = attention_kl(s, [x.copy() for x in s], mask)
    assert loss == 0.0 and all(np.all(g == 0) for g in grads)
    # changing scores at padding keys or padding rows changes nothing
    noisy = [x.copy() for x in s]
    for x in noisy:
        x[~np.broadcast_to(mask[:, None, None, :], x.shape)] = 1e4
        x[~np.broadcast_to(mask[:, None, :, None], x.shape)] = -3.0
    assert attention_kl(s, noisy, mask)[0] == 0.0
    # normalization: mean over maps and valid rows of the per-row KL
    t = [rng.normal(size=(3, 4, 6, 6)) for _ in range(2)]
    u = [rng.normal(size=(3, 4, 6, 6)) for _ in range(2)]
    total, count = 0.0, 0
    for a, c in zip(t, u):
        for bi in range(3):
            n = int(mask[bi].sum())
            for hi in range(4):
                for i in range(n):
                    p = np.exp(a[bi, hi, i, :n]) / np.exp(a[bi, hi, i, :n]).sum()
                    q = np.exp(c[bi, hi, i, :n]) / np.exp(c[bi, hi, i, :n]).sum()
                    total += np.sum(p * np.log(p / q))
                    count += 1
    assert np.isclose(attention_kl(t, u, mask)[0], total / count, rtol=1e-10)


@settings(max_examples=15)
@given(st.integers(0, 10_000), st.floats(0.5, 4.0))
def test_output_kl_and_mse_gradients(seed, tau):
    rng = np.random.default_rng(seed)
    zt, zs = rng.normal(size=(4, 3)) * 3, rng.normal(size=(4, 3)) * 3
    loss, g = output_kl(zt, zs, tau)
    assert loss >= -1e-12 and output_kl(zt, zt.copy(), tau)[0] < 1e-12
    _check_fd(g, lambda: output_kl(zt, zs, tau)[0], zs, rng, 1e-7)
    yt, ys = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    loss, g = output_loss(yt, ys, regression=True)
    assert np.isclose(loss, np.mean((ys - yt) ** 2))
    _check_fd(g, lambda: output_loss(yt, ys, regression=True)[0], ys, rng, 1e-7)

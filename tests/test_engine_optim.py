"""Adam(W) and global-norm clipping against plain NumPy formulas."""

import math
import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.engine.optim import Adam, clip_grad_norm, global_norm
from hadref.errors import HadrefError


def reference_adam(p, grads, lr, b1, b2, eps, wd):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * wd * p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@settings(max_examples=25)
@given(st.integers(1, 40), st.integers(1, 4), st.floats(1e-4, 1e-1), st.floats(0.0, 0.5),
       st.integers(0, 1000))
def test_adam_matches_reference(n, steps, lr, wd, seed):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(steps)]
    params = {"w.weight": p0.copy().reshape(1, n), "w.bias": p0.copy()}
    adam = Adam(params, lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=wd)
    for g in grads:
        adam.step({"w.weight": g.reshape(1, n), "w.bias": g})
    np.testing.assert_allclose(params["w.weight"][0],
                               reference_adam(p0, grads, lr, 0.9, 0.98, 1e-6, wd), rtol=1e-12,
                               atol=1e-14)
    # biases (and LayerNorm weights) get no decay by default
    np.testing.assert_allclose(params["w.bias"],
                               reference_adam(p0, grads, lr, 0.9, 0.98, 1e-6, 0.0), rtol=1e-12,
                               atol=1e-14)


def test_adam_first_step_moves_each_weight_by_lr():
    params = {"a": np.array([1.0, -2.0, 3.0], np.float32)}
    Adam(params, lr=0.01, eps=0.0).step({"a": np.array([5.0, -0.1, 1e-3], np.float32)})
    np.testing.assert_allclose(params["a"], [0.99, -1.99, 2.99], rtol=1e-6)


def test_adam_rejects_unknown_or_mis_shaped_gradients():
    adam = Adam({"a": np.zeros(3)})
    with pytest.raises(HadrefError, match="'b' is not a parameter"):
        adam.step({"b": np.zeros(3)})
    with pytest.raises(HadrefError, match="shape"):
        adam.step({"a": np.zeros(4)})
    with pytest.raises(HadrefError, match="lr"):
        Adam({"a": np.zeros(3)}, lr=0)


def test_adam_state_round_trip():
    params = {"a": np.arange(4.0)}
    adam = Adam(params, lr=0.1)
    adam.step({"a": np.ones(4)})
    state = {"t": adam.t, "m": {k: v.copy() for k, v in adam.m.items()},
             "v": {k: v.copy() for k, v in adam.v.items()}}
    twin_params = {"a": params["a"].copy()}
    twin = Adam(twin_params, lr=0.1)
    twin.load_state_dict(state)
    adam.step({"a": np.full(4, 2.0)})
    twin.step({"a": np.full(4, 2.0)})
    np.testing.assert_array_equal(params["a"], twin_params["a"])


@given(st.lists(st.integers(1, 30), min_size=1, max_size=4), st.floats(0.01, 10.0),
       st.integers(0, 1000))
def test_clip_grad_norm(sizes, max_norm, seed):
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    expected = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in before.values()))
    assert norm == pytest.approx(expected, rel=1e-12)
    after = global_norm(grads)
    if expected > max_norm:
        assert after == pytest.approx(max_norm, rel=1e-5)
        for k in grads:  # direction unchanged
            np.testing.assert_allclose(grads[k], before[k] * (max_norm / (expected + 1e-6)),
                                       rtol=1e-6)
    else:
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])


def test_clip_rejects_non_finite():
    with pytest.raises(HadrefError, match="non-finite"):
        clip_grad_norm({"a": np.array([np.nan, 1.0])}, 1.0)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_keep_freed_memory_takes_effect_on_glibc():
    from hadref.train.memory import keep_freed_memory

    assert keep_freed_memory() is True

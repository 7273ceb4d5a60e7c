"""Stage transforms of HAD training: finite differences (float64) and the STE's definition."""

import numpy as np
import pytest
from gradcheck import assert_gradient

from hadref.errors import HadrefError
from hadref.had.binarize import TRANSFORMS, binarize_backward, binarize_forward, sign_pm1


@pytest.mark.parametrize("transform", ["tanh1", "tanh2"])
@pytest.mark.parametrize("c", [5.0, 1.0, 0.3])
def test_tanh_transforms_match_finite_differences(transform, c):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5)) * 2.0
    sigma = 1.7
    weights = rng.standard_normal(x.shape)
    y, cache = binarize_forward(x, sigma, transform, c=c)

    def loss():
        return float((binarize_forward(x, sigma, transform, c=c)[0] * weights).sum())

    assert_gradient(binarize_backward(weights, cache), loss, x, rtol=1e-6, atol=1e-8)


def test_tanh_stage_formulas_and_limits():
    x = np.linspace(-3, 3, 13)
    sigma, c = 0.8, 2.5
    y1, _ = binarize_forward(x, sigma, "tanh1", c=c)
    np.testing.assert_allclose(y1, c * sigma * np.tanh(x / (c * sigma)), rtol=1e-15)
    y2, _ = binarize_forward(x, sigma, "tanh2", c=c)
    np.testing.assert_allclose(y2, sigma * np.tanh(x / (c * sigma)), rtol=1e-15)
    # stage 1 is about linear at large c; stage 2 tends to sigma * sign as c -> 0
    np.testing.assert_allclose(binarize_forward(x, sigma, "tanh1", c=1e4)[0], x, rtol=1e-6)
    big = np.abs(x) > 0.1
    np.testing.assert_allclose(binarize_forward(x, sigma, "tanh2", c=1e-3)[0][big],
                               sigma * np.sign(x[big]))


def test_ste_forward_is_sign_and_backward_is_its_definition():
    sigma, t = 2.0, 1.0
    # includes exact window edges |x / sigma| = t and zeros of both signs
    x = np.array([-5.0, -2.0, -1.999, -0.0, 0.0, 0.5, 2.0, 2.0001, 7.0])
    y, cache = binarize_forward(x, sigma, "ste", ste_t=t)
    np.testing.assert_array_equal(y, sigma * np.array([-1, -1, -1, 1, 1, 1, 1, 1, 1.0]))
    dy = np.arange(1.0, x.size + 1)
    expected = dy * (np.abs(x / sigma) <= t)
    np.testing.assert_array_equal(binarize_backward(dy, cache), expected)
    # a wider window lets more through
    _, cache2 = binarize_forward(x, sigma, "ste", ste_t=2.0)
    np.testing.assert_array_equal(binarize_backward(dy, cache2), dy * (np.abs(x / sigma) <= 2.0))


def test_sign_of_zero_is_plus_one_and_dtype_kept():
    x = np.array([0.0, -0.0, -1e-30, 1e-30], dtype=np.float32)
    s = sign_pm1(x)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, [1, 1, -1, 1])
    for transform in TRANSFORMS:
        y, _ = binarize_forward(x, 1.0, transform, c=1.0)
        assert y.dtype == np.float32


def test_hard_has_no_backward_and_bad_settings_raise():
    _, cache = binarize_forward(np.ones(3), 1.0, "hard")
    with pytest.raises(HadrefError, match="inference only"):
        binarize_backward(np.ones(3), cache)
    with pytest.raises(HadrefError, match="transform"):
        binarize_forward(np.ones(3), 1.0, "tanh3")
    with pytest.raises(HadrefError, match="c:"):
        binarize_forward(np.ones(3), 1.0, "tanh1", c=0.0)
    with pytest.raises(HadrefError, match="sigma"):
        binarize_forward(np.ones(3), -1.0, "ste")
    with pytest.raises(HadrefError, match="ste_t"):
        binarize_forward(np.ones(3), 1.0, "ste", ste_t=float("nan"))

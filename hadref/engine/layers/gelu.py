"""Exact GELU: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (Hugging Face "gelu")."""

import numpy as np

from hadref.engine import elementwise


def gelu_forward(x):
    """x (...) -> y (...) same shape and dtype; cache = x (C-contiguous)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    elementwise.gelu_forward(x.reshape(-1), out.reshape(-1))
    return out, x


def gelu_backward(dy, cache):
    """dy (...) -> dx (...) = dy * (Phi(x) + x phi(x))."""
    x = cache
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(x)
    elementwise.gelu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx

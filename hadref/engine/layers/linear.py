"""Linear layer y = x W^T + b, with the Hugging Face weight layout W (out, in).

The leading axes of x are flattened so that BLAS sees one 2-D matrix product.
"""

from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    """What ``linear_forward`` saves: its input (..., in) and the weight (out, in)."""

    x: np.ndarray
    weight: np.ndarray


def linear_forward(x, weight, bias):
    """x (..., in), weight (out, in), bias (out,) or None -> (y (..., out), LinearCache)."""
    x2 = x.reshape(-1, x.shape[-1])
    y = np.matmul(x2, weight.T)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0]), LinearCache(x, weight)


def linear_backward(dy, cache, need_dx=True):
    """dy (..., out) -> (dx (..., in) or None, dweight (out, in), dbias (out,))."""
    x, weight = cache
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dweight = np.matmul(dy2.T, x2)
    dbias = dy2.sum(axis=0)
    dx = np.matmul(dy2, weight).reshape(x.shape) if need_dx else None
    return dx, dweight, dbias

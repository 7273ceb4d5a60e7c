"""Rotary position embedding (RoPE), Hugging Face's "default" rope over all d dimensions.

A head vector x (d,) at position p is split in halves (x1, x2) and rotated pairwise:
y = x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1) and angles
p * theta^(-2i/d) for i < d/2, repeated for both halves (``rope_angles``). The angles are
computed like the reference library: float32 inverse frequencies times float32 positions,
rounded to float32, then cos/sin of that angle (so that float32 logits match at 4k tokens).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RopeTables(NamedTuple):
    """cos, sin (T, d) in the model's dtype for positions[0..T)."""

    cos: np.ndarray
    sin: np.ndarray


def rope_tables(positions, head_dim: int, theta: float, dtype=np.float32) -> RopeTables:
    """positions (T,) int -> RopeTables (T, head_dim) of dtype."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float64(theta) ** exponent.astype(np.float64))).astype(np.float32)
    angles = np.asarray(positions, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return RopeTables(np.cos(angles).astype(dtype), np.sin(angles).astype(dtype))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotate_half_transposed(g):
    """The adjoint of rotate_half: (g1, g2) -> (g2, -g1)."""
    half = g.shape[-1] // 2
    return np.concatenate([g[..., half:], -g[..., :half]], axis=-1)


def rope_forward(x, tables: RopeTables):
    """x (B, h, T, d) -> y (B, h, T, d) (a new C-contiguous array). No cache: the
    backward needs only the tables."""
    cos, sin = tables
    y = np.empty(x.shape, x.dtype)  # C-contiguous whatever x's strides
    np.multiply(x, cos, out=y)
    y += _rotate_half(x) * sin
    return y


def rope_backward(dy, tables: RopeTables):
    """dy (B, h, T, d) -> dx (B, h, T, d): the transpose of the rotation."""
    cos, sin = tables
    dx = np.empty(dy.shape, dy.dtype)
    np.multiply(dy, cos, out=dx)
    dx += _rotate_half_transposed(dy * sin)
    return dx

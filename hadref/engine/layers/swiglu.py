"""The SwiGLU feed-forward block of Llama: down(silu(gate(x)) * up(x)), no biases.

Parameters (Hugging Face names) under ``layers.{i}.mlp.``: ``gate_proj.weight`` (I, H),
``up_proj.weight`` (I, H), ``down_proj.weight`` (H, I). ``swiglu_forward``/``backward``
are the elementwise activation silu(g) * u; ``mlp_forward``/``backward`` the whole block.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hadref.engine.layers.linear import linear_backward, linear_forward


class SwiGLUCache(NamedTuple):
    """What :func:`swiglu_forward` saves: gate g, up u (..., I) and sigmoid(g)."""

    gate: np.ndarray
    up: np.ndarray
    sigmoid: np.ndarray


class MLPCache(NamedTuple):
    """What :func:`mlp_forward` saves: the three linear caches and the activation's."""

    gate: tuple
    up: tuple
    act: SwiGLUCache
    down: tuple
    layer: int


def swiglu_forward(gate, up):
    """gate, up (..., I) -> (silu(gate) * up (..., I), SwiGLUCache)."""
    one = gate.dtype.type(1)
    sig = one / (one + np.exp(-gate))
    out = gate * sig
    out *= up
    return out, SwiGLUCache(gate, up, sig)


def swiglu_backward(dout, cache: SwiGLUCache):
    """dout (..., I) -> (dgate, dup) (..., I); silu'(g) = s (1 + g (1 - s))."""
    gate, up, sig = cache
    one = gate.dtype.type(1)
    dup = dout * gate * sig
    dgate = dout * up * (sig * (one + gate * (one - sig)))
    return dgate, dup


def _names(layer):
    p = f"layers.{layer}.mlp."
    return p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"


def mlp_forward(x, params, layer):
    """x (B, T, H) -> (y (B, T, H), MLPCache)."""
    gate_w, up_w, down_w = _names(layer)
    gate, gate_cache = linear_forward(x, params[gate_w], None)
    up, up_cache = linear_forward(x, params[up_w], None)
    act, act_cache = swiglu_forward(gate, up)
    y, down_cache = linear_forward(act, params[down_w], None)
    return y, MLPCache(gate_cache, up_cache, act_cache, down_cache, layer)


def mlp_backward(dy, cache: MLPCache):
    """dy (B, T, H) -> (dx (B, T, H), {name: gradient})."""
    gate_w, up_w, down_w = _names(cache.layer)
    grads = {}
    dact, grads[down_w], _ = linear_backward(dy, cache.down)
    dgate, dup = swiglu_backward(dact, cache.act)
    dx, grads[gate_w], _ = linear_backward(dgate, cache.gate)
    dx_up, grads[up_w], _ = linear_backward(dup, cache.up)
    dx += dx_up
    return dx, grads

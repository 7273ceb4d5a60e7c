"""Optimizer and gradient clipping over the flat ``{name: array}`` parameter mapping.

    grads = model.backward(dlogits=dlogits)
    norm = clip_grad_norm(grads, 0.5)      # global L2 norm before clipping
    adam.step(grads)                       # updates model.params in place

Both run as fused Numba kernels (one pass over each array), so a step over MiniLM's 22.7M
parameters costs a few memory passes, not a dozen NumPy temporaries.
"""

from __future__ import annotations

import math

import numpy as np

from hadref.engine import elementwise
from hadref.errors import HadrefError


def global_norm(grads: dict) -> float:
    """sqrt(sum of squares of every gradient), accumulated in float64."""
    return math.sqrt(sum(elementwise.sum_of_squares(np.ascontiguousarray(g).reshape(-1))
                         for g in grads.values()))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so that their global L2 norm is at most max_norm.

    Returns the norm before clipping (as torch.nn.utils.clip_grad_norm_ does; the scale is
    max_norm / (norm + 1e-6) when norm > max_norm). A non-finite norm raises HadrefError.
    """
    if not max_norm > 0:
        raise HadrefError(f"max_norm: expected a positive number, got {max_norm!r}")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        raise HadrefError("gradients: non-finite global norm (the loss diverged)")
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


def _default_no_decay(name: str) -> bool:
    # Hugging Face convention: no weight decay on biases and LayerNorm weights.
    return name.endswith(".bias") or "LayerNorm" in name


class Adam:
    """Adam with bias correction and optional decoupled weight decay (AdamW).

    ``Adam(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
    no_decay=<biases and LayerNorm>)``: params is the model's mapping (updated in place);
    ``step(grads)`` applies one update from a {name: gradient} mapping with the same keys
    (names missing from grads are skipped). ``lr`` may be changed between steps.

    Per parameter: m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * (wd * p + m_hat / (sqrt(v_hat) + eps)), m_hat = m / (1 - b1^t),
    v_hat = v / (1 - b2^t) (torch.optim.AdamW's update).
    """

    def __init__(self, params: dict, lr: float = 2e-5, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_decay=_default_no_decay):
        if not lr > 0:
            raise HadrefError(f"lr: expected a positive learning rate, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise HadrefError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if weight_decay < 0:
            raise HadrefError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.no_decay = no_decay
        self.t = 0
        self.m = {n: np.zeros_like(p) for n, p in params.items()}
        self.v = {n: np.zeros_like(p) for n, p in params.items()}

    def step(self, grads: dict) -> None:
        """One update of every parameter that has a gradient in grads."""
        self.t += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1 ** self.t
        bias2 = 1.0 - beta2 ** self.t
        for name, grad in grads.items():
            param = self.params.get(name)
            if param is None:
                raise HadrefError(f"grads: {name!r} is not a parameter of this optimizer")
            if grad.shape != param.shape:
                raise HadrefError(f"grads: {name!r} has shape {grad.shape}, "
                                  f"the parameter {param.shape}")
            decay = 0.0 if self.no_decay(name) else self.weight_decay
            elementwise.adam_update(param.reshape(-1),
                               np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1),
                               self.m[name].reshape(-1), self.v[name].reshape(-1), self.lr,
                               beta1, beta2, self.eps, bias1, bias2, decay)

    def state_dict(self) -> dict:
        """{"t", "m": {...}, "v": {...}} for checkpoints (arrays are the live ones)."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` output (shapes must match the parameters)."""
        for key in ("m", "v"):
            for name, p in self.params.items():
                value = state[key].get(name)
                if value is None or value.shape != p.shape:
                    raise HadrefError(f"optimizer state: {key}[{name!r}] missing or mis-shaped")
        self.t = int(state["t"])
        self.m = {n: np.array(state["m"][n], dtype=p.dtype) for n, p in self.params.items()}
        self.v = {n: np.array(state["v"][n], dtype=p.dtype) for n, p in self.params.items()}

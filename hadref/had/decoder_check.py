"""The packed kernels against the training path of a decoder student, layer by layer.

A whole-model comparison of a HAD decoder's two paths says little: each layer agrees to
float rounding, but through many binarized layers a rounding of a near-zero q or k entry
flips its sign bit, the next layer keeps other keys, and the outputs drift apart although
both paths are right. So the check runs the student once on the packed kernels and, at
every layer, also runs the dense ``hard`` training path of :class:`HADCausalCore` on the
*same* q, k, v, comparing the two contexts. What it proves: the kernels select the same
keys and compute the same softmax and value sum as the training path, layer after layer,
on the activations of real text.
"""

from __future__ import annotations

import numpy as np

from hadref.errors import HadrefError

# a different selected set changes a context row by the weight of a key, far above this;
# float32 rounding of the softmax and the value sum stays far below
DEFAULT_RTOL = 1e-4


class _ComparingCore:
    """Runs the packed core and, on the same inputs, the dense ``hard`` path; keeps the
    worst relative difference of the contexts per layer."""

    def __init__(self, packed, dense, n_layers: int):
        self.packed, self.dense = packed, dense
        self.worst = np.zeros(n_layers)

    def forward(self, q, k, v, key_mask, layer, train=False):
        ctx, cache = self.packed.forward(q, k, v, key_mask, layer, train)
        ref, _ = self.dense.forward(q, k, v, key_mask, layer, False)
        scale = max(1.0, float(np.max(np.abs(ref))))
        self.worst[layer] = max(self.worst[layer],
                                float(np.max(np.abs(ctx.astype(np.float64) - ref))) / scale)
        return ctx, cache


def check_layers(model, input_ids, rtol: float = DEFAULT_RTOL) -> dict:
    """Compare the packed kernels with the dense training path at every layer.

    model: a decoder student (``hadref.load`` of a file with ``had`` metadata: its
    attention core is an inference ``HADCausalCore``); input_ids: (T,) or (1, T) int.
    Returns ``{"tokens", "rtol", "layers": [worst |ctx_packed - ctx_dense| / max(1,
    max|ctx_dense|) per layer], "worst", "agree"}``; ``agree`` when every layer is within
    ``rtol``. The model's core is restored afterwards.
    """
    from hadref.had.causal_core import HADCausalCore

    core = model.attention_core
    if not isinstance(core, HADCausalCore) or not core.use_kernels:
        raise HadrefError("check: expected a HAD decoder student (a file with `had` metadata), "
                          f"got a model with {type(core).__name__}")
    ids = np.asarray(input_ids)
    ids = ids[None] if ids.ndim == 1 else ids
    dense = HADCausalCore(core.sigma_q, core.sigma_k, core.top_n, core.top_n_ratio,
                          transform="hard", use_kernels=False)
    comparing = _ComparingCore(core, dense, model.config.num_hidden_layers)
    model.attention_core = comparing
    try:
        model.forward(ids, compute_logits=False)
    finally:
        model.attention_core = core
    worst = float(comparing.worst.max())
    return {"tokens": int(ids.shape[1]), "rtol": rtol, "layers": comparing.worst.tolist(),
            "worst": worst, "agree": worst <= rtol}


__all__ = ["check_layers", "DEFAULT_RTOL"]

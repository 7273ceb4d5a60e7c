"""Standardization coefficients sigma_Q, sigma_K (HAD.md, "Standardization coefficients").

The teacher runs on ``n_batches`` random minibatches of ``batch_size`` training examples.
For each layer, sigma_Q is the mean over minibatches of the standard deviation of all
elements of that minibatch's Q_c (the query projection after bias, every head and
dimension) over valid tokens only; sigma_K likewise. Q_c and K_c are read through the
engine's attention hook (docs/design.md), so nothing in the model changes.
"""

from __future__ import annotations

import numpy as np

from hadref.errors import HadrefError
from hadref.train.parallel import SINGLE


class _RecordingCore:
    """Attention core that records per-layer std of q and k over valid tokens, then
    delegates to the core it wraps."""

    def __init__(self, inner, n_layers: int):
        self.inner = inner
        self.q_std = [[] for _ in range(n_layers)]
        self.k_std = [[] for _ in range(n_layers)]

    def forward(self, q, k, v, key_mask, layer, need_scores=False):
        # (B, h, T, d) -> (B, T, h, d), then the valid tokens only: (n_valid, h, d)
        self.q_std[layer].append(float(np.std(q.transpose(0, 2, 1, 3)[key_mask], dtype=np.float64)))
        self.k_std[layer].append(float(np.std(k.transpose(0, 2, 1, 3)[key_mask], dtype=np.float64)))
        return self.inner.forward(q, k, v, key_mask, layer, need_scores)

    def backward(self, cache, dctx, dscores=None):  # pragma: no cover - never trained
        raise RuntimeError("sigma estimation runs forward only")


def estimate_sigma(model, data, *, n_batches: int = 100, batch_size: int = 16, seed: int = 0,
                   ranks=None):
    """Per-layer (sigma_q, sigma_k), each (L,) float32, from the model's float attention.

    model: a BertModel with the float attention core; data: an
    :class:`~hadref.data.batching.Encoded` training set. The minibatches are drawn with a
    generator seeded by ``seed`` (examples without replacement within a minibatch).
    ranks (:mod:`hadref.train.parallel`, default one process): every rank draws every
    minibatch, runs the round-robin share of them and the per-minibatch values are summed
    exactly, so every rank gets the one-process result; every rank must call it.
    """
    ranks = ranks or SINGLE
    if n_batches < 1 or batch_size < 1:
        raise HadrefError(f"--sigma-batches and --sigma-batch-size must be >= 1, got "
                          f"{n_batches} and {batch_size}")
    n_layers = model.config.num_hidden_layers
    rng = np.random.default_rng([seed, 0x5161])
    inner = model.attention_core
    recorder = _RecordingCore(inner, n_layers)
    model.attention_core = recorder
    stds = np.zeros((2, n_layers, n_batches))   # [q or k, layer, minibatch], float64
    try:
        for i in range(n_batches):
            idx = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
            if not ranks.owns(i):
                continue
            b = data.batch(idx)
            model.forward(b.input_ids, b.attention_mask, b.token_type_ids)
            for layer in range(n_layers):
                stds[0, layer, i] = recorder.q_std[layer][-1]
                stds[1, layer, i] = recorder.k_std[layer][-1]
    finally:
        model.attention_core = inner
    ranks.sum_exact(stds)
    sigma_q = np.array([np.mean(s) for s in stds[0]], dtype=np.float32)
    sigma_k = np.array([np.mean(s) for s in stds[1]], dtype=np.float32)
    if not (np.all(np.isfinite(sigma_q)) and np.all(sigma_q > 0)
            and np.all(np.isfinite(sigma_k)) and np.all(sigma_k > 0)):
        raise HadrefError(f"sigma estimation gave non-positive or non-finite values "
                          f"(sigma_q {sigma_q}, sigma_k {sigma_k}): is the teacher trained?")
    return sigma_q, sigma_k


def sigmas_from_checkpoint(extra: dict, n_layers: int, checkpoint_path):
    """(sigma_q, sigma_k) saved with a distillation checkpoint (its ``extra`` arrays),
    checked to hold one value per layer; a one-line error naming the file otherwise."""
    for key in ("sigma_q", "sigma_k"):
        if key not in extra or np.shape(extra[key]) != (n_layers,):
            raise HadrefError(f"{checkpoint_path}: checkpoint lacks extra/{key} "
                              f"({n_layers} values, one per layer)")
    return extra["sigma_q"], extra["sigma_k"]

"""sigma_Q, sigma_K of a decoder (HAD.md, "Standardization coefficients"), on the teacher's
**post-RoPE** queries and keys: what the HAD causal core binarizes.

The teacher runs (float attention, no cache) on ``n_batches`` minibatches of ``batch_size``
training windows drawn with a generator seeded by ``seed``; for each layer, sigma_Q is the
mean over minibatches of the standard deviation of all elements of that minibatch's
post-RoPE q (every head and dimension) over valid tokens only, sigma_K likewise over the
h_kv key heads. q and k are read through :class:`hadref.had.causal_core.RecordingCausalCore`
wrapped around the teacher's float core, so nothing in the model changes. The LM default is
8 windows (one per minibatch): a 1,024-token window already holds 9 x 1,024 x 64 query
elements per layer.
"""

from __future__ import annotations

import numpy as np

from hadref.data.text import Windows, window_batch
from hadref.errors import HadrefError


def _valid_std(x: np.ndarray, mask: np.ndarray | None) -> float:
    """x (B, h, T, d), mask (B, T) bool or None -> std over valid tokens (float64)."""
    tokens = x.transpose(0, 2, 1, 3)          # (B, T, h, d)
    if mask is not None:
        tokens = tokens[mask]
    return float(np.std(tokens, dtype=np.float64))


def sigma_of_batches(model, batches):
    """Per-layer (sigma_q, sigma_k), each (L,) float32: the mean over ``batches`` (an
    iterable of (input_ids (B, T) int, attention_mask (B, T) or None)) of the std of each
    layer's post-RoPE q, resp. k, over valid tokens. The model is left as it was."""
    from hadref.had.causal_core import RecordingCausalCore

    n_layers = model.config.num_hidden_layers
    inner = model.attention_core
    recorder = RecordingCausalCore(inner)
    model.attention_core = recorder
    stds = [[], []]   # [q or k][minibatch] -> (L,) float64
    try:
        for input_ids, attention_mask in batches:
            model.forward(input_ids, attention_mask, compute_logits=False)
            mask = None if attention_mask is None else np.asarray(attention_mask) != 0
            for which in (0, 1):
                stds[which].append([_valid_std(recorder.qk(layer)[which], mask)
                                    for layer in range(n_layers)])
    finally:
        model.attention_core = inner
    if not stds[0]:
        raise HadrefError("sigma estimation: no minibatch to measure")
    sigma_q = np.mean(stds[0], axis=0).astype(np.float32)
    sigma_k = np.mean(stds[1], axis=0).astype(np.float32)
    if not (np.all(np.isfinite(sigma_q)) and np.all(sigma_q > 0)
            and np.all(np.isfinite(sigma_k)) and np.all(sigma_k > 0)):
        raise HadrefError(f"sigma estimation gave non-positive or non-finite values "
                          f"(sigma_q {sigma_q}, sigma_k {sigma_k})")
    return sigma_q, sigma_k


def estimate_sigma_lm(model, windows: Windows, *, n_batches: int = 8, batch_size: int = 1,
                      seed: int = 0):
    """Per-layer (sigma_q, sigma_k), each (L,) float32, from ``model`` (a LlamaModel with a
    float attention core) on ``n_batches`` random minibatches of ``windows``."""
    if n_batches < 1 or batch_size < 1:
        raise HadrefError(f"--sigma-batches and --sigma-batch-size must be >= 1, got "
                          f"{n_batches} and {batch_size}")
    rng = np.random.default_rng([seed, 0x5161])

    def batches():
        for _ in range(n_batches):
            idx = rng.choice(len(windows), size=min(batch_size, len(windows)), replace=False)
            b = window_batch(windows, idx)
            yield b.input_ids, b.attention_mask

    return sigma_of_batches(model, batches())

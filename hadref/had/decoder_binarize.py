"""The decoder teacher binarized without distillation (the paper's baseline), for evaluation.

sigma_Q, sigma_K per layer (HAD.md, "Standardization coefficients") are measured on the
float teacher's **post-RoPE** q and k (what the HAD causal core binarizes): the mean over
``n_windows`` windows of ``length`` tokens (one window per minibatch, every token valid)
of the standard deviation of all elements of that window's q (every head and dimension),
resp. k (the h_kv key heads). The windows are the start of Python's own
``pydoc_data.topics`` (the language reference's help topics, sorted by name and joined
with blank lines; PSF licence, ships with every Python): text that is neither the
held-out evaluation text nor a passkey prompt. Then the model's attention core becomes
``HADCausalCore.for_inference`` (hard signs, causal top-N, packed kernels and packed key
cache) through :func:`hadref.had.causal_core.binarized_teacher`.
"""

from __future__ import annotations

import numpy as np

from hadref.errors import HadrefError

SIGMA_TEXT = "pydoc_data.topics"


def sigma_windows(tokenizer, n_windows: int = 4, length: int = 1024) -> np.ndarray:
    """(n_windows, length) int64 token ids: the first n_windows x length tokens of
    ``pydoc_data.topics``."""
    from pydoc_data import topics

    if n_windows < 1 or length < 2:
        raise HadrefError(f"--sigma-windows, --sigma-len: expected >= 1 and >= 2, got "
                          f"{n_windows} and {length}")
    text = "\n\n".join(topics.topics[name] for name in sorted(topics.topics))
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    need = n_windows * length
    if ids.size < need:
        raise HadrefError(f"{SIGMA_TEXT}: {ids.size} tokens, fewer than --sigma-windows x "
                          f"--sigma-len = {need}")
    return ids[:need].reshape(n_windows, length)


def decoder_sigma(model, windows) -> tuple[np.ndarray, np.ndarray]:
    """windows (W, T) int -> (sigma_q, sigma_k), each (L,) float32: the mean over windows of
    the std of each layer's post-RoPE q, resp. k (the distillation's definition,
    :func:`hadref.distill.lm_sigma.sigma_of_batches`, one window per minibatch)."""
    from hadref.distill.lm_sigma import sigma_of_batches

    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1:
        raise HadrefError(f"windows: expected (W, T) token ids, got shape {windows.shape}")
    return sigma_of_batches(model, ((w[None], None) for w in windows))


def binarize_decoder(model, n_windows: int = 4, length: int = 1024, top_n: int | None = None,
                     top_n_ratio: float | None = None):
    """The float decoder ``model`` binarized without distillation: (binarized model, info
    dict with sigma_q, sigma_k, top_n, top_n_ratio, sigma_text)."""
    from hadref.had.causal_core import DEFAULT_TOP_N_RATIO, binarized_teacher

    if getattr(model, "had", None):
        raise HadrefError("--binarize: the model is already a HAD student (binarize a float "
                          "teacher)")
    if model.tokenizer is None:
        raise HadrefError("--binarize: the model file has no tokenizer (sigma is measured on "
                          "text)")
    ratio = DEFAULT_TOP_N_RATIO if top_n_ratio is None else top_n_ratio
    windows = sigma_windows(model.tokenizer, n_windows, length)
    sq, sk = decoder_sigma(model, windows)
    out = binarized_teacher(model, sq, sk, top_n=top_n, top_n_ratio=ratio)
    info = {"sigma_q": sq.tolist(), "sigma_k": sk.tolist(), "top_n": top_n,
            "top_n_ratio": None if top_n is not None else ratio,
            "sigma_text": f"{SIGMA_TEXT}, first {windows.shape[0]} x {windows.shape[1]} tokens"}
    return out, info


__all__ = ["SIGMA_TEXT", "binarize_decoder", "decoder_sigma", "sigma_windows"]

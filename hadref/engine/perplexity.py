"""Token NLL and perplexity of a decoder over a text, per context length and position band.

For each window length n the token ids are cut into windows of n tokens starting every
``stride`` tokens (default n: disjoint windows); each window is scored on its own (the
model sees only that window), giving n - 1 next-token NLLs. Reported per length: the mean
NLL and perplexity over all scored tokens, and over two bands of window positions, the
first 512 predictions and the last 512, so that the gain from long context shows.
"""

from __future__ import annotations

import math

import numpy as np

from hadref.errors import HadrefError

BAND = 512


def perplexity(model, ids, seq_lens, stride: int | None = None, where: str = "text") -> dict:
    """ids (N,) int -> {"tokens": N, "lengths": [{"seq", "windows", "stride", "scored",
    "nll", "ppl", "first512": {"nll", "ppl"}, "last512": {...}}, ...]}."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    limit = model.config.max_position_embeddings
    results = []
    for n in seq_lens:
        if n > limit:
            raise HadrefError(f"--seq: {n} tokens exceed the model's context length ({limit})")
        if n < 2:
            raise HadrefError(f"--seq: a window needs at least 2 tokens, got {n}")
        if ids.size < n:
            raise HadrefError(f"{where}: {ids.size} tokens, fewer than --seq {n}")
        step = n if stride is None else stride
        starts = range(0, ids.size - n + 1, step)
        per_window = [model.token_nll(ids[s:s + n]) for s in starts]
        nll = np.stack(per_window)  # (windows, n - 1)
        band = min(BAND, n - 1)
        results.append({
            "seq": int(n), "windows": len(per_window), "stride": int(step),
            "scored": int(nll.size), **_summary(nll),
            "first512": _summary(nll[:, :band]), "last512": _summary(nll[:, -band:]),
        })
    return {"tokens": int(ids.size), "lengths": results}


def _summary(nll) -> dict:
    mean = float(np.mean(nll))
    return {"nll": mean, "ppl": math.exp(mean)}

"""Losses with their gradients: softmax cross-entropy (classification) and MSE (regression).

Both return ``(loss, dlogits)`` where dlogits is the gradient of the returned mean loss, so
``model.backward(dlogits=dlogits)`` trains on it directly.
"""

import numpy as np

from hadref.errors import HadrefError


def log_softmax(logits):
    """logits (B, C) -> log-probabilities (B, C), numerically stable."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """logits (B, C) float, labels (B,) int in [0, C) -> (mean loss float, dlogits (B, C))."""
    labels = np.asarray(labels)
    if labels.shape != logits.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise HadrefError(f"labels: expected {logits.shape[0]} integer class ids, "
                          f"got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise HadrefError(f"labels: class ids must be in [0, {logits.shape[1]}), "
                          f"got {labels.min()}..{labels.max()}")
    n = logits.shape[0]
    logp = log_softmax(logits)
    rows = np.arange(n)
    loss = -logp[rows, labels].mean()
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return float(loss), dlogits.astype(logits.dtype, copy=False)


def mse(predictions, targets):
    """predictions (B, 1) or (B,), targets (B,) -> (mean squared error, dpredictions)."""
    targets = np.asarray(targets, dtype=predictions.dtype).reshape(predictions.shape)
    diff = predictions - targets
    return float(np.mean(diff * diff)), (2.0 / diff.size) * diff

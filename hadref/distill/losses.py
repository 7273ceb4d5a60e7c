"""Distillation losses of HAD.md, each a forward returning ``(loss, gradient)``.

The gradient is taken with respect to the *student's* input only: the teacher is frozen.
All functions work in the dtype they are given (float32 in training, float64 in the
finite-difference tests).

Attention distillation (HAD.md, "Losses")::

    L_attn = 1/(M * R) * sum_{maps m, valid query rows i} KL(softmax(S_T[m,i]) || softmax(S_S[m,i]))

with M = layers x heads maps, R = valid query rows of the batch, padding keys masked in
both distributions and padding query rows left out. The scores are the attention hook's
``aux['scores']``, already divided by sqrt(d). The student's distribution is taken from
its transformed logits *before* the top-N mask (the masked one is zero outside N entries,
which would make the KL infinite): this is the choice HAD.md documents.
"""

from __future__ import annotations

import numpy as np

from hadref.engine.layers.losses import mse


def _masked_log_softmax(scores: np.ndarray, key_mask: np.ndarray) -> np.ndarray:
    """log softmax over the last axis with invalid keys at -inf. scores (..., T);
    key_mask broadcastable to it, bool. Rows with no valid key give -inf everywhere."""
    masked = np.where(key_mask, scores, -np.inf)
    top = np.max(masked, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = masked - top
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def attention_kl(teacher_scores, student_scores, key_mask):
    """Attention distillation loss and its gradient with respect to the student scores.

    teacher_scores, student_scores: lists of L arrays (B, h, T, T) (scaled logits; entries
    at padding keys are ignored); key_mask: (B, T) bool, True = valid token (valid keys and
    valid query rows alike). Returns (loss: float, grads: list of L arrays (B, h, T, T),
    zero at padding keys and padding query rows).
    """
    key_mask = np.asarray(key_mask, dtype=bool)
    keys = key_mask[:, None, None, :]          # (B, 1, 1, T)
    rows = key_mask[:, None, :, None]          # (B, 1, T, 1)
    n_maps = sum(s.shape[1] for s in student_scores)
    n_rows = int(key_mask.sum())
    norm = float(n_maps * max(n_rows, 1))
    total, grads = 0.0, []
    for s_t, s_s in zip(teacher_scores, student_scores):
        log_pt = _masked_log_softmax(s_t, keys)
        log_ps = _masked_log_softmax(s_s, keys)
        pt = np.exp(log_pt)                    # exactly 0 at padding keys
        valid = keys & rows
        with np.errstate(invalid="ignore"):   # 0 * (-inf - -inf) at padding: masked out
            term = np.where(valid, pt * (log_pt - log_ps), 0.0)
        total += float(term.sum(dtype=np.float64))
        grads.append(np.where(valid, np.exp(log_ps) - pt, 0.0).astype(s_s.dtype) / s_s.dtype.type(norm))
    return total / norm, grads


def output_kl(teacher_logits, student_logits, temperature: float = 1.0):
    """Output distillation: mean over the batch of KL(softmax(z_T/tau) || softmax(z_S/tau)).

    teacher_logits, student_logits: (B, C). No tau**2 factor (HAD.md's loss as written; at
    the default tau = 1 the two conventions agree). Returns (loss, dlogits (B, C)).
    """
    tau = float(temperature)
    b = student_logits.shape[0]
    all_keys = np.ones(student_logits.shape, dtype=bool)
    log_pt = _masked_log_softmax(teacher_logits / tau, all_keys)
    log_ps = _masked_log_softmax(student_logits / tau, all_keys)
    pt = np.exp(log_pt)
    loss = float(np.sum(pt * (log_pt - log_ps), dtype=np.float64)) / b
    grad = (np.exp(log_ps) - pt) / (tau * b)
    return loss, grad.astype(student_logits.dtype)


def output_loss(teacher_out, student_out, *, regression: bool, temperature: float = 1.0):
    """L_out: :func:`output_kl` for classification, MSE against the teacher's outputs for
    regression (STS-B). Returns (loss, dstudent_out (B, C))."""
    if regression:
        return mse(student_out, teacher_out)
    return output_kl(teacher_out, student_out, temperature)

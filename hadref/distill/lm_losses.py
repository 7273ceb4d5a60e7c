"""Output distillation for a language model: the teacher's and the student's next-token
distributions compared at every valid position (HAD.md, "Losses"; issue 20).

::

    L_out = 1/P * sum over valid positions p of KL( softmax(z_T[p]/tau) || softmax(z_S[p]/tau) )

P = the number of valid positions of the batch (attention_mask != 0; each position's
distribution is over the token that follows it, the last valid one included). There is
**no tau**2 factor** (HAD.md's loss as written, as :func:`hadref.distill.losses.output_kl`
for BERT): at the default tau = 1 the two conventions agree; with tau != 1 the gradient is
1/tau**2 times the tau**2-scaled one (Hinton et al.), so a larger --temperature is also a
smaller effective learning rate on this term.

The vocabulary is 49,152 for SmolLM2: (T, V) float64 temporaries for a 1,024-token window
are 400 MB, so the loss walks the positions in chunks of ``chunk`` rows; peak extra memory
is a few (chunk, V) arrays. The attention loss L_attn is computed inside the HAD
causal core, layer by layer (hadref.had.causal_core, ``attention_targets``).
"""

from __future__ import annotations

import numpy as np

from hadref.errors import HadrefError


def _log_softmax(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=-1, keepdims=True)
    shifted = z - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_kl(teacher_logits, student_logits, attention_mask=None, temperature: float = 1.0,
                  chunk: int = 256, out=None):
    """L_out and its gradient with respect to the student's logits.

    teacher_logits, student_logits: (B, T, V) float (the teacher's may be of another
    dtype); attention_mask: (B, T), nonzero = valid position (None: all valid). Computed in
    the wider of the two dtypes (float32 logits: float32 softmaxes, the sum in float64;
    float64 in the finite-difference tests), ``chunk`` positions at a time. Returns
    (loss: float, dlogits (B, T, V) in the student's dtype, zero at padding positions).
    ``out``: an array (B, T, V) of the student's dtype to write dlogits into (it may be
    ``student_logits`` itself: each chunk is read before it is overwritten).
    """
    zt = np.asarray(teacher_logits)
    zs = np.asarray(student_logits)
    if zt.shape != zs.shape or zs.ndim != 3:
        raise HadrefError(f"next_token_kl: teacher logits {zt.shape} and student logits "
                          f"{zs.shape} must be equal (batch, tokens, vocabulary) shapes")
    if not temperature > 0:
        raise HadrefError(f"--temperature must be positive, got {temperature}")
    if chunk < 1:
        raise HadrefError(f"next_token_kl: chunk must be at least 1, got {chunk}")
    nb, nt, nv = zs.shape
    valid = (np.ones((nb, nt), bool) if attention_mask is None
             else np.asarray(attention_mask) != 0)
    if valid.shape != (nb, nt):
        raise HadrefError(f"next_token_kl: attention_mask {valid.shape}, expected {(nb, nt)}")
    grad = np.empty(zs.shape, zs.dtype) if out is None else out
    rows = np.flatnonzero(valid.reshape(-1))
    count = len(rows)
    zt2, zs2, g2 = zt.reshape(-1, nv), zs.reshape(-1, nv), grad.reshape(-1, nv)
    g2[~valid.reshape(-1)] = 0   # padding rows (never read, also when out is zs)
    tau = float(temperature)
    work = np.result_type(zt.dtype, zs.dtype, np.float32)
    total = 0.0
    for s in range(0, count, chunk):
        r = rows[s:s + chunk]
        log_pt = _log_softmax(zt2[r].astype(work) / work.type(tau))
        log_ps = _log_softmax(zs2[r].astype(work) / work.type(tau))
        pt = np.exp(log_pt)
        total += float(np.sum(pt * (log_pt - log_ps), dtype=np.float64))
        g2[r] = (np.exp(log_ps) - pt) / (tau * max(count, 1))
    return total / max(count, 1), grad


def token_nll(logits, input_ids, attention_mask=None, chunk: int = 256) -> tuple[float, int]:
    """(sum of -log p(next token), number of predicted tokens) over the positions p whose
    next position p + 1 is valid. logits (B, T, V), input_ids (B, T) int."""
    z = np.asarray(logits)
    ids = np.asarray(input_ids)
    nb, nt, nv = z.shape
    valid = np.ones((nb, nt), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    pred = valid[:, :-1] & valid[:, 1:]
    b_idx, t_idx = np.nonzero(pred)
    total = 0.0
    for s in range(0, len(b_idx), chunk):
        b, t = b_idx[s:s + chunk], t_idx[s:s + chunk]
        lp = _log_softmax(z[b, t].astype(np.float64))
        total -= float(lp[np.arange(len(b)), ids[b, t + 1]].sum())
    return total, int(len(b_idx))

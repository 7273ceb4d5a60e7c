"""The attention-core contract: what the engine hands an attention core, what it expects back,
and the capabilities a core may declare.

The engine's self-attention layer computes q, k, v (after bias, before any scaling) and
hands them to ``model.attention_core``; :class:`hadref.engine.layers.attention.FloatAttentionCore`
(softmax attention) and :class:`hadref.had.core.HADAttentionCore` (HAD) implement it. A
capability is a class attribute that is ``True``; a core without it gets only the calls
of the protocol below.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

# Capabilities a core may declare (class attributes, default False):
#   supports_dropout: forward also accepts dropout=(p, rng) and drops its probabilities
#       itself (aux['probs'] stay the pre-dropout probabilities);
#   takes_strided_views: forward accepts strided q, k, v views of the fused projection (no
#       copy), and backward also accepts queries= (a slice of query rows outside which
#       dctx is zero) and out= (a (B, T, 3, h, d) array the gradients are written into).
CAPABILITIES = ("supports_dropout", "takes_strided_views")


@runtime_checkable
class AttentionCore(Protocol):
    """q, k, v: (B, h, T, d) float (C-contiguous unless the core takes strided views);
    key_mask: (B, T) bool, True = valid key; layer: the layer index."""

    supports_dropout: ClassVar[bool]
    takes_strided_views: ClassVar[bool]

    def forward(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, key_mask: np.ndarray,
                layer: int, need_scores: bool) -> tuple[np.ndarray, Any, dict]:
        """Returns (ctx (B, h, T, d), cache, aux). aux['probs']: (B, h, T, T) the attention
        probabilities actually used (zeros on padding keys and, for HAD, outside the
        top-N set); aux['scores']: (B, h, T, T), only when need_scores, the scaled logits
        the attention distillation loss reads (float: QK^T/sqrt(d); HAD: the transformed
        QK^T/sqrt(d) before the top-N mask). Entries at padding keys are finite and must
        be ignored by consumers."""

    def backward(self, cache: Any, dctx: np.ndarray,
                 dscores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dctx: (B, h, T, d); dscores: (B, h, T, T) or None, the gradient with respect to
        aux['scores']. Returns (dq, dk, dv), each (B, h, T, d)."""


def has_capability(core, name: str) -> bool:
    """True when ``core``'s class declares capability ``name`` (see ``CAPABILITIES``)."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown attention-core capability {name!r}")
    return bool(getattr(type(core), name, False))

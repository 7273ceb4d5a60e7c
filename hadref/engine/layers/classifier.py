"""Classification head (Hugging Face BertForSequenceClassification): logits = dense(dropout(pooled)).

Parameters: ``classifier.weight`` (C, H), ``classifier.bias`` (C,).
"""

from typing import NamedTuple

from hadref.engine.layers.dropout import dropout_backward, dropout_forward
from hadref.engine.layers.linear import linear_backward, linear_forward

WEIGHT = "classifier.weight"
BIAS = "classifier.bias"


class ClassifierCache(NamedTuple):
    """What ``classifier_forward`` saves for the backward."""

    dropout: object   # DropoutCache or None
    dense: object     # LinearCache


def classifier_forward(pooled, params, dropout_p, rng, train):
    """pooled (B, H) -> (logits (B, C), cache)."""
    dropped, drop_cache = dropout_forward(pooled, dropout_p, rng, train)
    logits, dense_cache = linear_forward(dropped, params[WEIGHT], params[BIAS])
    return logits, ClassifierCache(drop_cache, dense_cache)


def classifier_backward(dlogits, cache):
    """dlogits (B, C) -> (dpooled (B, H), {name: gradient})."""
    drop_cache, dense_cache = cache
    ddropped, dweight, dbias = linear_backward(dlogits, dense_cache)
    return dropout_backward(ddropped, drop_cache), {WEIGHT: dweight, BIAS: dbias}

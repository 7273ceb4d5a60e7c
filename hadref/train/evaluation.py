"""A model's GLUE metric on a tokenized split."""

from __future__ import annotations

import numpy as np

from hadref.data.batching import eval_batches
from hadref.errors import HadrefError
from hadref.train import metrics
from hadref.train.parallel import SINGLE


def predict(model, data, batch_size: int = 64, ranks=None) -> np.ndarray:
    """(n, C) logits of ``model`` on every example of ``data`` (an Encoded set), in file
    order, float32. Runs through whatever attention core the model holds.

    ranks (:mod:`hadref.train.parallel`, default one process): the batches are split
    round-robin over the ranks and the logits summed, exactly (each row comes from one
    rank), so every rank gets the one-process result; every rank must call it."""
    ranks = ranks or SINGLE
    if model.num_labels is None:
        raise HadrefError("the model has no classifier head: fine-tune it first (hadref finetune)")
    logits = np.zeros((len(data), model.num_labels), dtype=np.float32)
    for j, batch in enumerate(eval_batches(data, batch_size)):
        if not ranks.owns(j):
            continue
        out = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        logits[batch.index] = out.logits
    return ranks.sum_exact(logits)


def evaluate(model, data, task, batch_size: int = 64, ranks=None) -> tuple[dict[str, float], np.ndarray]:
    """(task metrics {GLUE name: value}, (n,) predictions) of ``model`` on ``data``
    (ranks: as :func:`predict`)."""
    preds = metrics.predictions(predict(model, data, batch_size, ranks), task.is_regression)
    return metrics.compute(task.metrics, preds, data.labels), preds

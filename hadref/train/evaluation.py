"""A model's GLUE metric on a tokenized split."""

from __future__ import annotations

import numpy as np

from hadref.data.batching import eval_batches
from hadref.errors import HadrefError
from hadref.train import metrics


def predict(model, data, batch_size: int = 64) -> np.ndarray:
    """(n, C) logits of ``model`` on every example of ``data`` (an Encoded set), in file
    order, float32. Runs through whatever attention core the model holds."""
    if model.num_labels is None:
        raise HadrefError("the model has no classifier head: fine-tune it first (hadref finetune)")
    logits = np.zeros((len(data), model.num_labels), dtype=np.float32)
    for batch in eval_batches(data, batch_size):
        out = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        logits[batch.index] = out.logits
    return logits


def evaluate(model, data, task, batch_size: int = 64) -> tuple[dict[str, float], np.ndarray]:
    """(task metrics {GLUE name: value}, (n,) predictions) of ``model`` on ``data``."""
    preds = metrics.predictions(predict(model, data, batch_size), task.is_regression)
    return metrics.compute(task.metrics, preds, data.labels), preds

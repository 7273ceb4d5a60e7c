"""GLUE metrics, named as GLUE's evaluation (and HF ``evaluate``'s glue metric) names them:
``accuracy``, ``f1`` (binary, positive class 1), ``matthews_correlation``, ``pearson``,
``spearmanr``. Inputs are 1-D arrays of equal length: class ids (int) or scores (float)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from hadref.errors import HadrefError


def _pair(preds, labels):
    preds, labels = np.asarray(preds).ravel(), np.asarray(labels).ravel()
    if preds.shape != labels.shape or preds.size == 0:
        raise HadrefError(f"metrics need equal, non-empty prediction and label arrays, "
                          f"got {preds.size} and {labels.size}")
    return preds, labels


def accuracy(preds, labels) -> float:
    preds, labels = _pair(preds, labels)
    return float(np.mean(preds == labels))


def f1(preds, labels) -> float:
    """Binary F1 of class 1; 0.0 when there is no true positive."""
    preds, labels = _pair(preds, labels)
    tp = float(np.sum((preds == 1) & (labels == 1)))
    fp = float(np.sum((preds == 1) & (labels != 1)))
    fn = float(np.sum((preds != 1) & (labels == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_correlation(preds, labels) -> float:
    """Matthews correlation coefficient of two binary labelings; 0.0 when undefined."""
    preds, labels = _pair(preds, labels)
    p, y = preds == 1, labels == 1
    tp, tn = float(np.sum(p & y)), float(np.sum(~p & ~y))
    fp, fn = float(np.sum(p & ~y)), float(np.sum(~p & y))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(preds, labels) -> float:
    preds, labels = _pair(preds, labels)
    return float(stats.pearsonr(preds.astype(np.float64), labels.astype(np.float64))[0])


def spearmanr(preds, labels) -> float:
    preds, labels = _pair(preds, labels)
    return float(stats.spearmanr(preds.astype(np.float64), labels.astype(np.float64))[0])


_METRICS = {"accuracy": accuracy, "f1": f1, "matthews_correlation": matthews_correlation,
            "pearson": pearson, "spearmanr": spearmanr}


def compute(names, preds, labels) -> dict[str, float]:
    """{name: value} for the metric names given (a task's ``metrics``)."""
    unknown = [n for n in names if n not in _METRICS]
    if unknown:
        raise HadrefError(f"unknown metric(s) {unknown}; expected {sorted(_METRICS)}")
    return {n: _METRICS[n](preds, labels) for n in names}


def predictions(logits: np.ndarray, regression: bool) -> np.ndarray:
    """(n, C) logits -> (n,) class ids (argmax, lower index on ties) or (n,) scores."""
    logits = np.asarray(logits)
    return logits[:, 0].astype(np.float64) if regression else np.argmax(logits, axis=1)


def format_metrics(values: dict) -> str:
    """``"accuracy 48.44, f1 50.00"``: every metric x 100, as GLUE reports them (the one
    unit of the text output; JSON results and logs keep the fractions)."""
    return ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items())

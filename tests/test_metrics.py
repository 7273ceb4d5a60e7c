"""GLUE metrics against hand-computed values and scipy."""

import numpy as np
import pytest

from hadref.errors import HadrefError
from hadref.train import metrics


def test_binary_metrics_by_hand():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    # tp 2, fp 1, fn 1, tn 2
    assert metrics.accuracy(preds, labels) == pytest.approx(4 / 6)
    assert metrics.f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.matthews_correlation(preds, labels) == pytest.approx((4 - 1) / 9)
    assert metrics.matthews_correlation(np.ones(4), np.array([1, 0, 1, 0])) == 0.0
    assert metrics.f1(np.zeros(3), np.zeros(3)) == 0.0


def test_correlations_and_compute_names():
    x = np.array([0.1, 0.4, 0.3, 0.9, 2.0])
    y = x ** 3
    assert metrics.spearmanr(x, y) == pytest.approx(1.0)
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, y) < 1.0
    out = metrics.compute(("pearson", "spearmanr"), x, y)
    assert list(out) == ["pearson", "spearmanr"]
    with pytest.raises(HadrefError, match="unknown metric"):
        metrics.compute(("auc",), x, y)
    with pytest.raises(HadrefError, match="equal, non-empty"):
        metrics.accuracy([1, 0], [1])


def test_predictions():
    logits = np.array([[0.0, 1.0], [2.0, 2.0], [3.0, -1.0]], np.float32)
    assert metrics.predictions(logits, False).tolist() == [1, 0, 0]
    assert metrics.predictions(logits[:, :1], True).tolist() == [0.0, 2.0, 3.0]

"""Classification metrics from confusion matrices, checked against sklearn.metrics."""

import numpy as np
import pytest
from sklearn import metrics as skm

from adamlab.training import metrics


def _confusion(y_true, y_pred, num_classes):
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    return confusion


@pytest.mark.parametrize("seed", range(6))
def test_macro_metrics_match_sklearn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 12))
    n = int(rng.integers(1, 200))
    # Skewed class frequencies so some classes are missing from labels and/or predictions.
    p = rng.dirichlet(np.full(num_classes, 0.3))
    y_true = rng.choice(num_classes, n, p=p)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.choice(num_classes, n, p=p))
    confusion = _confusion(y_true, y_pred, num_classes)
    np.testing.assert_array_equal(
        confusion, skm.confusion_matrix(y_true, y_pred, labels=range(num_classes))
    )

    result = metrics.classification_metrics(confusion, loss_sum=2.5 * n, count=n)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    assert result["precision"] == pytest.approx(precision, abs=1e-12)
    assert result["recall"] == pytest.approx(recall, abs=1e-12)
    assert result["f1"] == pytest.approx(f1, abs=1e-12)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert result["loss"] == pytest.approx(2.5)
    assert result["count"] == n and result["confusion"] == confusion.tolist()


def test_per_class_zero_division_is_zero():
    # Class 0: predicted but never true (recall 0/0 -> 0); class 2: true but never predicted
    # (precision 0/0 -> 0); class 3: absent from both (left out of the macro average).
    y_true = np.array([1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1])
    confusion = _confusion(y_true, y_pred, 4)
    precision, recall, f1 = metrics.per_class_precision_recall_f1(confusion)
    np.testing.assert_allclose(precision, [0.0, 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(recall, [0.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(f1, [0.0, 0.4, 0.0, 0.0])
    # Macro over the 3 classes that occur: (0 + 1/3 + 0) / 3 etc.
    assert metrics.macro_precision_recall_f1(confusion) == pytest.approx((1 / 9, 1 / 6, 0.4 / 3))


def test_perfect_predictions():
    confusion = np.diag([3, 0, 5])  # class 1 absent: ignored rather than counted as 0
    result = metrics.classification_metrics(confusion, loss_sum=0.8, count=8)
    assert (result["accuracy"], result["precision"], result["recall"], result["f1"]) == (1, 1, 1, 1)
    assert result["loss"] == pytest.approx(0.1)


def test_accumulate_eval_sums_adds_batches_exactly():
    a = {
        "loss_sum": np.float32(1.5),
        "correct": 3,
        "count": 4,
        "confusion": np.array([[2, 1], [0, 1]]),
    }
    b = {
        "loss_sum": np.float32(0.25),
        "correct": 1,
        "count": 2,
        "confusion": np.array([[1, 1], [0, 0]], np.int32),
    }
    total = metrics.accumulate_eval_sums(metrics.accumulate_eval_sums(None, a), b)
    assert total["loss_sum"] == 1.75 and total["loss_sum"].dtype == np.float64
    assert total["count"] == 6 and total["correct"] == 4
    np.testing.assert_array_equal(total["confusion"], [[3, 2], [0, 1]])
    assert total["confusion"].dtype == np.int64
    result = metrics.metrics_from_sums(total)
    assert result["accuracy"] == pytest.approx(4 / 6)  # trace of the confusion matrix
    assert result["loss"] == pytest.approx(1.75 / 6)


@pytest.mark.parametrize(
    "confusion,count,match",
    [
        (np.ones((2, 3), int), 6, r"square \[classes, classes\]"),
        (np.ones((2, 2)), 4, "non-negative integer counts"),
        (np.array([[1, -1], [0, 2]]), 2, "non-negative integer counts"),
        (np.zeros((2, 2), int), 0, "count=0: cannot compute metrics of an empty evaluation"),
        (np.ones((2, 2), int), 5, "count=5 differs from the confusion matrix total 4"),
    ],
)
def test_bad_input_is_a_clear_error(confusion, count, match):
    with pytest.raises(ValueError, match=match):
        metrics.classification_metrics(confusion, loss_sum=1.0, count=count)


@pytest.mark.parametrize(
    "function", [metrics.per_class_precision_recall_f1, metrics.macro_precision_recall_f1]
)
def test_public_metric_functions_refuse_a_bad_confusion_matrix(function):
    with pytest.raises(ValueError, match=r"square \[classes, classes\]"):
        function(np.ones((2, 3), int))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        function(np.array([[1, -1], [0, 2]]))

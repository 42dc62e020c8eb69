"""Classification metrics from accumulated eval sums (pure numpy, host side).

The eval step returns per-batch sums (loss_sum, correct, count, confusion); these functions turn
their totals into loss, accuracy and macro precision/recall/F1, by sklearn's conventions
(docs/training.md, Evaluation; tested against sklearn).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _check_confusion(confusion: Any) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(
            f"confusion must be a square [classes, classes] matrix, got {confusion.shape}"
        )
    if not np.issubdtype(confusion.dtype, np.integer) or np.any(confusion < 0):
        raise ValueError("confusion must hold non-negative integer counts")
    return confusion.astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0."""
    out = np.zeros(numerator.shape, np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def per_class_precision_recall_f1(confusion: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from confusion[true, predicted] (0/0 -> 0)."""
    return _per_class(_check_confusion(confusion))


def macro_precision_recall_f1(confusion: Any) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the classes that occur (docs/training.md)."""
    return _macro(_check_confusion(confusion))


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)  # TP + FP
    actual = confusion.sum(axis=1)  # TP + FN
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, actual)
    f1 = _safe_divide(2 * tp, predicted + actual)
    return precision, recall, f1


def _macro(confusion: np.ndarray) -> tuple[float, float, float]:
    occurs = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not occurs.any():
        return 0.0, 0.0, 0.0
    precision, recall, f1 = _per_class(confusion)
    return tuple(float(np.mean(x[occurs])) for x in (precision, recall, f1))


def classification_metrics(confusion: Any, loss_sum: float, count: int) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1 and the confusion matrix of an evaluation.

    Args:
      confusion: [classes, classes] counts, confusion[true, predicted], summed over the split.
      loss_sum: summed cross-entropy over the (unpadded) examples.
      count: number of (unpadded) examples; must equal confusion.sum().

    Returns:
      {"loss", "accuracy", "precision", "recall", "f1": float, "count": int,
       "confusion": list of lists of int (JSON-ready)}.
    """
    confusion = _check_confusion(confusion)
    count = int(count)
    if count < 1:
        raise ValueError(f"count={count}: cannot compute metrics of an empty evaluation")
    if count != confusion.sum():
        raise ValueError(f"count={count} differs from the confusion matrix total {confusion.sum()}")
    precision, recall, f1 = _macro(confusion)  # Checked above.
    return {
        "loss": float(loss_sum) / count,
        "accuracy": float(np.trace(confusion)) / count,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "count": count,
        "confusion": confusion.tolist(),
    }


def accumulate_eval_sums(total: Mapping[str, Any] | None, sums: Mapping[str, Any]) -> dict:
    """Adds one batch's eval sums (device arrays or numpy) to a running host total.

    Counts accumulate in int64 and the loss in float64, so the total is exact for counts and
    does not lose precision over many batches. Start with `total=None`.
    """
    sums = {k: np.asarray(v) for k, v in sums.items()}
    batch = {
        "loss_sum": np.float64(sums["loss_sum"]),
        "correct": np.int64(sums["correct"]),
        "count": np.int64(sums["count"]),
        "confusion": sums["confusion"].astype(np.int64),
    }
    if total is None:
        return batch
    return {k: total[k] + batch[k] for k in batch}


def metrics_from_sums(total: Mapping[str, Any]) -> dict[str, Any]:
    """`classification_metrics` of accumulated eval sums."""
    return classification_metrics(total["confusion"], total["loss_sum"], total["count"])

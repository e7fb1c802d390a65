"""The paper's metrics (AUROC, ACC, F1, specificity, sensitivity, PPV, NPV) and their table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["METRIC_KEYS", "compute_metrics", "format_metrics"]

# The headline metrics, in table order.
METRIC_KEYS = ("auroc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv")


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The paper's metrics with scikit-learn.

    Binary tasks: the positive class is the second one (G for ``ag``); keys
    ``auroc, acc, f1, specificity, sensitivity, ppv, npv``. Multi-class: the same keys
    as macro averages over one-vs-rest problems (``acc`` is overall accuracy) and
    ``per_class`` with each class's one-vs-rest values.

    Args:
        y_true: int ``[N]`` labels.
        probs: float ``[N, C]`` class probabilities.
        classes: class names, ``C`` of them.

    Returns:
        The metrics dict (``nan`` where undefined, e.g. AUROC with one class present).
    """
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    pred = probs.argmax(1)

    def auroc(y, score):
        return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")

    def one_vs_rest(y, p, score):
        return {
            "auroc": auroc(y, score),
            "acc": float(accuracy_score(y, p)),
            "f1": float(f1_score(y, p, zero_division=0)),
            "specificity": float(recall_score(y, p, pos_label=0, zero_division=0)),
            "sensitivity": float(recall_score(y, p, pos_label=1, zero_division=0)),
            "ppv": float(precision_score(y, p, pos_label=1, zero_division=0)),
            "npv": float(precision_score(y, p, pos_label=0, zero_division=0)),
        }

    if len(classes) == 2:
        out = one_vs_rest(y_true, pred, probs[:, 1])
        out["positive_class"] = classes[1]
    else:
        per = {c: one_vs_rest((y_true == k).astype(int), (pred == k).astype(int), probs[:, k])
               for k, c in enumerate(classes)}
        out = {k: float(np.nanmean([per[c][k] for c in classes])) if any(
            np.isfinite(per[c][k]) for c in classes) else float("nan") for k in METRIC_KEYS}
        out["acc"] = float(accuracy_score(y_true, pred))
        out["per_class"] = per
    out["n"] = int(len(y_true))
    return out


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """The metrics as a fixed-width table (rows: classes and macro, or the binary task)."""
    head = f"{'':<14}" + "".join(f"{k.upper():>13}" for k in METRIC_KEYS)
    rows = [title, head]
    if "per_class" in metrics:
        for c, m in metrics["per_class"].items():
            rows.append(f"{c:<14}" + "".join(f"{m[k]:>13.3f}" for k in METRIC_KEYS))
        rows.append(f"{'macro':<14}" + "".join(f"{metrics[k]:>13.3f}" for k in METRIC_KEYS))
    else:
        label = f"pos={metrics.get('positive_class', '?')}"
        rows.append(f"{label:<14}" + "".join(f"{metrics[k]:>13.3f}" for k in METRIC_KEYS))
    if "auroc_mean" in metrics:
        rows.append(f"{'fold mean':<14}" + "".join(
            f"{metrics[k + '_mean']:>8.3f}±{metrics[k + '_std']:<4.2f}" for k in METRIC_KEYS))
    return "\n".join(rows)


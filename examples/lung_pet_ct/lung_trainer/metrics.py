"""The paper's metrics (AUROC, ACC, F1, specificity, sensitivity, PPV, NPV) and their table."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmscale.data import CLASS_NAMES

__all__ = ["BOOTSTRAP_RESAMPLES", "METRIC_KEYS", "auroc_rows", "bootstrap_auroc_ci", "class_label",
           "compute_metrics", "format_metrics"]

# The headline metrics, in table order.
METRIC_KEYS = ("auroc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv")
# Patient resamples behind the AUROC confidence interval.
BOOTSTRAP_RESAMPLES = 2000


def class_label(letter: str) -> str:
    """A class letter spelled out: ``"G"`` -> ``"G (squamous cell carcinoma)"``."""
    name = CLASS_NAMES.get(letter)
    return f"{letter} ({name})" if name else letter


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                    ci: bool = True) -> dict[str, Any]:
    """The paper's metrics with scikit-learn, and a bootstrap 95% interval for the AUROC.

    Binary tasks: the positive class is the second one (G for ``ag``); keys
    ``auroc, acc, f1, specificity, sensitivity, ppv, npv``. Multi-class: the same keys
    as macro averages over one-vs-rest problems (``acc`` is overall accuracy) and
    ``per_class`` with each class's one-vs-rest values.

    Args:
        y_true: int ``[N]`` labels.
        probs: float ``[N, C]`` class probabilities.
        classes: class names, ``C`` of them.
        ci: add ``auroc_ci95`` (:func:`bootstrap_auroc_ci`); off for the per-epoch
            validation, where it would only cost time.

    Returns:
        The metrics dict (``nan`` where undefined, e.g. AUROC with one class present),
        with ``classes`` (letter -> name).
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
    out["classes"] = {c: CLASS_NAMES.get(c, c) for c in classes}
    if ci:
        out["auroc_ci95"] = bootstrap_auroc_ci(y_true, probs)
    return out


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """The metrics as a fixed-width table with the class letters spelled out.

    Rows: each class and the macro mean (multi-class), or one row for the binary task
    labelled ``G vs A`` (positive class first; a legend line says which class
    sensitivity/PPV and specificity/NPV refer to); then the AUROC's bootstrap interval
    and, over folds, ``mean±sd``.
    """
    head = f"{'':<14}" + "".join(f"{k.upper():>13}" for k in METRIC_KEYS)
    rows = [title, head]
    classes = list(metrics.get("classes", {}))
    if "per_class" in metrics:
        for c, m in metrics["per_class"].items():
            rows.append(f"{c:<14}" + "".join(f"{m[k]:>13.3f}" for k in METRIC_KEYS))
        rows.append(f"{'macro':<14}" + "".join(f"{metrics[k]:>13.3f}" for k in METRIC_KEYS))
        legend = ("each class row is that class vs the rest; macro = their mean; classes: "
                  + ", ".join(class_label(c) for c in classes))
    else:
        pos = metrics.get("positive_class", "?")
        neg = next((c for c in classes if c != pos), "?")
        rows.append(f"{f'{pos} vs {neg}':<14}" + "".join(f"{metrics[k]:>13.3f}" for k in METRIC_KEYS))
        legend = (f"positive class {class_label(pos)}, negative {class_label(neg)}: sensitivity and "
                  f"PPV are for {pos}, specificity and NPV for {neg}")
    if "auroc_mean" in metrics:
        rows.append(f"{'fold mean':<14}" + "".join(
            f"{metrics[k + '_mean']:>8.3f}±{metrics[k + '_std']:<4.2f}" for k in METRIC_KEYS))
        legend += "; fold mean = mean±sd over the folds"
    ci = metrics.get("auroc_ci95")
    if ci:
        rows.append(f"AUROC {metrics['auroc']:.3f}, {ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f} "
                    f"(bootstrap, {ci['resamples_used']} resamples of the {metrics.get('n', '?')} patients)")
    rows.append(legend)
    return "\n".join(rows)


def auroc_rows(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U with average ranks for ties).

    Args:
        positive: bool ``[R, N]``, the positive samples of each row.
        scores: float ``[R, N]``, their scores.

    Returns:
        float ``[R]``; ``nan`` for a row with only one class.

    Example:
        >>> auroc_rows(np.array([[0, 0, 1, 1]], bool), np.array([[0.1, 0.6, 0.7, 0.2]]))
        array([0.75])
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    ranks = rankdata(np.asarray(scores, np.float64), axis=1)
    n_pos = positive.sum(1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_auroc_ci(y_true: np.ndarray, probs: np.ndarray, n_boot: int = BOOTSTRAP_RESAMPLES,
                       level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap confidence interval of the AUROC, resampling patients.

    Each resample draws ``N`` patients with replacement and recomputes the AUROC
    (binary: of the second class's probability; multi-class: the one-vs-rest macro
    mean); resamples holding one class only are left out and counted.

    Args:
        y_true: int ``[N]`` labels.
        probs: float ``[N, C]`` class probabilities.
        n_boot: resamples.
        level: coverage of the interval.
        seed: the resampling seed (the interval is reproducible).

    Returns:
        ``{"low", "high", "level", "resamples", "resamples_used"}`` (``low``/``high``
        ``nan`` when no resample holds two classes).

    Example:
        >>> y = np.array([0, 0, 0, 1, 1, 1])
        >>> p = np.array([[.9, .1], [.8, .2], [.4, .6], [.3, .7], [.6, .4], [.1, .9]])
        >>> ci = bootstrap_auroc_ci(y, p)
        >>> bool(0.0 <= ci["low"] <= 8 / 9 <= ci["high"] <= 1.0), ci["resamples"]
        (True, 2000)
    """
    y = np.asarray(y_true)
    probs = np.asarray(probs, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    if probs.shape[1] == 2:
        aucs = auroc_rows(y[idx] == 1, probs[idx, 1])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows: kept as nan below
            aucs = np.nanmean(np.stack([auroc_rows(y[idx] == k, probs[idx, k])
                                        for k in range(probs.shape[1])]), axis=0)
    used = aucs[np.isfinite(aucs)]
    alpha = (1 - level) / 2
    low, high = (np.quantile(used, [alpha, 1 - alpha]) if len(used) else (np.nan, np.nan))
    return {"low": float(low), "high": float(high), "level": level, "resamples": int(n_boot),
            "resamples_used": int(len(used))}

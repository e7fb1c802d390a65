"""What a run writes for people: metrics.json, predictions.csv and the PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmscale.models import MMCAFNet

from .rundir import save_figure, write_output

__all__ = ["jsonable", "plot_attention", "plot_roc_confusion", "write_report"]


def write_report(folder: Path, labels, probs, ids, classes, metrics: dict, title: str) -> list[Path]:
    """``metrics.json``, ``predictions.csv``, ``roc.png`` and ``confusion.png``; returns their paths.

    Raises:
        RunError: a write failed.
    """
    folder = Path(folder)
    paths = [write_output(folder / "metrics.json", json.dumps(jsonable(metrics), indent=2).encode())]
    lines = ["patient_id,label," + ",".join(f"p_{c}" for c in classes)]
    for pid, y, p in zip(ids, labels, probs, strict=True):
        lines.append(f"{pid},{classes[int(y)]}," + ",".join(f"{v:.6f}" for v in p))
    paths.append(write_output(folder / "predictions.csv", ("\n".join(lines) + "\n").encode()))
    paths += plot_roc_confusion(np.asarray(labels), np.asarray(probs), classes, folder, title)
    return paths


def jsonable(x):
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x



def plot_roc_confusion(y_true, probs, classes, out: Path, title: str) -> list[Path]:
    """``roc.png`` and ``confusion.png`` in ``out`` (matplotlib, Agg); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    targets = [(classes[1], y_true == 1, probs[:, 1])] if len(classes) == 2 else [
        (c, y_true == k, probs[:, k]) for k, c in enumerate(classes)]
    for name, y, s in targets:
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths = [save_figure(fig, out / "roc.png")]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y_true, probs.argmax(1), labels=list(range(len(classes))),
                                            display_labels=list(classes), ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "confusion.png"))
    plt.close(fig)
    return paths


@torch.no_grad()
def plot_attention(model: MMCAFNet, volumes: torch.Tensor, ids: Sequence[str], out: Path) -> list[Path]:
    """One PNG per patient: CT slices with the finest spatial-attention gate over them.

    Args:
        model: the trained model (eval mode is set here).
        volumes: ``[N, C, D, H, W]`` centre crops.
        ids: patient IDs (file names).
        out: folder for ``attention_<ID>.png``.

    Returns:
        The written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    gates = model.spatial_attention_maps(volumes)[0]  # finest level first
    gates = F.interpolate(gates.float(), size=volumes.shape[2:], mode="trilinear", align_corners=False)
    paths = []
    for n, pid in enumerate(ids):
        d = volumes.shape[2]
        picks = np.linspace(d * 0.25, d * 0.75, 4).round().astype(int).clip(0, d - 1)
        fig, axes = plt.subplots(1, len(picks), figsize=(2.4 * len(picks), 2.6))
        for ax, k in zip(axes, picks, strict=True):
            ax.imshow(volumes[n, 0, k].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.imshow(gates[n, 0, k].cpu().numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1)
            ax.set_title(f"slice {k}", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{pid}: spatial attention (finest level)", fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"attention_{pid}.png", dpi=100))
        plt.close(fig)
    return paths


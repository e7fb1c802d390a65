"""What a run writes for people: metrics.json, predictions.csv and the PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmscale.models import MMCAFNet

from .metrics import class_label
from .rundir import save_figure, write_output

__all__ = ["attention_box_stats", "attention_gates", "box_mask", "jsonable", "pick_both_classes",
           "plot_attention", "plot_learning_curve", "plot_roc_confusion", "write_report"]


def write_report(folder: Path, labels, probs, ids, classes, metrics: dict, title: str) -> list[Path]:
    """``metrics.json``, ``predictions.csv``, ``roc.png`` and ``confusion.png``; returns their paths.

    With a ``history`` in ``metrics`` (one fold) or ``histories`` (several), also
    ``learning_curve.png``.

    Raises:
        RunError: a write failed.
    """
    folder = Path(folder)
    paths = [write_output(folder / "metrics.json", json.dumps(jsonable(metrics), indent=2).encode())]
    lines = ["patient_id,label," + ",".join(f"p_{c}" for c in classes)]
    for pid, y, p in zip(ids, labels, probs, strict=True):
        lines.append(f"{pid},{classes[int(y)]}," + ",".join(f"{v:.6f}" for v in p))
    paths.append(write_output(folder / "predictions.csv", ("\n".join(lines) + "\n").encode()))
    paths += plot_roc_confusion(np.asarray(labels), np.asarray(probs), classes, folder, title,
                                metrics.get("auroc_ci95"))
    histories = metrics.get("histories") or ({"": metrics["history"]} if metrics.get("history") else None)
    if histories:
        paths.append(plot_learning_curve(histories, folder / "learning_curve.png", title))
    return paths


def jsonable(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as ``None`` (JSON null)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc_confusion(y_true, probs, classes, out: Path, title: str, ci: dict | None = None) -> list[Path]:
    """``roc.png`` and ``confusion.png`` in ``out`` (matplotlib, Agg); returns their paths.

    Class letters are spelled out; with ``ci`` (from
    :func:`~.metrics.bootstrap_auroc_ci`) the binary curve's legend and the title
    carry the AUROC's interval.
    """
    from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    if len(classes) == 2:
        targets = [(f"{class_label(classes[1])} vs {classes[0]}", y_true == 1, probs[:, 1])]
    else:
        targets = [(f"{class_label(c)} vs rest", y_true == k, probs[:, k]) for k, c in enumerate(classes)]
    for name, y, s in targets:
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        label = f"{name}\nAUC {auc(fpr, tpr):.3f}"
        if ci and len(classes) == 2 and np.isfinite(ci["low"]):
            label += f" ({ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f})"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    sub = f"{len(y_true)} patients"
    if ci and len(classes) > 2 and np.isfinite(ci["low"]):
        sub += f"; macro AUC {ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f}"
    if ci:
        sub += f"\n(CI: bootstrap over patients, {ci['resamples_used']} resamples)"
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{title}\n{sub}")
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    paths = [save_figure(fig, out / "roc.png")]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    ConfusionMatrixDisplay.from_predictions(
        y_true, probs.argmax(1), labels=list(range(len(classes))),
        display_labels=[class_label(c).replace(" (", "\n(") for c in classes], ax=ax, colorbar=False)
    ax.set_title(f"{title}\nrows: true class, columns: predicted (highest probability)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "confusion.png"))
    plt.close(fig)
    return paths


def plot_learning_curve(histories: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Training loss and validation AUROC per epoch, one line per fold, the best epoch marked.

    Args:
        histories: fold name -> the fold's history (``epoch``, ``train_loss``,
            ``val_auroc`` per epoch).
        path: the PNG to write.
        title: the figure title.

    Returns:
        ``path``.

    Raises:
        RunError: the write failed.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        auc = [np.nan if h["val_auroc"] is None else h["val_auroc"] for h in hist]
        line, = ax_loss.plot(ep, [h["train_loss"] for h in hist], marker=".", label=name or None)
        ax_auc.plot(ep, auc, marker=".", color=line.get_color(), label=name or None)
        if np.isfinite(auc).any():
            best = int(np.nanargmax(auc))
            ax_auc.plot(ep[best], auc[best], "*", ms=11, color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_auc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_auc.set(xlabel="epoch", ylabel="validation AUROC", ylim=(0, 1.02),
               title="validation AUROC (* = best epoch, saved as best.pt)")
    ax_auc.title.set_fontsize(9)
    if len(histories) > 1:
        ax_auc.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


@torch.no_grad()
def attention_gates(model: MMCAFNet, volumes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """The finest pyramid level's spatial-attention gate ``[N, 1, d, h, w]`` (eval mode, batched)."""
    model.eval()
    return torch.cat([model.spatial_attention_maps(volumes[i:i + batch_size])[0].float().cpu()
                      for i in range(0, len(volumes), batch_size)])


def box_mask(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """bool ``[size, size]``: the pixels whose centres lie in ``box = (y0, x0, y1, x1)``."""
    y0, x0, y1, x1 = box
    r = np.arange(size)
    return ((r[:, None] >= y0) & (r[:, None] <= y1)) & ((r[None, :] >= x0) & (r[None, :] <= x1))


def _as_drawn(gates: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """Each gate cell repeated over the crop voxels it covers (nearest, no smoothing)."""
    return F.interpolate(gates.float(), size=size, mode="nearest").numpy()[:, 0]


def attention_box_stats(gates: torch.Tensor, labels: Sequence[int], boxes: Sequence, classes: Sequence[str],
                        size: tuple[int, int, int]) -> dict:
    """How much the attention gate favours the lesion box, per class, and how alike the maps are.

    For each patient with a box: the gate (each cell over the voxels it covers) on the
    crop's middle slice, where the box was annotated; ``ratio = mean inside the box /
    mean outside``. 1 means no preference for the lesion.

    Args:
        gates: ``[N, 1, d, h, w]`` from :func:`attention_gates`.
        labels: int ``[N]``.
        boxes: ``N`` boxes ``(y0, x0, y1, x1)`` in crop pixels, or ``None``.
        classes: class letters.
        size: the crop's ``(D, H, W)``.

    Returns:
        ``{"inside_outside_ratio": {class: {"mean", "median", "n"}},
        "inside_outside_ratio_of_the_mean_map": (the same), "mean_pairwise_correlation",
        "map_grid", "definition"}``.
    """
    drawn = _as_drawn(gates, size)
    common = drawn.mean(0)  # one map for everyone: what position alone explains
    mid = size[0] // 2
    ratios: dict[str, list[float]] = {c: [] for c in classes}
    baseline: dict[str, list[float]] = {c: [] for c in classes}
    for n, (y, box) in enumerate(zip(labels, boxes, strict=True)):
        if box is None:
            continue
        inside = box_mask(box, size[1])
        if inside.any() and (~inside).any():
            for out, sl in ((ratios, drawn[n, mid]), (baseline, common[mid])):
                out[classes[int(y)]].append(float(sl[inside].mean() / max(sl[~inside].mean(), 1e-12)))
    flat = gates.reshape(len(gates), -1).double().numpy()
    corr = float("nan")
    if len(flat) > 1 and (flat.std(1) > 0).all():
        c = np.corrcoef(flat)
        corr = float(c[np.triu_indices(len(flat), 1)].mean())
    def summary(values: dict[str, list[float]]) -> dict:
        return {c: {"mean": float(np.mean(r)) if r else float("nan"),
                    "median": float(np.median(r)) if r else float("nan"), "n": len(r)}
                for c, r in values.items()}

    return {
        "inside_outside_ratio": summary(ratios),
        "inside_outside_ratio_of_the_mean_map": summary(baseline),
        "mean_pairwise_correlation": corr,
        "map_grid": list(gates.shape[2:]),
        "definition": ("mean gate inside the lesion box / mean outside it, on the crop's middle slice "
                       "(where the box was annotated), finest pyramid level, each map cell over the "
                       "voxels it covers; 1 = no preference for the lesion. "
                       "inside_outside_ratio_of_the_mean_map: the same with every patient's map replaced "
                       "by the mean map over patients: equal values mean the preference is only "
                       "positional (the lesion is always near the crop centre), not patient-specific. "
                       "mean_pairwise_correlation: "
                       "Pearson correlation of the maps between patients, averaged over pairs"),
    }


def pick_both_classes(labels: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` indices taking the classes in turn (so that every class present is shown)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    picks: list[int] = []
    while len(picks) < k and any(queues):
        for q in queues:
            if q and len(picks) < k:
                picks.append(q.pop(0))
    return picks


def plot_attention(volumes: torch.Tensor, gates: torch.Tensor, ids: Sequence[str], labels: Sequence[int],
                   probs: np.ndarray, boxes: Sequence, classes: Sequence[str], out: Path) -> list[Path]:
    """One PNG per patient: CT slices with the finest spatial-attention gate drawn over them.

    The gate is drawn at its own (coarse) resolution, one block per map cell, never
    interpolated; each figure names the true class, the predicted probability, the
    map's grid, and draws the lesion box and a colour bar for the gate.

    Args:
        volumes: ``[N, C, D, H, W]`` evaluation crops.
        gates: ``[N, 1, d, h, w]`` from :func:`attention_gates`.
        ids: patient IDs (file names).
        labels: true class indices ``[N]``.
        probs: predicted probabilities ``[N, n_classes]``.
        boxes: lesion boxes ``(y0, x0, y1, x1)`` in crop pixels, or ``None``.
        classes: class letters.
        out: folder for ``attention_<ID>.png``.

    Returns:
        The written paths.

    Raises:
        RunError: a write failed.
    """
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    paths = []
    n_slices, height, width = volumes.shape[2:]
    d, h, w = gates.shape[2:]
    mid = n_slices // 2
    picks = sorted({int(k) for k in np.clip(mid + np.arange(-2, 2), 0, n_slices - 1)})
    for n, pid in enumerate(ids):
        fig, axes = plt.subplots(1, len(picks), figsize=(2.5 * len(picks) + 0.8, 3.3), squeeze=False)
        image = None
        for ax, k in zip(axes[0], picks, strict=True):
            gz = min(k * d // n_slices, d - 1)
            ax.imshow(volumes[n, 0, k].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            image = ax.imshow(gates[n, 0, gz].numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1,
                              interpolation="nearest", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
            if boxes[n] is not None:
                y0, x0, y1, x1 = boxes[n]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                       ec="white", lw=1.2, ls="-" if k == mid else "--"))
            ax.set_title(f"slice {k} (map slice {gz}){' *' if k == mid else ''}", fontsize=7)
            ax.axis("off")
        fig.colorbar(image, ax=list(axes[0]), fraction=0.02, pad=0.01, label="attention gate")
        true = classes[int(labels[n])]
        if len(classes) == 2:
            said = f"P({classes[1]}) = {probs[n, 1]:.2f}"
        else:
            said = f"predicted {classes[int(np.argmax(probs[n]))]} (p = {probs[n].max():.2f})"
        if boxes[n] is None:
            box = "no lesion box (centre crop)"
        elif boxes[n][0] < 0 and boxes[n][1] < 0 and boxes[n][2] > height - 1 and boxes[n][3] > width - 1:
            box = "the lesion box is larger than the whole crop"
        else:
            box = "white box: lesion box, annotated on slice * (dashed on the others)"
        fig.suptitle(f"{pid}: true {class_label(true)}; {said}\nfinest spatial-attention gate, native "
                     f"{d}x{h}x{w} grid drawn as blocks over the {n_slices}x{height}x{width} crop "
                     f"(not interpolated); {box}", fontsize=7)
        paths.append(save_figure(fig, out / f"attention_{pid}.png", dpi=100))
        plt.close(fig)
    return paths

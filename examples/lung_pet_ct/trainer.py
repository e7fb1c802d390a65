"""Training, evaluation and reporting for the Lung-PET-CT-Dx example (reusable logic).

``train.py``, ``evaluate.py`` and ``predict.py`` are thin command lines over this
module. It runs on one process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU),
writes an atomic checkpoint every epoch and resumes bit-exactly from it: the sampler
order and the crop augmentation are pure functions of ``(seed, epoch)``, and the
global RNG states (dropout, stochastic depth) travel in the checkpoint as tensors and
lists so that ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmscale.data import (
    PAPER_FEATURES,
    CropConfig,
    LesionDataset,
    PreparedData,
    TableSchema,
    atomic_write_bytes,
    cache_key,
    make_phantom,
    prepare,
)
from mmscale.models import MMCAFNet

TASKS = {"ag": ("A", "G"), "4class": ("A", "B", "E", "G")}
MODALITIES = ("image", "table", "both")
METRIC_KEYS = ("auroc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv")
PHANTOM_VERSION = 4
# The phantom's slices are 128 px with lesions of 3-10 px radius: a small window around
# the lesion carries all the evidence and keeps the CPU demo fast.
PHANTOM_CROP = {"depth": 8, "resize": 128, "crop": 24, "margin": 4}
REAL_CROP = {"depth": 12, "resize": 208, "crop": 192, "margin": None}


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in every checkpoint).

    Attributes:
        data_dir, clinical, annotations: the real collection; ``data_dir=None`` builds
            (once) and uses the phantom.
        phantom_patients, phantom_seed, phantom_dir: the phantom (default folder under
            ``cache_root``).
        cache_root: where phantoms and prepared caches live (``$MMSCALE_CACHE`` or
            ``~/.cache/mmscale``); ``cache_dir`` overrides the prepared cache folder.
        task: ``"ag"`` (A vs G, the paper's) or ``"4class"``.
        modality: ``"image"``, ``"table"`` or ``"both"``.
        out: output folder.
        folds: 1 = one stratified train/val/test split; K >= 2 = K-fold (test = fold k).
        fold: run only this fold (``None`` = all).
        test_fraction, val_fraction: split shares (test only when ``folds == 1``).
        preset, model_overrides: ``MMCAFNet.from_preset(preset, **model_overrides)``.
        depth, resize, crop, margin, pet: crop geometry (``None`` = phantom or paper default).
        epochs, batch_size, lr, weight_decay, warmup_epochs, min_lr_ratio, accum_steps:
            optimisation (AdamW, linear warmup then cosine, per optimizer step).
        amp: ``"auto"`` (CUDA only), ``"on"`` or ``"off"``.
        patience: early stopping on validation AUROC (epochs without improvement).
        freeze_epochs: epochs with the image encoder frozen (staged training).
        modality_dropout: with ``modality="both"``, share of training samples that see
            only one modality (see :func:`modality_dropout`).
        class_weights: weight the loss by inverse class frequency.
        seed: all randomness (split, init, sampler, augmentation, dropout).
        num_workers: DataLoader workers.
        stop_after: stop (as if killed) after this many epochs in this invocation.
        resume: continue from ``out/fold*/checkpoint.pt``.
        attention_patients: how many validation patients get an attention PNG.
        progress: tqdm bars.
    """

    data_dir: str | None = None
    clinical: str | None = None
    annotations: str | None = None
    phantom_patients: int = 320
    phantom_seed: int = 0
    phantom_dir: str | None = None
    cache_root: str | None = None
    cache_dir: str | None = None
    task: str = "ag"
    modality: str = "both"
    out: str = "runs/lung_pet_ct"
    folds: int = 1
    fold: int | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    depth: int | None = None
    resize: int | None = None
    crop: int | None = None
    margin: int | None = None
    pet: bool = False
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.02
    accum_steps: int = 1
    amp: str = "auto"
    patience: int = 10
    freeze_epochs: int = 0
    modality_dropout: float = 0.4
    class_weights: bool = True
    seed: int = 0
    num_workers: int = 0
    stop_after: int | None = None
    resume: bool = False
    attention_patients: int = 4
    progress: bool = True

    def validate(self) -> None:
        """Check value ranges.

        Raises:
            ValueError: naming the first bad field.
        """
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {sorted(TASKS)}, got {self.task!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {MODALITIES}, got {self.modality!r}")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp: expected 'auto', 'on' or 'off', got {self.amp!r}")
        for name in ("folds", "epochs", "batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold: must be in [0, {self.folds}), got {self.fold}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout: must be in [0, 1), got {self.modality_dropout}")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in (0, 1), got {getattr(self, name)}")
        if self.data_dir is None and (self.clinical or self.annotations):
            raise ValueError("data_dir: --clinical/--annotations need --data-dir (the DICOM tree)")

    @property
    def classes(self) -> tuple[str, ...]:
        """Class letters of the task, in label order."""
        return TASKS[self.task]

    def crop_config(self) -> CropConfig:
        """The crop geometry: explicit values, else the phantom's or the paper's."""
        base = PHANTOM_CROP if self.data_dir is None else REAL_CROP
        vals = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in base.items()}
        return CropConfig(**vals, pet=self.pet)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from :func:`dataclasses.asdict` output (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    """Process placement: rank, world size, device, autocast settings."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Read torchrun's environment, start the process group, pick device and AMP dtype."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda and world > 1:
        # Share the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    use_amp = cfg.amp == "on" or (cfg.amp == "auto" and cuda)
    amp_dtype = (torch.float16 if cuda else torch.bfloat16) if use_amp else None
    return Runtime(rank, world, local_rank, device, amp_dtype)


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def log(rt: Runtime, msg: str) -> None:
    """Print on rank 0 only (through tqdm so bars are not broken)."""
    if rt.main:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stdout)


# --------------------------------------------------------------------------- data
def cache_root(cfg: TrainConfig) -> Path:
    """Root folder for phantoms and prepared caches."""
    return Path(cfg.cache_root or os.environ.get("MMSCALE_CACHE") or "~/.cache/mmscale").expanduser()


def ensure_phantom(cfg: TrainConfig, rt: Runtime) -> tuple[str, str, str]:
    """Build the default phantom once (atomically: a temp folder renamed at the end)."""
    root = Path(cfg.phantom_dir).expanduser() if cfg.phantom_dir else (
        cache_root(cfg) / "phantom" / f"v{PHANTOM_VERSION}-n{cfg.phantom_patients}-s{cfg.phantom_seed}")
    done = root / ".complete"
    if rt.main and not done.is_file():
        log(rt, f"building the phantom ({cfg.phantom_patients} patients) in {root} ...")
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        t0 = time.time()
        make_phantom(tmp, n_patients=cfg.phantom_patients, seed=cfg.phantom_seed)
        (tmp / ".complete").write_text("ok\n")
        if root.exists():  # a stale incomplete folder from a killed run
            import shutil

            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
        log(rt, f"phantom ready in {time.time() - t0:.0f} s")
    _barrier(rt)
    from mmscale.data.phantom import ANNOTATION_ARCHIVE, CLINICAL_NAME

    return str(root), str(root / ANNOTATION_ARCHIVE), str(root / CLINICAL_NAME)


def load_data(cfg: TrainConfig, rt: Runtime) -> PreparedData:
    """Phantom (if needed) and the prepared cache; rank 0 prepares, the others wait."""
    if cfg.data_dir is None:
        data_dir, annotations, clinical = ensure_phantom(cfg, rt)
    else:
        data_dir, annotations, clinical = cfg.data_dir, cfg.annotations, cfg.clinical
    crop = cfg.crop_config()
    if cfg.cache_dir:
        cache = Path(cfg.cache_dir).expanduser()
    else:
        stamp = [str(Path(p).expanduser().resolve()) if p else None
                 for p in (data_dir, annotations, clinical)]
        mtime = os.path.getmtime(clinical) if clinical and os.path.exists(clinical) else None
        cache = cache_root(cfg) / "prepared" / cache_key(stamp, mtime, crop.to_dict())
    if rt.main:
        data = prepare(data_dir, cache, annotations=annotations, clinical=clinical, crop=crop,
                       progress=cfg.progress)
        log(rt, f"prepared cache {cache}:\n{data.report}")
    _barrier(rt)
    return data if rt.main else PreparedData.load(cache)


@dataclass
class Split:
    """Patient IDs of one fold's train / val / test sets."""

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        """Plain form for checkpoints."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def task_patients(data: PreparedData, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """Patients of the task's classes and their label indices."""
    ids, ys = [], []
    for pid, letter in zip(data.patient_ids, data.labels, strict=True):
        if letter in classes:
            ids.append(pid)
            ys.append(classes.index(letter))
    return ids, ys


def make_splits(ids: Sequence[str], labels: Sequence[int], cfg: TrainConfig) -> list[Split]:
    """Patient-level stratified splits: one per fold (test = the fold; val from the rest).

    Raises:
        ValueError: a class has too few patients to be stratified.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    ids, labels = np.asarray(ids), np.asarray(labels)
    counts = np.bincount(labels, minlength=len(cfg.classes))
    need = max(cfg.folds, 3)
    if counts.min() < need:
        raise ValueError(f"task: class counts {dict(zip(cfg.classes, counts.tolist(), strict=True))} are too "
                         f"small to stratify train/val/test into {cfg.folds} fold(s) (need >= {need})")
    if cfg.folds == 1:
        rest, test = train_test_split(np.arange(len(ids)), test_size=cfg.test_fraction,
                                      stratify=labels, random_state=cfg.seed)
        outer = [(rest, test)]
    else:
        skf = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
        outer = list(skf.split(ids, labels))
    splits = []
    for rest, test in outer:
        train, val = train_test_split(rest, test_size=cfg.val_fraction, stratify=labels[rest],
                                      random_state=cfg.seed)
        splits.append(Split(sorted(ids[train].tolist()), sorted(ids[val].tolist()),
                            sorted(ids[test].tolist())))
    return splits


def table_rows(data: PreparedData, ids: Sequence[str]) -> list[dict]:
    """The paper's feature values of ``ids``; a patient without a clinical row (reported
    by ``prepare``) gets all values missing."""
    pos = {p: i for i, p in enumerate(data.patient_ids)}
    return [{name: (data.rows[pos[p]] or {}).get(name) for name, _ in PAPER_FEATURES} for p in ids]


class Encoded:
    """Volumes, encoded table and labels of one patient subset."""

    def __init__(self, data: PreparedData, ids: Sequence[str], schema: TableSchema,
                 classes: Sequence[str]):
        pos = {p: i for i, p in enumerate(data.patient_ids)}
        idx = [pos[p] for p in ids]
        self.ids = list(ids)
        self.volumes = data.volumes[idx]
        self.numerical, self.categorical = schema.encode(table_rows(data, ids))
        self.labels = np.array([classes.index(data.labels[i]) for i in idx], dtype=np.int64)

    def dataset(self, crop: int, train: bool, seed: int) -> LesionDataset:
        """Wrap as a :class:`LesionDataset`."""
        return LesionDataset(self.volumes, self.numerical, self.categorical, self.labels,
                             crop=crop, train=train, seed=seed)


# --------------------------------------------------------------------------- model io
def forward(model: torch.nn.Module, batch: dict, modality: str, device: torch.device) -> torch.Tensor:
    """Logits for a batch, feeding only the modalities the run uses."""
    vol = batch["volume"].to(device, non_blocking=True) if modality != "table" else None
    num = batch["numerical"].to(device) if modality != "image" else None
    cat = batch["categorical"].to(device) if modality != "image" else None
    present = batch.get("volume_present")
    present = present.to(device) if present is not None and vol is not None else None
    return model(vol, num, cat, present)


def modality_dropout(batch: dict, p: float) -> dict:
    """Hide one modality of some training samples (each with probability ``p / 2``).

    The table is the easier cue: without this the fusion leans on it before the image
    encoder has learnt anything. Hidden tables become all-missing (NaN / -1), hidden
    volumes ``volume_present=False``. Draws from the global torch RNG (checkpointed).
    """
    if p <= 0:
        return batch
    r = torch.rand(len(batch["label"]))
    no_table, no_image = r < p / 2, (r >= p / 2) & (r < p)
    out = dict(batch)
    out["numerical"] = batch["numerical"].masked_fill(no_table[:, None], float("nan"))
    out["categorical"] = batch["categorical"].masked_fill(no_table[:, None], -1)
    out["volume_present"] = ~no_image
    return out


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain lists (``weights_only``-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through a temp file + ``os.replace`` (never a half-written file)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio`` (per optimizer step)."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return fn


def build_model(cfg: TrainConfig, schema: TableSchema, in_channels: int) -> MMCAFNet:
    """The preset with the table dimensions of ``schema`` and the task's class count."""
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("in_channels", in_channels)
    overrides.setdefault("num_classes", len(cfg.classes))
    overrides.setdefault("num_numerical", len(schema.numerical))
    overrides.setdefault("categorical_cardinalities", tuple(max(1, c) for c in schema.cardinalities))
    return MMCAFNet.from_preset(cfg.preset, **overrides)


# --------------------------------------------------------------------------- metrics
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


def plot_roc_confusion(y_true, probs, classes, out: Path, title: str) -> None:
    """``roc.png`` and ``confusion.png`` in ``out`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve

    out.mkdir(parents=True, exist_ok=True)
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
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y_true, probs.argmax(1), labels=list(range(len(classes))),
                                            display_labels=list(classes), ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)


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
    out.mkdir(parents=True, exist_ok=True)
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
        path = out / f"attention_{pid}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- loops
@torch.no_grad()
def predict_probs(model, dataset: LesionDataset, cfg: TrainConfig, rt: Runtime) -> np.ndarray:
    """Class probabilities ``[N, C]`` over a dataset (eval mode, centre crops)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(cfg.batch_size, 32), shuffle=False)
    outs = []
    for batch in loader:
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32,
                            enabled=rt.amp_dtype is not None):
            logits = forward(model, batch, cfg.modality, rt.device)
        outs.append(logits.float().softmax(-1).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(cfg.classes)), np.float32)


def _score(metrics: dict) -> float:
    return metrics["auroc"] if np.isfinite(metrics["auroc"]) else -1.0


def train_fold(cfg: TrainConfig, rt: Runtime, data: PreparedData, split: Split, fold: int) -> dict:
    """Train one fold to the end (or to ``stop_after``); returns its test metrics and preds.

    Writes ``out/fold<k>/checkpoint.pt`` every epoch, ``best.pt`` on each validation
    AUROC improvement, and on completion ``metrics.json``, ``predictions.csv``, ROC and
    confusion PNGs and attention PNGs.
    """
    from tqdm.auto import tqdm

    fold_dir = Path(cfg.out) / f"fold{fold}"
    ckpt_path, best_path = fold_dir / "checkpoint.pt", fold_dir / "best.pt"
    crop = data.crop
    schema = TableSchema(PAPER_FEATURES).fit(table_rows(data, split.train))
    train_set = Encoded(data, split.train, schema, cfg.classes)
    val_set = Encoded(data, split.val, schema, cfg.classes)
    test_set = Encoded(data, split.test, schema, cfg.classes)

    torch.manual_seed(cfg.seed + 1000 * fold)
    model = build_model(cfg, schema, crop.channels).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ds_train = train_set.dataset(crop.crop, train=True, seed=cfg.seed + 1000 * fold)
    per_rank = math.ceil(len(ds_train) / rt.world)
    steps_per_epoch = math.ceil(math.ceil(per_rank / cfg.batch_size) / cfg.accum_steps)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    counts = np.bincount(train_set.labels, minlength=len(cfg.classes)).astype(np.float64)
    weight = (counts.sum() / (len(counts) * np.maximum(counts, 1))) if cfg.class_weights else None
    criterion = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weight, dtype=torch.float32, device=rt.device) if weight is not None else None)

    start, best, bad, history, finished = 0, -math.inf, 0, [], False
    if cfg.resume and rt.main:
        # a run killed while writing a checkpoint leaves its temp file (never a half
        # checkpoint.pt, which is replaced atomically): clear such leftovers
        for stale in fold_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
    if cfg.resume and ckpt_path.is_file():
        # On the CPU: RNG states must stay CPU tensors; the loaders move the rest.
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["split"] != split.to_dict():
            raise ValueError(f"resume: {ckpt_path} was trained on another split (seed/folds changed?)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best, bad = state["epoch"], state["best"], state["bad_epochs"]
        history, finished = list(state["history"]), bool(state["finished"])
        log(rt, f"fold {fold}: resumed from {ckpt_path} at epoch {start}")

    sampler = (torch.utils.data.DistributedSampler(ds_train, num_replicas=rt.world, rank=rt.rank,
                                                   shuffle=True, seed=cfg.seed + fold)
               if rt.distributed else None)
    ran = 0
    epoch_bar = tqdm(range(start, cfg.epochs), desc=f"fold {fold}", unit="epoch",
                     initial=start, total=cfg.epochs, disable=not (cfg.progress and rt.main))
    for epoch in epoch_bar:
        if finished:
            break
        if cfg.stop_after is not None and ran >= cfg.stop_after:
            log(rt, f"fold {fold}: stopping after {ran} epoch(s) as asked (--stop-after)")
            return {"interrupted": True}
        frozen = epoch < cfg.freeze_epochs
        model.set_image_encoder_trainable(not frozen)
        net = model
        if rt.distributed:
            # Rebuilt per epoch so that DDP tracks exactly the parameters trainable now.
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=True)
            sampler.set_epoch(epoch)
        ds_train.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + fold * 1009 + epoch)
        loader = torch.utils.data.DataLoader(
            ds_train, batch_size=cfg.batch_size, sampler=sampler, shuffle=sampler is None,
            generator=None if sampler is not None else gen, num_workers=cfg.num_workers,
            # BatchNorm cannot train on a batch of one sample: drop such a last batch.
            drop_last=per_rank % cfg.batch_size == 1)
        net.train()
        total_loss, seen = 0.0, 0
        n_batches = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                   disable=not (cfg.progress and rt.main))
        opt.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            last = (step + 1) % cfg.accum_steps == 0 or step + 1 == n_batches
            sync = net.no_sync() if (rt.distributed and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32,
                                    enabled=rt.amp_dtype is not None):
                    if cfg.modality == "both":
                        batch = modality_dropout(batch, cfg.modality_dropout)
                    logits = forward(net, batch, cfg.modality, rt.device)
                    loss = criterion(logits.float(), batch["label"].to(rt.device))
                scaler.scale(loss / cfg.accum_steps).backward()
            if last:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            total_loss += float(loss.detach()) * len(batch["label"])
            seen += len(batch["label"])
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        ran += 1

        stop = torch.zeros(1, device=rt.device)  # nccl broadcasts CUDA tensors only
        if rt.main:
            probs = predict_probs(model, val_set.dataset(crop.crop, False, 0), cfg, rt)
            val = compute_metrics(val_set.labels, probs, cfg.classes)
            improved = _score(val) > best + 1e-6
            if improved:
                best, bad = _score(val), 0
                save_checkpoint(best_path, {**model.checkpoint_state(schema.to_dict()),
                                            "train_config": asdict(cfg), "split": split.to_dict(),
                                            "epoch": epoch + 1, "classes": list(cfg.classes)})
            else:
                bad += 1
            history.append({"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
                            "val_auroc": val["auroc"], "val_acc": val["acc"],
                            "lr": float(sched.get_last_lr()[0]), "frozen_encoder": frozen})
            finished = bad >= cfg.patience or epoch + 1 == cfg.epochs
            epoch_bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}",
                                  val_auroc=f"{val['auroc']:.3f}", best=f"{best:.3f}")
            log(rt, f"fold {fold} epoch {epoch + 1}/{cfg.epochs}: train loss "
                    f"{total_loss / max(seen, 1):.4f}  val AUROC {val['auroc']:.3f}  ACC "
                    f"{val['acc']:.3f}{'  *' if improved else ''}")
            if bad >= cfg.patience:
                log(rt, f"fold {fold}: early stop, no val AUROC gain for {cfg.patience} epochs")
            stop[0] = float(finished)
        if rt.distributed:
            dist.broadcast(stop, src=0)
        finished = bool(stop[0])
        if rt.main:
            save_checkpoint(ckpt_path, {
                **model.checkpoint_state(schema.to_dict()),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                "best": best, "bad_epochs": bad, "history": history, "finished": finished,
                "train_config": asdict(cfg), "split": split.to_dict(), "classes": list(cfg.classes),
            })
        _barrier(rt)
    if not rt.main:
        return {}

    best_model = MMCAFNet.from_checkpoint(best_path, map_location=rt.device) if best_path.is_file() else model
    probs = predict_probs(best_model, test_set.dataset(crop.crop, False, 0), cfg, rt)
    metrics = compute_metrics(test_set.labels, probs, cfg.classes)
    metrics["history"] = history
    write_report(fold_dir, test_set.labels, probs, test_set.ids, cfg.classes, metrics,
                 f"fold {fold} test")
    if cfg.modality != "table" and cfg.attention_patients > 0:
        k = min(cfg.attention_patients, len(val_set.ids))
        ds_val = val_set.dataset(crop.crop, False, 0)
        vols = torch.stack([ds_val[i]["volume"] for i in range(k)]).to(rt.device)
        plot_attention(best_model, vols, val_set.ids[:k], fold_dir / "attention")
    return {"metrics": metrics, "probs": probs, "labels": test_set.labels, "ids": test_set.ids}


def write_report(folder: Path, labels, probs, ids, classes, metrics: dict, title: str) -> None:
    """``metrics.json``, ``predictions.csv``, ``roc.png`` and ``confusion.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "metrics.json", json.dumps(_jsonable(metrics), indent=2).encode())
    lines = ["patient_id,label," + ",".join(f"p_{c}" for c in classes)]
    for pid, y, p in zip(ids, labels, probs, strict=True):
        lines.append(f"{pid},{classes[int(y)]}," + ",".join(f"{v:.6f}" for v in p))
    atomic_write_bytes(folder / "predictions.csv", ("\n".join(lines) + "\n").encode())
    plot_roc_confusion(np.asarray(labels), np.asarray(probs), classes, folder, title)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def run(cfg: TrainConfig) -> dict | None:
    """Prepare data, train every fold, print and write the pooled test metrics.

    Returns:
        The metrics dict on rank 0 (``None`` on other ranks or when stopped early by
        ``stop_after``).

    Raises:
        ValueError: a bad config or unusable data.
    """
    cfg.validate()
    rt = setup_runtime(cfg)
    try:
        t0 = time.time()
        data = load_data(cfg, rt)
        ids, labels = task_patients(data, cfg.classes)
        splits = make_splits(ids, labels, cfg)
        log(rt, f"task {cfg.task} ({'/'.join(cfg.classes)}): {len(ids)} patients, "
                f"{len(splits)} fold(s), modality {cfg.modality}, world size {rt.world}, "
                f"device {rt.device}")
        folds = list(range(len(splits))) if cfg.fold is None else [cfg.fold]
        results = []
        for k in folds:
            split = splits[k]
            log(rt, f"fold {k}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} patients")
            res = train_fold(cfg, rt, data, split, k)
            if res.get("interrupted"):
                return None
            results.append(res)
        if not rt.main:
            return None
        probs = np.concatenate([r["probs"] for r in results])
        y = np.concatenate([r["labels"] for r in results])
        pids = [p for r in results for p in r["ids"]]
        metrics = compute_metrics(y, probs, cfg.classes)
        if len(results) > 1:
            for key in METRIC_KEYS:
                vals = [r["metrics"][key] for r in results]
                metrics[f"{key}_mean"] = float(np.nanmean(vals))
                metrics[f"{key}_std"] = float(np.nanstd(vals))
        metrics["per_fold"] = [{k: r["metrics"][k] for k in METRIC_KEYS} for r in results]
        metrics["task"], metrics["modality"] = cfg.task, cfg.modality
        metrics["wall_time_s"] = round(time.time() - t0, 1)
        write_report(Path(cfg.out), y, probs, pids, cfg.classes, metrics,
                     f"{cfg.task} / {cfg.modality} (held-out test)")
        # The first fold's attention PNGs next to the pooled report.
        att = Path(cfg.out) / "attention"
        att.mkdir(parents=True, exist_ok=True)
        for png in (Path(cfg.out) / f"fold{folds[0]}" / "attention").glob("*.png"):
            (att / png.name).write_bytes(png.read_bytes())
        log(rt, "\n" + format_metrics(metrics, f"held-out test metrics ({len(y)} patients, "
                                              f"{len(results)} fold(s)):"))
        log(rt, f"wrote {Path(cfg.out) / 'metrics.json'} (wall time {metrics['wall_time_s']} s)")
        return metrics
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- evaluate / predict
def _load_state(path: str | os.PathLike) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint: {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "train_config" not in state or "split" not in state:
        raise ValueError(f"checkpoint: {str(path)!r} was not written by this trainer")
    return state


def evaluate_checkpoint(path: str | os.PathLike, split: str = "test", out: str | None = None,
                        overrides: dict | None = None) -> dict:
    """Metrics of a trained checkpoint on one of its run's splits.

    Args:
        path: ``best.pt`` or ``checkpoint.pt`` of a run.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the three together).
        out: folder for ``metrics.json``, ``predictions.csv`` and the PNGs (default:
            ``<checkpoint folder>/eval_<split>``).
        overrides: :class:`TrainConfig` fields to change (e.g. a moved ``data_dir``).

    Returns:
        The metrics dict.

    Raises:
        ValueError: an unknown split, a missing or foreign checkpoint.
    """
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split: expected train, val, test or all, got {split!r}")
    state = _load_state(path)
    cfg = TrainConfig.from_dict({**state["train_config"], **(overrides or {}), "resume": False})
    rt = setup_runtime(cfg)
    data = load_data(cfg, rt)
    ids = (state["split"]["train"] + state["split"]["val"] + state["split"]["test"]
           if split == "all" else state["split"][split])
    schema = TableSchema.from_dict(state["table_schema"])
    model = MMCAFNet.from_state(state).to(rt.device)
    enc = Encoded(data, ids, schema, cfg.classes)
    probs = predict_probs(model, enc.dataset(data.crop.crop, False, 0), cfg, rt)
    metrics = compute_metrics(enc.labels, probs, cfg.classes)
    folder = Path(out) if out else Path(path).expanduser().parent / f"eval_{split}"
    write_report(folder, enc.labels, probs, enc.ids, cfg.classes, metrics, f"{cfg.task} {split}")
    log(rt, "\n" + format_metrics(metrics, f"{split} metrics ({len(ids)} patients) of {path}:"))
    log(rt, f"wrote {folder / 'metrics.json'}")
    return metrics


def predict_patient(path: str | os.PathLike, patient_dir: str | os.PathLike,
                    annotations: str | os.PathLike | None = None,
                    row: dict | None = None,
                    clinical: str | os.PathLike | None = None) -> dict[str, Any]:
    """Class probabilities for one patient folder and clinical row.

    Args:
        path: a checkpoint of this trainer.
        patient_dir: one patient's DICOM folder (``Lung_Dx-A0001``) or any folder
            holding exactly one patient's series.
        annotations: that patient's annotation folder or the whole archive; without it
            the crop is the volume's centre.
        row: clinical values by column name (``{"Sex": "M", "Age": 61, ...}``); missing
            keys are missing values. ``None``: no clinical data.
        clinical: a clinical sheet to take the patient's row from (instead of ``row``);
            a patient without a row gets all values missing, with a warning.

    Returns:
        ``{"patient_id", "probabilities": {class: p}, "predicted", "lesion_centred",
        "clinical_row"}``.

    Raises:
        ValueError: the folder holds no or several patients, or a bad checkpoint.
    """
    from mmscale.data import (
        center_crop,
        crop_volume,
        lesion_center,
        load_ct_series,
        load_pet_series,
        resample_pet_to_ct,
        scan_tcia,
    )

    state = _load_state(path)
    cfg = TrainConfig.from_dict(state["train_config"])
    crop = cfg.crop_config()
    patients, _ = scan_tcia(patient_dir, annotations)
    if len(patients) != 1:
        raise ValueError(f"patient_dir: expected one patient, found {sorted(patients)}")
    rec = next(iter(patients.values()))
    if clinical is not None:
        from mmscale.data import read_clinical

        row = read_clinical(clinical).row(rec.patient_id)
        if row is None:
            warnings.warn(f"{rec.patient_id} has no row in {clinical}; clinical values missing",
                          stacklevel=2)
    ct = load_ct_series(rec.ct_files)
    center = lesion_center(ct, rec.boxes)
    pet = resample_pet_to_ct(load_pet_series(rec.pet_files), ct) if crop.pet and rec.pet_files else None
    vol = center_crop(crop_volume(ct, center, crop, pet), crop.crop)
    schema = TableSchema.from_dict(state["table_schema"])
    num, cat = schema.encode([{c.name: (row or {}).get(c.name) for c in schema.columns}])
    model = MMCAFNet.from_state(state).eval()
    batch = {"volume": torch.from_numpy(np.ascontiguousarray(vol))[None],
             "numerical": torch.from_numpy(num), "categorical": torch.from_numpy(cat)}
    with torch.no_grad():
        probs = forward(model, batch, cfg.modality, torch.device("cpu")).softmax(-1)[0].tolist()
    classes = state.get("classes") or list(cfg.classes)
    return {"patient_id": rec.patient_id,
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
            "predicted": classes[int(np.argmax(probs))], "lesion_centred": center is not None,
            "clinical_row": row is not None}

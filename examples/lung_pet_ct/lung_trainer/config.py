"""The run configuration of the Lung-PET-CT-Dx example: one dataclass, stored in every checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from mmscale.data import CropConfig

__all__ = ["LOSSES", "MODALITIES", "NONFINITE_POLICIES", "PHANTOM_CROP", "PHANTOM_VERSION", "REAL_CROP",
           "RESUME_FREE", "RESUME_LOGGED", "TASKS", "TrainConfig", "resume_changes"]

# Class letters of each task, in label order.
TASKS = {"ag": ("A", "G"), "4class": ("A", "B", "E", "G")}
# Which inputs the model gets.
MODALITIES = ("image", "table", "both")
# Training losses: 2-logit cross-entropy, or the published one-logit binary focal loss.
LOSSES = ("ce", "focal")
# What the trainer does with a batch whose input or loss is not finite.
NONFINITE_POLICIES = ("stop", "skip")
# Bumped whenever the phantom generator's output changes (a new cache folder).
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
        class_weights: weight the cross-entropy by inverse class frequency (with the
            focal loss its ``alpha`` plays that part).
        loss: ``"ce"`` (cross-entropy on one logit per class) or ``"focal"`` (the
            published head: one logit, ``mmscale.models.BinaryFocalLoss`` with alpha
            0.25 and gamma 2; binary tasks only).
        seed: all randomness (split, init, sampler, augmentation, dropout).
        num_workers: DataLoader workers.
        stop_after: stop (as if killed) after this many epochs in this invocation.
        resume: continue from ``out/fold*/checkpoint.pt``.
        overwrite: replace the run already in ``out`` (its files are removed first).
        on_nonfinite: a training batch with a non-finite input or loss: ``"stop"`` the
            run, or ``"skip"`` it (counted in the log and the history); either way it
            never reaches the weights or the BatchNorm running statistics.
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
    loss: str = "ce"
    seed: int = 0
    num_workers: int = 0
    stop_after: int | None = None
    resume: bool = False
    overwrite: bool = False
    on_nonfinite: str = "stop"
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
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {self.loss!r}")
        if self.loss == "focal" and len(self.classes) != 2:
            raise ValueError(f"loss: 'focal' is the binary one-logit loss; task {self.task!r} has "
                             f"{len(self.classes)} classes (use --loss ce)")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite: expected one of {NONFINITE_POLICIES}, got {self.on_nonfinite!r}")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides: expected a JSON object (a dict), got "
                             f"{type(self.model_overrides).__name__}")
        if self.resume and self.overwrite:
            raise ValueError("overwrite: --overwrite and --resume contradict each other (replace "
                             "the run, or continue it)")
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


# Fields a resumed run may change freely: how this invocation runs, not what it computes.
RESUME_FREE = frozenset({"resume", "overwrite", "stop_after", "progress", "num_workers",
                         "attention_patients", "fold", "out", "on_nonfinite"})
# Fields a resumed run may change, with a line in the log: where the data is now (a moved
# download; the patient split is checked separately), and how long training goes on.
RESUME_LOGGED = frozenset({"data_dir", "clinical", "annotations", "phantom_dir", "cache_root",
                           "cache_dir", "epochs", "patience"})


def resume_changes(saved: dict, cfg: TrainConfig, source: str) -> list[str]:
    """Compare a checkpoint's saved config with the one given to a resumed run.

    Every field outside :data:`RESUME_FREE` and :data:`RESUME_LOGGED` (learning rate,
    modality, model, crop geometry, seed, ...) must be unchanged: a resumed run
    computes exactly what the interrupted one would have.

    Args:
        saved: the checkpoint's ``train_config``.
        cfg: the config of the resuming run.
        source: the checkpoint's path (named in the error).

    Returns:
        One line per changed :data:`RESUME_LOGGED` field (``"epochs: 2 -> 3"``).

    Raises:
        ValueError: fields that cannot change did, all listed with both values.

    Example:
        >>> from dataclasses import asdict
        >>> resume_changes(asdict(TrainConfig(epochs=2)), TrainConfig(epochs=3), "ckpt.pt")
        ['epochs: 2 -> 3']
    """
    defaults = TrainConfig()
    refused, logged = [], []
    for f in fields(TrainConfig):
        if f.name in RESUME_FREE:
            continue
        old = saved.get(f.name, getattr(defaults, f.name))
        new = getattr(cfg, f.name)
        if _normal(old) == _normal(new):
            continue
        line = f"{f.name}: {old!r} -> {new!r}"
        (logged if f.name in RESUME_LOGGED else refused).append(line)
    if refused:
        raise ValueError(f"resume: {source} was trained with other settings; these cannot change "
                         f"on --resume (start a new run with another --out, or --overwrite this "
                         f"one): " + "; ".join(refused))
    return logged


def _normal(value):
    """Values as JSON would hold them (tuples and lists alike)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))

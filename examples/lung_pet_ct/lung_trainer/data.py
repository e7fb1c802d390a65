"""Data for a run: the phantom, the prepared cache, patient splits and encoded subsets."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmscale.data import (
    PAPER_FEATURES,
    LesionDataset,
    PreparedData,
    TableSchema,
    cache_key,
    make_phantom,
    prepare,
)

from .config import PHANTOM_VERSION, TrainConfig
from .runtime import Runtime, barrier, log

__all__ = ["Encoded", "Split", "cache_root", "ensure_phantom", "load_data", "make_splits",
           "annotation_root", "lesion_boxes_in_crop", "phantom_root", "remove_stale_builds", "table_rows",
           "task_patients"]


def cache_root(cfg: TrainConfig) -> Path:
    """Root folder for phantoms and prepared caches."""
    return Path(cfg.cache_root or os.environ.get("MMSCALE_CACHE") or "~/.cache/mmscale").expanduser()


def phantom_root(cfg: TrainConfig) -> Path:
    """The phantom's folder: ``phantom_dir``, else one per version, size and seed under the cache root."""
    return Path(cfg.phantom_dir).expanduser() if cfg.phantom_dir else (
        cache_root(cfg) / "phantom" / f"v{PHANTOM_VERSION}-n{cfg.phantom_patients}-s{cfg.phantom_seed}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_builds(root: Path, rt: Runtime) -> list[Path]:
    """Remove unfinished phantom builds next to ``root`` whose builder process is gone.

    A build writes into ``<root>.tmp<pid>-<random>`` and renames it to ``root`` when
    complete; a build killed (``SIGKILL``, power loss) leaves that folder behind, and
    the next run removes it here. Builds of live processes are left alone.

    Returns:
        The folders removed (each one is also logged).
    """
    removed = []
    for tmp in sorted(root.parent.glob(f"{root.name}.tmp*")):
        pid = tmp.name[len(root.name) + 4:].split("-")[0]
        if not tmp.is_dir() or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        log(rt, f"removed {tmp}: an unfinished phantom build left by a killed run (pid {pid})")
        removed.append(tmp)
    return removed


def ensure_phantom(cfg: TrainConfig, rt: Runtime) -> tuple[str, str, str]:
    """Build the default phantom once (atomically: a temp folder renamed at the end).

    Raises:
        OSError: the build could not be written (its temp folder is removed).
    """
    root = phantom_root(cfg)
    done = root / ".complete"
    if rt.main:
        remove_stale_builds(root, rt)
    if rt.main and not done.is_file():
        log(rt, f"building the phantom ({cfg.phantom_patients} patients) in {root} ...")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp{os.getpid()}-", dir=root.parent))
        t0 = time.time()
        try:
            make_phantom(tmp, n_patients=cfg.phantom_patients, seed=cfg.phantom_seed)
            (tmp / ".complete").write_text("ok\n")
            if done.is_file():  # another run finished the same phantom meanwhile
                shutil.rmtree(tmp)
            else:
                if root.exists():  # an incomplete folder (not written by this trainer)
                    log(rt, f"replacing {root}: it has no .complete marker")
                    shutil.rmtree(root)
                os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(rt, f"phantom ready in {time.time() - t0:.0f} s")
    barrier(rt)
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
    barrier(rt)
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



def annotation_root(cfg: TrainConfig) -> Path | None:
    """The annotation archive of the run (the phantom's own without ``--data-dir``)."""
    if cfg.data_dir is None:
        from mmscale.data.phantom import ANNOTATION_ARCHIVE

        return phantom_root(cfg) / ANNOTATION_ARCHIVE
    return Path(cfg.annotations).expanduser() if cfg.annotations else None


def lesion_boxes_in_crop(cfg: TrainConfig, data: PreparedData,
                         ids: Sequence[str]) -> dict[str, tuple[float, float, float, float] | None]:
    """The lesion box that centred each patient's crop, in the evaluation crop's pixels.

    The cache keeps each crop's lesion centre (the centre of the largest box on the
    median annotated slice); the box itself is found again among the patient's VOC
    files as the box with that centre, and mapped through the crop's resize and
    window. The evaluation (centre) crop puts that box on its middle slice
    (``depth // 2``).

    Returns:
        ``{patient: (y0, x0, y1, x1)}`` in crop pixel coordinates, or ``None`` for a
        patient without a box (a centre-cropped patient, or no annotation found).
    """
    from mmscale.data import read_annotations

    root = annotation_root(cfg)
    crop = data.crop
    info = {p["id"]: p for p in data.info.get("patients", [])}
    out: dict[str, tuple[float, float, float, float] | None] = {}
    for pid in ids:
        meta = info.get(pid) or {}
        center, shape = meta.get("center"), meta.get("shape")
        out[pid] = None
        if not meta.get("has_box") or center is None or shape is None or root is None:
            continue
        folder = root / "Annotation" / pid
        files = sorted(folder.glob("*.xml")) if folder.is_dir() else sorted(root.rglob(f"{pid}/*.xml"))
        _, cy, cx = center
        boxes = []
        for f in files:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # prepare already reported bad boxes
                try:
                    boxes += read_annotations(f)
                except ValueError:
                    continue
        boxes = [b for b in boxes if abs((b.ymin + b.ymax) / 2 - cy) < 1e-6
                 and abs((b.xmin + b.xmax) / 2 - cx) < 1e-6]
        if not boxes:
            continue
        b = max(boxes, key=lambda b: b.area)
        sy, sx = crop.resize / shape[1], crop.resize / shape[2]
        # where the centre lands: the stored window starts at round(c') - stored // 2, the
        # evaluation crop at (stored - crop) // 2 inside it (see mmscale.data.crop_volume)
        ry, rx = (cy + 0.5) * sy - 0.5, (cx + 0.5) * sx - 0.5
        c0 = crop.stored // 2 - (crop.stored - crop.crop) // 2
        y_c, x_c = c0 + ry - round(ry), c0 + rx - round(rx)
        out[pid] = (y_c + (b.ymin - cy) * sy, x_c + (b.xmin - cx) * sx,
                    y_c + (b.ymax - cy) * sy, x_c + (b.xmax - cx) * sx)
    return out

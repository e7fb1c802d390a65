"""Preparing a download once: crops, clinical rows and an index, cached on disk.

Each patient's crop is written to ``crops/<ID>.npy`` through a temporary file and
``os.replace`` (atomic on POSIX), so an interrupted run leaves only whole files and the
next run carries on from where it stopped. ``index.json`` is written last, the same
way; its presence marks a finished cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmscale._io import atomic_write_bytes
from mmscale.data.crops import CropConfig, center_crop, random_crop
from mmscale.data.patient import crop_patient

__all__ = [
    "LesionDataset",
    "PreparedData",
    "atomic_write_bytes",
    "cache_key",
    "prepare",
]

_INDEX = "index.json"
_FORMAT = 2  # 2: sidecars and index list dropped slices and boxes
# Skips that are whole series of other kinds (counted in the scan summary, not listed).
_WHOLE_SERIES = ("Secondary Capture series", "series of SOP class")
_REPORT_ITEMS = 50  # dropped items named in the text report (index.json lists them all)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_or_abort(path: Path, data: bytes, cache_dir: Path) -> None:
    """Write a cache file; an I/O error stops :func:`prepare` with a message naming it."""
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise OSError(
            err.errno,
            f"cache_dir: cannot write {str(path)!r} ({err.strerror or err}); prepare stopped and "
            f"{str(cache_dir)!r} holds no index, so no later run treats it as complete. Free "
            "space or fix permissions and run again (finished crops are kept)",
        ) from err


def _where(path: str | os.PathLike | None) -> str | None:
    """An input path as recorded in the index: absolute, so equal inputs compare equal."""
    return None if path is None else str(Path(path).expanduser().resolve())


def _read_sidecar(path: Path, crop: dict) -> dict | None:
    """The per-patient sidecar of a finished crop, or ``None`` when it must be redone."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, half-written by an older version, or unreadable: cut again
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("crop") != crop:
        return None  # an older version or another crop geometry: cut again
    return meta


def _dropped_lines(entries: list[dict], key: str, what: str) -> list[str]:
    """Report lines naming every dropped item of every patient, with its reason."""
    items = [(e["id"], item, why) for e in entries for item, why in e[key]]
    if not items:
        return []
    lines = [f"{len(items)} {what} (all listed in index.json):"]
    lines += [f"  {pid}: {item}: {why}" for pid, item, why in items[:_REPORT_ITEMS]]
    if len(items) > _REPORT_ITEMS:
        lines.append(f"  ... and {len(items) - _REPORT_ITEMS} more")
    return lines


def cache_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (paths, configs) naming a cache folder.

    Example:
        >>> cache_key("/data", {"crop": 192}) == cache_key("/data", {"crop": 192})
        True
        >>> len(cache_key("/data"))
        16
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PreparedData:
    """A finished cache, loaded.

    Attributes:
        root: the cache folder.
        patient_ids: patients with a crop, sorted.
        labels: class letter per patient (``"A"``, ``"B"``, ``"E"``, ``"G"``).
        volumes: float16 ``[N, C, depth, stored, stored]`` crops (CT in [0, 1]).
        rows: clinical row per patient (dict) or ``None`` when the sheet lacks it.
        has_box: whether the crop is lesion-centred (False: centre crop).
        crop: the :class:`CropConfig` used.
        report: the text report of what was skipped and why.
        info: the raw index (per-patient notes, scan counts).

    Example:
        >>> data = PreparedData.load("~/.cache/mmscale/prepared/0123456789abcdef")  # doctest: +SKIP
        >>> data.volumes.shape, data.labels[:2]  # doctest: +SKIP
        ((320, 1, 8, 32, 32), ['A', 'A'])
    """

    root: Path
    patient_ids: list[str]
    labels: list[str]
    volumes: np.ndarray
    rows: list[dict | None]
    has_box: list[bool]
    crop: CropConfig
    report: str
    info: dict = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, root: str | os.PathLike) -> PreparedData:
        """Load a cache written by :func:`prepare`.

        Raises:
            ValueError: ``root`` holds no finished cache (no ``index.json``), or its
                index or a crop it lists cannot be read (the message names the file).
        """
        root = Path(root)
        index_path = root / _INDEX
        if not index_path.is_file():
            raise ValueError(f"root: {str(root)!r} holds no finished cache ({_INDEX} missing)")
        try:
            info = json.loads(index_path.read_text())
            pats = info["patients"]
            ids = [p["id"] for p in pats]
            crop = CropConfig(**info["crop"])
            fields = dict(labels=[p["label"] for p in pats], rows=[p["clinical"] for p in pats],
                          has_box=[bool(p["has_box"]) for p in pats], report=info["report"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"root: {str(index_path)!r} is not a readable cache index "
                             f"({type(err).__name__}: {err}); delete the folder to prepare again") from err
        vols = []
        for pid in ids:
            path = root / "crops" / f"{pid}.npy"
            try:
                vol = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"root: crop {str(path)!r} listed in the index cannot be read "
                                 f"({type(err).__name__}: {err}); delete the folder to prepare "
                                 "again") from err
            if vols and vol.shape != vols[0].shape:
                raise ValueError(f"root: crop {str(path)!r} has shape {vol.shape}, the others "
                                 f"{vols[0].shape}; delete the folder to prepare again")
            vols.append(vol)
        return cls(root=root, patient_ids=ids,
                   volumes=np.stack(vols) if vols else np.zeros((0,), np.float16),
                   crop=crop, info=info, **fields)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


def prepare(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    annotations: str | os.PathLike | None = None,
    clinical: str | os.PathLike | None = None,
    crop: CropConfig | None = None,
    progress: bool = True,
) -> PreparedData:
    """Scan a download, cut one crop per patient and cache crops, table and index.

    Each patient is cut by :func:`mmscale.data.crop_patient` (a patient without a usable
    lesion box gets a centre crop, reported). Reruns are cheap: a finished cache is
    loaded as is (when prepared from the same inputs and crop), and an interrupted one
    resumes (crops already on disk with the same crop geometry are kept).
    Everything left out is reported in ``report`` and ``index.json``, with a warning:
    patients whose CT cannot be read or parsed (dropped, with the reason), every slice
    file and lesion box left out (by name, with the reason), patients without a clinical
    row (kept, with all clinical values missing), clinical rows without imaging, bad
    clinical values. Only problems of the input drop a patient: an error writing the
    cache (out of space, read-only) stops the run and no ``index.json`` is written.

    Args:
        data_dir: the TCIA download (see :func:`mmscale.data.scan_tcia`).
        cache_dir: where to write ``crops/``, ``index.json`` (created if needed).
        annotations: the annotation archive folder, or ``None`` (centre crops).
        clinical: the clinical xlsx/csv, or ``None`` (image-only).
        crop: the :class:`CropConfig` (default: the paper's 12 x 208 -> 192).
        progress: show tqdm progress bars.

    Returns:
        The loaded :class:`PreparedData`.

    Raises:
        ValueError: ``data_dir`` is not a TCIA tree, ``clinical`` cannot be read, no
            patient could be prepared, or ``cache_dir`` holds a finished cache prepared
            from other inputs or another crop (the message lists the differences).
        OSError: the cache cannot be written (the message names the file); the folder
            is left without ``index.json``.

    Example:
        >>> data = prepare("~/tcia", "~/.cache/mmscale/prep", clinical="clin.xlsx")  # doctest: +SKIP
        >>> data.volumes.shape  # doctest: +SKIP
        (355, 1, 12, 208, 208)
    """
    from tqdm.auto import tqdm

    from mmscale.data.clinical import read_clinical
    from mmscale.data.tcia import scan_tcia

    crop = CropConfig() if crop is None else crop
    cache_dir = Path(cache_dir).expanduser()
    wanted = {
        "data_dir": _where(data_dir),
        "annotations": _where(annotations),
        "clinical": _where(clinical),
        "crop": crop.to_dict(),
    }
    if (cache_dir / _INDEX).is_file():
        data = PreparedData.load(cache_dir)
        differ = [k for k, v in wanted.items() if data.info.get(k) != v]
        if differ:
            raise ValueError(
                f"cache_dir: {str(cache_dir)!r} holds a cache prepared from other inputs ("
                + "; ".join(f"{k}: cached {data.info.get(k)!r}, asked {wanted[k]!r}" for k in differ)
                + "); use another cache_dir or delete this one")
        return data
    patients, summary = scan_tcia(data_dir, annotations, progress=progress)
    table = read_clinical(clinical) if clinical is not None else None
    crops_dir = cache_dir / "crops"
    try:
        crops_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cache_dir: cannot create {str(crops_dir)!r} "
                                 f"({err.strerror or err})") from err
    entries, failed = [], []
    bar = tqdm(patients.values(), desc="prepare crops", unit="patient", disable=not progress)
    for rec in bar:
        path = crops_dir / f"{rec.patient_id}.npy"
        notes = list(rec.notes)
        meta_path = crops_dir / f"{rec.patient_id}.json"
        meta = _read_sidecar(meta_path, crop.to_dict()) if path.is_file() else None
        if meta is None:
            try:
                # center_fallback: a patient without a usable box gets a centre crop, reported.
                pc = crop_patient(rec, crop, center_fallback=True)
            except ValueError as err:  # the input cannot be read or parsed: drop, report
                warnings.warn(f"patient {rec.patient_id}: dropped, CT could not be prepared ({err})",
                              stacklevel=2)
                failed.append({"id": rec.patient_id, "reason": str(err)})
                continue
            meta = {
                "format": _FORMAT,
                "crop": crop.to_dict(),
                "has_box": pc.lesion_centred,
                "center": list(pc.center) if pc.center is not None else None,
                "shape": list(pc.shape),
                "spacing": list(pc.spacing),
                "dropped_slices": [list(d) for d in pc.dropped_slices],
                "dropped_boxes": [list(d) for d in pc.dropped_boxes],
                "notes": pc.notes,
            }
            # Writing errors (out of space, read-only) abort: the cache must not look complete.
            _write_or_abort(path, _npy_bytes(pc.volume), cache_dir)
            # The sidecar is written after the crop: a crop without sidecar is redone.
            _write_or_abort(meta_path, json.dumps(meta).encode(), cache_dir)
        row = table.row(rec.patient_id) if table is not None else None
        if table is not None and row is None:
            notes.append("no clinical row (all clinical values missing)")
        entries.append({
            "id": rec.patient_id,
            "label": rec.label,
            "has_box": meta["has_box"],
            "center": meta["center"],
            "shape": meta["shape"],
            "spacing": meta["spacing"],
            "clinical": {k: _plain(v) for k, v in row.items()} if row is not None else None,
            "notes": notes + meta["notes"],
            "dropped_slices": meta["dropped_slices"],
            "dropped_boxes": meta["dropped_boxes"],
        })
    if not entries:
        raise ValueError(f"data_dir: no patient could be prepared from {str(data_dir)!r}")
    clinical_only = []
    if table is not None:
        clinical_only = sorted(set(table.frame.index) - set(patients))
    lines = [summary.report()]
    if failed:
        lines.append(f"{len(failed)} patient(s) dropped, CT could not be prepared:")
        lines += [f"  {f['id']}: {f['reason']}" for f in failed]
    scan_files = [e for e in summary.skipped if not e[1].startswith(_WHOLE_SERIES)]
    if scan_files:
        lines.append(f"{len(scan_files)} file(s) or folder(s) the scan left out (all listed in "
                     "index.json):")
        lines += [f"  {path}: {why}" for path, why in scan_files[:_REPORT_ITEMS]]
        if len(scan_files) > _REPORT_ITEMS:
            lines.append(f"  ... and {len(scan_files) - _REPORT_ITEMS} more")
    lines += _dropped_lines(entries, "dropped_slices", "slice file(s) left out of the volumes")
    lines += _dropped_lines(entries, "dropped_boxes", "lesion box(es) not used")
    noted = [e for e in entries if e["notes"]]
    if noted:
        lines.append(f"{len(noted)} patient(s) with notes:")
        lines += [f"  {e['id']}: " + "; ".join(e["notes"]) for e in noted]
    no_row = [e["id"] for e in entries if table is not None and e["clinical"] is None]
    if no_row:
        lines.append(f"{len(no_row)} patient(s) without a clinical row (kept, table missing): "
                     + ", ".join(no_row[:10]))
    if clinical_only:
        lines.append(f"{len(clinical_only)} clinical row(s) without imaging (not used): "
                     + ", ".join(clinical_only[:10]))
    if table is not None and table.issues:
        lines.append(f"{len(table.issues)} clinical issue(s):")
        lines += [f"  {issue}" for issue in table.issues]
    report = "\n".join(lines)
    if (failed or no_row or (table is not None and table.issues)
            or any(e["dropped_slices"] or e["dropped_boxes"] for e in entries)):
        warnings.warn("prepare: some inputs were incomplete:\n" + report, stacklevel=2)
    index = {
        "format": _FORMAT,
        **wanted,
        "patients": entries,
        "failed": failed,
        "clinical_only": clinical_only,
        "clinical_issues": table.issues if table is not None else [],
        "skip_reasons": dict(summary.skip_reasons),
        # Every file, folder and box the scan left out, by name, with its reason.
        "scan_skipped": [list(item) for item in summary.skipped],
        "patients_without_ct": summary.patients_without_ct,
        "empty_patient_folders": [list(item) for item in summary.empty_patient_folders],
        "report": report,
    }
    _write_or_abort(cache_dir / _INDEX, json.dumps(index, indent=1).encode(), cache_dir)
    return PreparedData.load(cache_dir)


class LesionDataset(torch.utils.data.Dataset):
    """Cached crops plus encoded table rows as model inputs.

    Training crops are placed at random (and flipped left-right) with a generator
    seeded by ``(seed, epoch, index)``, so the same epoch yields the same batch
    contents whatever the worker count or a resume in between.

    Args:
        volumes: float16/float32 ``[N, C, D, S, S]`` cached crops.
        numerical: float32 ``[N, n_num]`` (NaN = missing).
        categorical: int64 ``[N, n_cat]`` (-1 = missing).
        labels: int64 ``[N]`` class indices.
        crop: in-plane size returned.
        train: random crop + flip (True) or centre crop (False).
        seed: base seed for the augmentation.

    Raises:
        ValueError: lengths differ or ``crop`` exceeds the cached size.

    Example:
        >>> ds = LesionDataset(vols, num, cat, y, crop=32, train=True)  # doctest: +SKIP
        >>> ds[0]["volume"].shape  # doctest: +SKIP
        torch.Size([1, 12, 32, 32])
    """

    def __init__(
        self,
        volumes: np.ndarray,
        numerical: np.ndarray,
        categorical: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        crop: int,
        train: bool = False,
        seed: int = 0,
    ):
        n = len(volumes)
        if not (len(numerical) == len(categorical) == len(labels) == n):
            raise ValueError(f"volumes/numerical/categorical/labels: lengths differ "
                             f"({n}, {len(numerical)}, {len(categorical)}, {len(labels)})")
        if n and crop > volumes.shape[-1]:
            raise ValueError(f"crop: {crop} exceeds the cached in-plane size {volumes.shape[-1]}")
        self.volumes = volumes
        self.numerical = np.asarray(numerical, dtype=np.float32)
        self.categorical = np.asarray(categorical, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.crop = int(crop)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        vol = self.volumes[i]
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, int(i)])
            vol = random_crop(vol, self.crop, rng)
            if rng.random() < 0.5:
                vol = vol[..., ::-1]
        else:
            vol = center_crop(vol, self.crop)
        return {
            "volume": torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32)),
            "numerical": torch.from_numpy(self.numerical[i]),
            "categorical": torch.from_numpy(self.categorical[i]),
            "label": torch.tensor(self.labels[i]),
            "index": torch.tensor(i),
        }

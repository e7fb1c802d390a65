"""Using a trained checkpoint: metrics on a split of its run, or one patient's prediction."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmscale.data import TableSchema
from mmscale.models import MMCAFNet

from .config import TrainConfig
from .data import Encoded, load_data
from .engine import forward, predict_probs
from .metrics import compute_metrics, format_metrics
from .reporting import write_report
from .runtime import log, setup_runtime

__all__ = ["evaluate_checkpoint", "load_state", "predict_patient"]


def load_state(path: str | os.PathLike) -> dict:
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
    state = load_state(path)
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

    state = load_state(path)
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

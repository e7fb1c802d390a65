"""Using a trained checkpoint: metrics on a split of its run, or one patient's prediction."""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmscale.data import TableSchema
from mmscale.data import center_crop as center_crop_array
from mmscale.models import MMCAFNet

from .config import TrainConfig
from .data import Encoded, load_data
from .engine import forward, load_checkpoint, predict_probs, probabilities
from .metrics import compute_metrics, format_metrics
from .reporting import write_report
from .runtime import log, setup_runtime

__all__ = ["check_row", "evaluate_checkpoint", "predict_patient"]


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
        ValueError: an unknown split, a missing, damaged or foreign checkpoint.
        RunError: a report file could not be written.
    """
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split: expected train, val, test or all, got {split!r}")
    state = load_checkpoint(path)
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
    written = write_report(folder, enc.labels, probs, enc.ids, cfg.classes, metrics, f"{cfg.task} {split}")
    log(rt, "\n" + format_metrics(metrics, f"{split} metrics ({len(ids)} patients) of {path}:"))
    log(rt, f"files written ({len(written)}):\n" + "\n".join(f"  {p}" for p in written))
    return metrics


def check_row(row: Any, schema: TableSchema) -> dict:
    """A clinical row keyed by the schema's column names (NFKC-normalised, so ``Ｍ-Stage``
    is ``M-Stage``).

    Raises:
        ValueError: ``row`` is not a dict, or has keys that are not columns of the
            schema (all listed, with the schema's names).
    """
    if not isinstance(row, dict):
        raise ValueError(f"row: expected an object of clinical values by column name, got "
                         f"{type(row).__name__}")
    names = [c.name for c in schema.columns]
    out, unknown = {}, []
    for key, value in row.items():
        name = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(key))).strip()
        if name in names:
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"row: unknown column(s) {unknown}; the checkpoint's table has {names}")
    return out


def predict_patient(path: str | os.PathLike, patient_dir: str | os.PathLike,
                    annotations: str | os.PathLike | None = None,
                    row: dict | None = None,
                    clinical: str | os.PathLike | None = None,
                    *, center_crop: bool = False) -> dict[str, Any]:
    """Class probabilities for one patient folder and clinical row.

    The crop is cut by :func:`mmscale.data.crop_patient`, the function that built the
    run's cache, so a prediction sees exactly what training saw.

    Args:
        path: a checkpoint of this trainer.
        patient_dir: one patient's DICOM folder (``Lung_Dx-A0001``) or any folder
            holding exactly one patient's series.
        annotations: that patient's annotation folder or the whole archive: it places
            the crop on the lesion.
        row: clinical values by column name (``{"Sex": "M", "Age": 61, ...}``); missing
            keys are missing values, unknown keys an error. ``None``: no clinical data
            (a warning when the model reads the table).
        clinical: a clinical sheet to take the patient's row from (instead of ``row``);
            a patient without a row gets all values missing, with a warning.
        center_crop: without a usable lesion box, crop the volume centre (with a
            warning) instead of refusing: the model was trained on lesion-centred crops.

    Returns:
        ``{"patient_id", "probabilities": {class: p}, "predicted", "lesion_centred",
        "clinical_row"}``.

    Raises:
        ValueError: the folder holds no or several patients, no lesion box without
            ``center_crop``, a bad ``row``, or a bad checkpoint.
    """
    from mmscale.data import NoLesionBoxError, crop_patient, scan_tcia

    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["train_config"])
    schema = TableSchema.from_dict(state["table_schema"])
    if row is not None:
        row = check_row(row, schema)
    if annotations is None and not center_crop:
        raise ValueError("annotations: without --annotations there is no lesion box, and the model "
                         "was trained on lesion-centred crops; give the annotation archive, or pass "
                         "--center-crop to predict from the volume centre anyway")
    patients, _ = scan_tcia(patient_dir, annotations)
    if len(patients) != 1:
        raise ValueError(f"patient_dir: expected one patient, found {sorted(patients)}")
    rec = next(iter(patients.values()))
    if clinical is not None:
        from mmscale.data import read_clinical

        row = read_clinical(clinical).row(rec.patient_id)
        if row is None:
            warnings.warn(f"{rec.patient_id} has no row in {clinical}; every clinical value is missing",
                          stacklevel=2)
    elif row is None and cfg.modality != "image":
        warnings.warn("no clinical row (--clinical or --row): every clinical value is missing, "
                      "so the table adds nothing to this prediction", stacklevel=2)
    try:
        pc = crop_patient(rec, cfg.crop_config(), center_fallback=center_crop)
    except NoLesionBoxError as err:
        raise ValueError(f"annotations: patient {rec.patient_id} has no usable lesion box in "
                         f"{annotations}; pass --center-crop to predict from the volume centre "
                         f"anyway ({err})") from None
    vol = center_crop_array(pc.volume, cfg.crop_config().crop)
    num, cat = schema.encode([{c.name: (row or {}).get(c.name) for c in schema.columns}])
    model = MMCAFNet.from_state(state).eval()
    batch = {"volume": torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None],
             "numerical": torch.from_numpy(num), "categorical": torch.from_numpy(cat)}
    with torch.no_grad():
        probs = probabilities(forward(model, batch, cfg.modality, torch.device("cpu")))[0].tolist()
    classes = state.get("classes") or list(cfg.classes)
    return {"patient_id": rec.patient_id,
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
            "predicted": classes[int(np.argmax(probs))], "lesion_centred": pc.lesion_centred,
            "clinical_row": row is not None}

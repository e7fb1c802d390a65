"""One patient's crop, cut the same way for the cache and for a prediction.

:func:`crop_patient` is the single place where a scanned patient becomes the array
the network sees: :func:`mmscale.data.prepare` caches its output, and a prediction on
a new patient uses it too, so the two can never disagree.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from mmscale.data.crops import CropConfig, crop_volume, lesion_center, resample_pet_to_ct
from mmscale.data.dicom import CTSeries, load_ct_series, load_pet_series
from mmscale.data.tcia import Box, PatientRecord

__all__ = ["NoLesionBoxError", "PatientCrop", "crop_patient"]


class NoLesionBoxError(ValueError):
    """A patient has no usable lesion box, so a lesion-centred crop cannot be cut.

    Raised by :func:`crop_patient` unless ``center_fallback=True``. It is a
    ``ValueError``, so callers that catch ``ValueError`` keep working; catch this class
    to offer a centre crop explicitly (as ``predict.py --center-crop`` does).

    Example:
        >>> issubclass(NoLesionBoxError, ValueError)
        True
    """


@dataclass
class PatientCrop:
    """The crop of one patient and an account of everything left out to make it.

    Attributes:
        patient_id: normalised ID (``"A0001"``).
        volume: float16 ``[C, depth, stored, stored]``, exactly the array
            :func:`mmscale.data.prepare` caches (CT in ``[0, 1]``; PET second channel).
        lesion_centred: ``True`` when centred on a lesion box, ``False`` for a centre crop.
        center: ``(z_index, y, x)`` of the lesion in CT voxels, ``None`` for a centre crop.
        shape: ``(D, H, W)`` of the CT volume the crop was cut from.
        spacing: ``(dz, dy, dx)`` of that volume in mm.
        dropped_slices: ``(file, reason)`` for every DICOM file of the chosen series (and
            of the PET series, reason prefixed ``PET``) left out of the volume.
        dropped_boxes: ``(box, reason)`` for every lesion box not used.
        notes: other things a reader of the report should know (no PET series, geometry
            warnings, centre crop).

    Example:
        >>> pc = PatientCrop("A0001", np.zeros((1, 2, 4, 4), np.float16), False, None,
        ...                  (2, 4, 4), (5.0, 1.0, 1.0))
        >>> pc.volume.shape, pc.lesion_centred
        ((1, 2, 4, 4), False)
    """

    patient_id: str
    volume: np.ndarray
    lesion_centred: bool
    center: tuple[float, float, float] | None
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dropped_slices: list[tuple[str, str]] = field(default_factory=list)
    dropped_boxes: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _describe(box: Box) -> str:
    return f"box on {box.sop_instance_uid} ({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g})"


def _usable_boxes(ct: CTSeries, boxes: list[Box], dropped: list[tuple[str, str]]) -> list[Box]:
    """Boxes with finite corners, positive area, on a slice of ``ct``, centred in its image."""
    _, h, w = ct.hu.shape
    out = []
    for b in boxes:
        corners = (b.xmin, b.ymin, b.xmax, b.ymax)
        if not all(math.isfinite(v) for v in corners):
            dropped.append((_describe(b), "non-finite corner"))
        elif not b.area > 0:
            dropped.append((_describe(b), "zero area"))
        elif ct.slice_index(b.sop_instance_uid) is None:
            dropped.append((_describe(b), "its slice is not in the loaded CT volume"))
        elif not (0 <= (b.xmin + b.xmax) / 2 < w and 0 <= (b.ymin + b.ymax) / 2 < h):
            dropped.append((_describe(b), f"its centre lies outside the {w}x{h} slice"))
        else:
            out.append(b)
    return out


def crop_patient(
    record: PatientRecord,
    crop: CropConfig,
    *,
    center_fallback: bool = False,
) -> PatientCrop:
    """Load a scanned patient's CT (and PET) series and cut the lesion-centred crop.

    The lesion centre comes from the record's boxes (:func:`mmscale.data.lesion_center`);
    boxes with a non-finite corner, no area, a slice missing from the loaded volume or
    a centre outside the image are left out and listed. With ``crop.pet`` the PET series is
    resampled onto the CT grid; a patient without a usable PET series gets a zero PET
    channel, with a note and a warning.

    Args:
        record: the patient as found by :func:`mmscale.data.scan_tcia`.
        crop: the :class:`CropConfig`.
        center_fallback: without a usable lesion box, crop the volume centre (with a
            warning) instead of raising.

    Returns:
        The :class:`PatientCrop` (``volume``: float16 ``[C, depth, stored, stored]``).

    Raises:
        ValueError: the CT series cannot be loaded (see
            :func:`mmscale.data.load_ct_series`).
        NoLesionBoxError: no lesion box is usable and ``center_fallback`` is
            ``False`` (a ``ValueError`` subclass).

    Example:
        >>> patients, _ = scan_tcia("~/tcia", "~/tcia/Annotation")  # doctest: +SKIP
        >>> pc = crop_patient(patients["A0001"], CropConfig())  # doctest: +SKIP
        >>> pc.volume.shape, pc.lesion_centred  # doctest: +SKIP
        ((1, 12, 208, 208), True)
    """
    pid = record.patient_id
    ct = load_ct_series(record.ct_files)
    dropped_slices = list(ct.skipped)
    dropped_boxes: list[tuple[str, str]] = []
    notes = list(ct.notes)
    boxes = _usable_boxes(ct, list(record.boxes), dropped_boxes)
    center = lesion_center(ct, boxes)
    if center is None:
        why = (f"none of its {len(record.boxes)} lesion box(es) is usable" if record.boxes
               else "it has no lesion box")
        if not center_fallback:
            raise NoLesionBoxError(f"record: patient {pid}: {why} on CT series {ct.series_instance_uid}; "
                             "pass center_fallback=True to crop the volume centre instead")
        warnings.warn(f"patient {pid}: {why}; cropping the volume centre", stacklevel=2)
        notes.append(f"centre crop: {why}")
    pet = None
    if crop.pet:
        if not record.pet_files:
            notes.append("no PET series (PET channel is zeros)")
        else:
            try:
                pet_series = load_pet_series(record.pet_files)
                pet = resample_pet_to_ct(pet_series, ct)
            except ValueError as err:
                warnings.warn(f"patient {pid}: PET series unusable, PET channel is zeros ({err})",
                              stacklevel=2)
                notes.append(f"PET series unusable (PET channel is zeros): {err}")
            else:
                dropped_slices += [(f, f"PET {why}") for f, why in pet_series.skipped]
                notes += [f"PET {n}" for n in pet_series.notes]
    volume = crop_volume(ct, center, crop, pet).astype(np.float16)
    return PatientCrop(
        patient_id=pid,
        volume=volume,
        lesion_centred=center is not None,
        center=center,
        shape=tuple(int(v) for v in ct.hu.shape),
        spacing=tuple(float(v) for v in ct.spacing),
        dropped_slices=dropped_slices,
        dropped_boxes=dropped_boxes,
        notes=notes,
    )

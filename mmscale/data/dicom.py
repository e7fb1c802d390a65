"""Reading CT (and PET) series from DICOM files into Hounsfield-unit volumes.

Only the CT Image Storage SOP class is a CT volume: the collection's fused PET/CT
"Secondary Capture" images also say ``Modality=CT``, so everything here filters on
``SOPClassUID``, never on ``Modality``. ``pydicom`` is imported inside the functions
so that ``import mmscale`` works without the ``data`` extra.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CT_IMAGE_STORAGE",
    "PET_IMAGE_STORAGE",
    "SECONDARY_CAPTURE",
    "CTSeries",
    "PETSeries",
    "load_ct_series",
    "load_pet_series",
    "read_header",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
"""SOPClassUID of CT Image Storage: the only files that make a CT volume."""
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
"""SOPClassUID of PET Image Storage (the optional PET channel)."""
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""SOPClassUID of Secondary Capture: the fused PET/CT images that say ``Modality=CT``."""

# Header tags needed to classify a file and place its slice; reading only these keeps a
# scan of a large download fast (the pixel data is never touched).
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "Modality",
    "SeriesDescription",
    "ImagePositionPatient",
    "InstanceNumber",
]


def _pydicom():
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "mmscale.data needs pydicom; install the extra: pip install 'mmscale[data]'"
        ) from err
    return pydicom


def read_header(path: str | os.PathLike) -> dict[str, object]:
    """Read the identifying header fields of one DICOM file (no pixel data).

    Args:
        path: a DICOM file.

    Returns:
        A dict with ``sop_class_uid``, ``sop_instance_uid``, ``series_instance_uid``,
        ``study_instance_uid``, ``patient_id``, ``modality``, ``series_description``
        (strings, ``""`` when absent) and ``z`` (``ImagePositionPatient[2]`` as a float,
        or ``None``).

    Raises:
        pydicom.errors.InvalidDicomError: the file is not DICOM.
        OSError: the file cannot be read.

    Example:
        >>> import pydicom.data
        >>> read_header(pydicom.data.get_testdata_file("CT_small.dcm"))["sop_class_uid"]
        '1.2.840.10008.5.1.4.1.1.2'
    """
    pydicom = _pydicom()
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    ipp = ds.get("ImagePositionPatient")
    return {
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")).strip(),
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "z": float(ipp[2]) if ipp is not None and len(ipp) == 3 else None,
    }


@dataclass
class CTSeries:
    """A CT volume in Hounsfield units with its geometry.

    Attributes:
        hu: float32 array ``[D, H, W]``, slices ordered by increasing
            ``ImagePositionPatient[2]``.
        spacing: ``(dz, dy, dx)`` in mm; ``dz`` is the median gap between slice
            positions (``SliceThickness`` for a single slice).
        sop_instance_uids: SOPInstanceUID of each slice, in volume order.
        z_positions: ``ImagePositionPatient[2]`` of each slice (mm), in volume order.
        origin: ``ImagePositionPatient`` ``(x, y, z)`` of the first slice (mm).
        series_instance_uid: the series UID.
        patient_id: DICOM ``PatientID``.
        skipped: ``(path, reason)`` for each file left out (unreadable, other SOP
            class, duplicate position, mismatched size).

    Example:
        >>> import pydicom.data
        >>> ct = load_ct_series([pydicom.data.get_testdata_file("CT_small.dcm")])
        >>> ct.slice_index(ct.sop_instance_uids[0]), ct.hu.dtype
        (0, dtype('float32'))
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    sop_instance_uids: list[str]
    z_positions: list[float]
    origin: tuple[float, float, float]
    series_instance_uid: str
    patient_id: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def slice_index(self, sop_instance_uid: str) -> int | None:
        """Index of the slice with this SOPInstanceUID, or ``None``."""
        try:
            return self.sop_instance_uids.index(sop_instance_uid)
        except ValueError:
            return None


@dataclass
class PETSeries:
    """A PET volume (stored units, e.g. BQML) with its geometry.

    Attributes:
        values: float32 ``[D, H, W]`` after the per-slice rescale, slices by increasing z.
        spacing: ``(dz, dy, dx)`` in mm.
        origin: ``(x, y, z)`` of the first slice's first pixel (mm).
        units: the ``Units`` attribute (``"BQML"`` in the collection), ``""`` if absent.
        skipped: ``(path, reason)`` for each file left out.

    Example:
        >>> pet = PETSeries(np.zeros((2, 4, 4), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), "BQML")
        >>> pet.values.shape
        (2, 4, 4)
    """

    values: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    units: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _list_files(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(folder_or_files, (str, os.PathLike)):
        folder = Path(folder_or_files)
        if not folder.is_dir():
            raise ValueError(f"folder: {str(folder)!r} is not a directory")
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    return [Path(p) for p in folder_or_files]


def _read_slices(files: Sequence[Path], sop_class: str, what: str):
    """Read full datasets of ``sop_class``, sorted by z, duplicate positions removed."""
    pydicom = _pydicom()
    slices, skipped = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # corrupt/truncated files raise many different types
            warnings.warn(f"skipping unreadable DICOM file {str(path)!r}: {err}", stacklevel=3)
            skipped.append((str(path), f"unreadable: {type(err).__name__}"))
            continue
        uid = str(ds.get("SOPClassUID", ""))
        if uid != sop_class:
            skipped.append((str(path), f"SOP class {uid or '?'} is not {what}"))
            continue
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            skipped.append((str(path), "no ImagePositionPatient"))
            continue
        slices.append((float(ipp[2]), path, ds))
    # z falls with InstanceNumber in the collection, so sort by position, never by name.
    slices.sort(key=lambda s: s[0])
    unique = []
    for z, path, ds in slices:
        # Multi-phase series repeat positions: keep the first file seen at each z.
        if unique and abs(z - unique[-1][0]) < 1e-3:
            skipped.append((str(path), f"duplicate slice position z={z:g}"))
            continue
        unique.append((z, path, ds))
    return unique, skipped


def _pixels(ds, path: Path, skipped: list[tuple[str, str]]) -> np.ndarray | None:
    try:
        arr = ds.pixel_array
    except Exception as err:
        warnings.warn(f"skipping DICOM file with unreadable pixels {str(path)!r}: {err}", stacklevel=4)
        skipped.append((str(path), f"unreadable pixels: {type(err).__name__}"))
        return None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _stack(unique, skipped):
    planes, kept = [], []
    for z, path, ds in unique:
        plane = _pixels(ds, path, skipped)
        if plane is None:
            continue
        if plane.ndim != 2:
            skipped.append((str(path), f"pixel array has shape {plane.shape}, expected 2-D"))
            continue
        if planes and plane.shape != planes[0].shape:
            skipped.append((str(path), f"slice shape {plane.shape} differs from {planes[0].shape}"))
            continue
        planes.append(plane)
        kept.append((z, path, ds))
    return planes, kept


def _geometry(kept) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    ds0 = kept[0][2]
    dy, dx = (float(v) for v in ds0.get("PixelSpacing", [1.0, 1.0]))
    zs = [z for z, _, _ in kept]
    if len(zs) > 1:
        dz = float(np.median(np.diff(zs)))
    else:
        dz = float(ds0.get("SliceThickness", 1.0) or 1.0)
    x0, y0, z0 = (float(v) for v in ds0.ImagePositionPatient)
    return (dz, dy, dx), (x0, y0, z0)


def load_ct_series(folder: str | os.PathLike | Iterable[str | os.PathLike]) -> CTSeries:
    """Load one CT series as a Hounsfield-unit volume.

    Files whose SOPClassUID is not CT Image Storage (``1.2.840.10008.5.1.4.1.1.2``) are
    ignored; slices are sorted by ``ImagePositionPatient[2]``; a repeated position keeps
    its first file; ``RescaleSlope``/``RescaleIntercept`` are applied per slice. An
    unreadable file is skipped with a warning that names it and listed in
    ``CTSeries.skipped``.

    Args:
        folder: a series folder (its ``*.dcm`` files are read), or an iterable of file
            paths (as found by :func:`mmscale.data.scan_tcia`).

    Returns:
        The :class:`CTSeries` (``hu``: float32 ``[D, H, W]``).

    Raises:
        ValueError: ``folder`` is not a directory, or holds no readable CT Image Storage
            slice, or its slices belong to more than one series.

    Example:
        >>> import pydicom.data
        >>> ct = load_ct_series([pydicom.data.get_testdata_file("CT_small.dcm")])
        >>> ct.hu.shape, ct.spacing[1:]
        ((1, 128, 128), (0.661468, 0.661468))
    """
    files = _list_files(folder)
    unique, skipped = _read_slices(files, CT_IMAGE_STORAGE, "CT Image Storage")
    planes, kept = _stack(unique, skipped)
    if not planes:
        raise ValueError(
            f"folder: no readable CT Image Storage slice among {len(files)} file(s)"
            + (f" in {str(folder)!r}" if isinstance(folder, (str, os.PathLike)) else "")
        )
    series_uids = {str(ds.SeriesInstanceUID) for _, _, ds in kept}
    if len(series_uids) > 1:
        raise ValueError(f"folder: slices belong to {len(series_uids)} series, expected one")
    spacing, origin = _geometry(kept)
    return CTSeries(
        hu=np.stack(planes).astype(np.float32, copy=False),
        spacing=spacing,
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, _, ds in kept],
        z_positions=[z for z, _, _ in kept],
        origin=origin,
        series_instance_uid=series_uids.pop(),
        patient_id=str(kept[0][2].get("PatientID", "")).strip(),
        skipped=skipped,
    )


def load_pet_series(folder: str | os.PathLike | Iterable[str | os.PathLike]) -> PETSeries:
    """Load one PET series (PET Image Storage) with its per-slice rescale applied.

    Args:
        folder: a series folder or an iterable of file paths.

    Returns:
        The :class:`PETSeries` (``values``: float32 ``[D, H, W]``).

    Raises:
        ValueError: no readable PET Image Storage slice was found.

    Example:
        >>> pet = load_pet_series("Lung_Dx-A0001/.../4.000000-PET-12345")  # doctest: +SKIP
    """
    files = _list_files(folder)
    unique, skipped = _read_slices(files, PET_IMAGE_STORAGE, "PET Image Storage")
    planes, kept = _stack(unique, skipped)
    if not planes:
        raise ValueError(f"folder: no readable PET Image Storage slice among {len(files)} file(s)")
    spacing, origin = _geometry(kept)
    return PETSeries(
        values=np.stack(planes).astype(np.float32, copy=False),
        spacing=spacing,
        origin=origin,
        units=str(kept[0][2].get("Units", "")),
        skipped=skipped,
    )

"""Reading CT (and PET) series from DICOM files into Hounsfield-unit volumes.

Only the CT Image Storage SOP class is a CT volume: the collection's fused PET/CT
"Secondary Capture" images also say ``Modality=CT``, so everything here filters on
``SOPClassUID``, never on ``Modality``. ``pydicom`` is imported inside the functions
so that ``import mmscale`` works without the ``data`` extra.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "AXIAL",
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
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""ImageOrientationPatient of an axial slice (rows along +x, columns along +y)."""

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
        (strings, ``""`` when absent or empty) and ``z`` (``ImagePositionPatient[2]``
        as a float, or ``None`` when it is absent, has the wrong multiplicity or is not
        finite).

    Raises:
        pydicom.errors.InvalidDicomError: the file is not DICOM.
        OSError: the file cannot be read.
        Exception: pydicom's own errors for a header value it cannot convert (callers
            scanning many files catch them per file).

    Example:
        >>> import pydicom.data
        >>> read_header(pydicom.data.get_testdata_file("CT_small.dcm"))["sop_class_uid"]
        '1.2.840.10008.5.1.4.1.1.2'
    """
    pydicom = _pydicom()
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    try:
        z = _floats(ds, "ImagePositionPatient", 3)[2]
    except _Skip:
        z = None
    return {
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "modality": _text(ds, "Modality"),
        "series_description": _text(ds, "SeriesDescription"),
        "z": z,
    }


@dataclass
class CTSeries:
    """A CT volume in Hounsfield units with its geometry.

    Attributes:
        hu: float32 array ``[D, H, W]``, slices ordered by increasing position along
            the slice normal (increasing ``ImagePositionPatient[2]`` for axial series).
        spacing: ``(dz, dy, dx)`` in mm; ``dz`` is the median step between slice
            positions (``SliceThickness`` for a single slice).
        sop_instance_uids: SOPInstanceUID of each slice, in volume order.
        z_positions: position of each slice along the slice normal (mm), in volume
            order; for axial series this is ``ImagePositionPatient[2]``.
        origin: ``ImagePositionPatient`` ``(x, y, z)`` of the first slice (mm).
        series_instance_uid: the series UID.
        patient_id: DICOM ``PatientID``.
        skipped: ``(path, reason)`` for each file left out (unreadable, other SOP
            class, multi-frame, missing UID, bad geometry or rescale, geometry that
            differs from the majority, duplicate position).
        orientation: ``ImageOrientationPatient`` (row then column direction cosines).
        notes: geometry warnings (gantry tilt, gaps, uneven slice spacing).

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
    orientation: tuple[float, ...] = AXIAL
    notes: list[str] = field(default_factory=list)

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
        values: float32 ``[D, H, W]`` after the per-slice rescale, slices by increasing
            position along the slice normal.
        spacing: ``(dz, dy, dx)`` in mm.
        origin: ``(x, y, z)`` of the first slice's first pixel (mm).
        units: the ``Units`` attribute (``"BQML"`` in the collection), ``""`` if absent.
        skipped: ``(path, reason)`` for each file left out.
        orientation: ``ImageOrientationPatient`` (row then column direction cosines).
        notes: geometry warnings (gantry tilt, gaps, uneven slice spacing).

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
    orientation: tuple[float, ...] = AXIAL
    notes: list[str] = field(default_factory=list)


def _list_files(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(folder_or_files, (str, os.PathLike)):
        folder = Path(folder_or_files)
        if not folder.is_dir():
            raise ValueError(f"folder: {str(folder)!r} is not a directory")
        try:
            return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
        except OSError as err:
            raise ValueError(f"folder: cannot list {str(folder)!r} ({err})") from err
    return [Path(p) for p in folder_or_files]


# Multi-frame SOP classes: one file holds a whole volume described by per-frame
# functional groups, which this reader does not interpret.
_MULTI_FRAME = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}
_POSITION_TOL = 1e-3  # mm: two slices closer than this along the normal are one position
_ORIENTATION_TOL = 1e-3  # direction cosines
_SPACING_RTOL = 1e-3  # relative PixelSpacing tolerance within one series
_STEP_RTOL = 0.05  # steps between slices may vary this much before "inconsistent spacing"
_TILT_DEG = 0.1  # in-plane drift of ImagePositionPatient beyond this angle is a gantry tilt
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class _Skip(Exception):
    """A file left out of a series; the message is the reason recorded in ``skipped``."""


def _is_empty(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return not value.strip()
    try:
        return len(value) == 0
    except TypeError:
        return False


def _floats(ds, keyword: str, n: int, *, positive: bool = False,
            default: list[float] | None = None) -> list[float]:
    """``n`` finite floats of ``keyword`` (positive ones if asked), or :class:`_Skip`."""
    value = ds[keyword].value if keyword in ds else None
    if _is_empty(value):
        if default is not None:
            return list(default)
        raise _Skip(f"bad geometry: no {keyword}")
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    if len(items) != n:
        raise _Skip(f"bad geometry: {keyword} has {len(items)} value(s), expected {n}")
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        raise _Skip(f"bad geometry: {keyword} {value!r} is not numeric") from None
    if not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in out):
        raise _Skip(f"bad geometry: {keyword} {out} is not finite")
    if positive and not all(v > 0 for v in out):
        raise _Skip(f"bad geometry: {keyword} {out} must be positive")
    return out


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if _is_empty(value) else str(value).strip()


@dataclass
class _Slice:
    """What one file contributes, read and checked once."""

    path: Path
    ds: object
    sop_uid: str
    series_uid: str
    position: np.ndarray  # ImagePositionPatient (x, y, z), mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 direction cosines
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    thickness: float | None


def _slice_info(path: Path, ds, sop_class: str, what: str) -> _Slice:
    """Check one dataset's class, UIDs, geometry and rescale; :class:`_Skip` if unusable."""
    uid = _text(ds, "SOPClassUID")
    if uid in _MULTI_FRAME:
        raise _Skip(f"multi-frame: {_MULTI_FRAME[uid]} ({uid}) is not supported; export the "
                    "series as single-frame files")
    if uid != sop_class:
        raise _Skip(f"SOP class {uid or '?'} is not {what}")
    frames = ds.get("NumberOfFrames")
    if not _is_empty(frames) and int(frames) > 1:
        raise _Skip(f"multi-frame: {int(frames)} frames in one file (expected one slice per file)")
    sop_uid, series_uid = _text(ds, "SOPInstanceUID"), _text(ds, "SeriesInstanceUID")
    if not sop_uid or not series_uid:
        raise _Skip("missing UID: no " + ("SOPInstanceUID" if not sop_uid else "SeriesInstanceUID"))
    position = np.array(_floats(ds, "ImagePositionPatient", 3))
    orientation = np.array(_floats(ds, "ImageOrientationPatient", 6))
    row, col = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2
            or abs(float(row @ col)) > 1e-2):
        raise _Skip(f"bad geometry: ImageOrientationPatient {orientation.tolist()} is not two "
                    "orthogonal unit vectors")
    rows, cols = _floats(ds, "Rows", 1, positive=True)[0], _floats(ds, "Columns", 1, positive=True)[0]
    dy, dx = _floats(ds, "PixelSpacing", 2, positive=True)
    try:
        (slope,) = _floats(ds, "RescaleSlope", 1, positive=True, default=[1.0])
        (intercept,) = _floats(ds, "RescaleIntercept", 1, default=[0.0])
    except _Skip as err:
        raise _Skip(str(err).replace("bad geometry", "bad rescale")) from None
    try:
        (thickness,) = _floats(ds, "SliceThickness", 1, positive=True)
    except _Skip:
        thickness = None  # needed only for a single-slice series, checked there
    return _Slice(path, ds, sop_uid, series_uid, position, orientation, int(rows), int(cols),
                  (dy, dx), slope, intercept, thickness)


def _read_files(files: Sequence[Path], sop_class: str, what: str):
    """Read and check every file; returns the usable slices and ``(path, reason)`` skips."""
    pydicom = _pydicom()
    slices, skipped = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # corrupt/truncated files raise many different types
            warnings.warn(f"skipping unreadable DICOM file {str(path)!r}: {err}", stacklevel=4)
            skipped.append((str(path), f"unreadable: {type(err).__name__}"))
            continue
        try:
            slices.append(_slice_info(path, ds, sop_class, what))
        except _Skip as err:
            reason = str(err)
            if not reason.startswith("SOP class"):  # other classes are expected beside a series
                warnings.warn(f"skipping DICOM file {str(path)!r}: {reason}", stacklevel=4)
            skipped.append((str(path), reason))
        except Exception as err:  # a value pydicom cannot convert (wrong VR, bad encoding)
            reason = f"bad header: {type(err).__name__}: {err}"
            warnings.warn(f"skipping DICOM file {str(path)!r}: {reason}", stacklevel=4)
            skipped.append((str(path), reason))
    return slices, skipped


def _same_frame(a: _Slice, b: _Slice) -> str | None:
    """Why ``a`` does not fit the series of ``b`` (``None`` when it does)."""
    if (a.rows, a.cols) != (b.rows, b.cols):
        return f"Rows/Columns {a.rows}x{a.cols} differ from the series' {b.rows}x{b.cols}"
    if np.abs(a.orientation - b.orientation).max() > _ORIENTATION_TOL:
        return (f"ImageOrientationPatient {a.orientation.tolist()} differs from the series' "
                f"{b.orientation.tolist()}")
    if any(abs(p - q) > _SPACING_RTOL * q for p, q in zip(a.pixel_spacing, b.pixel_spacing, strict=True)):
        return f"PixelSpacing {list(a.pixel_spacing)} differs from the series' {list(b.pixel_spacing)}"
    return None


def _majority(slices: list[_Slice], skipped: list, what: str) -> list[_Slice]:
    """Keep the slices sharing the most common size, orientation and pixel spacing."""
    groups: list[list[_Slice]] = []
    for s in slices:
        for g in groups:
            if _same_frame(s, g[0]) is None:
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) <= 1:
        return slices
    best = max(groups, key=len)  # ties: the group seen first
    for g in groups:
        if g is best:
            continue
        for s in g:
            reason = f"mismatched geometry: {_same_frame(s, best[0])} ({len(best)} slice(s))"
            warnings.warn(f"skipping {what} file {str(s.path)!r}: {reason}", stacklevel=4)
            skipped.append((str(s.path), reason))
    return best


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def _sort_unique(slices: list[_Slice], skipped: list) -> list[tuple[float, _Slice]]:
    """Slices sorted along the slice normal; a repeated position keeps its first file."""
    normal = _normal(slices[0].orientation)
    ordered = sorted(((float(s.position @ normal), s) for s in slices), key=lambda t: t[0])
    unique = []
    for pos, s in ordered:
        # Multi-phase series repeat positions: keep the first file seen at each position.
        if unique and abs(pos - unique[-1][0]) < _POSITION_TOL:
            skipped.append((str(s.path), f"duplicate slice position {pos:g} mm along the normal"))
            continue
        unique.append((pos, s))
    return unique


def _pixels(s: _Slice, skipped: list[tuple[str, str]]) -> np.ndarray | None:
    try:
        arr = s.ds.pixel_array
    except Exception as err:
        warnings.warn(f"skipping DICOM file with unreadable pixels {str(s.path)!r}: {err}", stacklevel=5)
        skipped.append((str(s.path), f"unreadable pixels: {type(err).__name__}"))
        return None
    if arr.shape != (s.rows, s.cols):
        reason = f"bad pixels: pixel array has shape {arr.shape}, expected ({s.rows}, {s.cols})"
        warnings.warn(f"skipping DICOM file {str(s.path)!r}: {reason}", stacklevel=5)
        skipped.append((str(s.path), reason))
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        plane = arr.astype(np.float64) * s.slope + s.intercept
    if not (np.isfinite(plane).all() and np.abs(plane).max(initial=0.0) <= _FLOAT32_MAX):
        reason = (f"bad rescale: RescaleSlope {s.slope:g} / RescaleIntercept {s.intercept:g} give "
                  "values beyond float32")
        warnings.warn(f"skipping DICOM file {str(s.path)!r}: {reason}", stacklevel=5)
        skipped.append((str(s.path), reason))
        return None
    return plane.astype(np.float32)


def _geometry_warnings(kept: list[tuple[float, _Slice]], name: str) -> list[str]:
    """Gantry tilt, missing slices (gaps) and uneven steps between slice positions."""
    if len(kept) < 2:
        return []
    out = []
    pos = np.array([p for p, _ in kept])
    steps = np.diff(pos)
    step = float(np.median(steps))
    gaps = [(float(pos[i]), float(pos[i + 1])) for i in np.nonzero(steps > 1.5 * step)[0]]
    if gaps:
        out.append(f"{name}: {len(gaps)} gap(s) in slice positions (missing slices?), step "
                   f"{step:g} mm, first between {gaps[0][0]:g} and {gaps[0][1]:g} mm")
    uneven = steps[(steps <= 1.5 * step) & (np.abs(steps - step) > _STEP_RTOL * step)]
    if uneven.size:
        out.append(f"{name}: inconsistent slice spacing, steps from {float(steps.min()):g} to "
                   f"{float(steps.max()):g} mm (median {step:g} mm)")
    normal = _normal(kept[0][1].orientation)
    shift = kept[-1][1].position - kept[0][1].position
    along = float(shift @ normal)
    drift = float(np.linalg.norm(shift - along * normal))
    angle = math.degrees(math.atan2(drift, abs(along)))
    if drift > 0.01 and angle > _TILT_DEG:
        out.append(f"{name}: gantry tilt of {angle:.2f} degrees (slice positions drift {drift:g} mm "
                   "in-plane); the volume is not resampled")
    return out


def _load_series(folder, sop_class: str, what: str, strict: bool):
    """Everything :func:`load_ct_series` and :func:`load_pet_series` share."""
    files = _list_files(folder)
    where = f" in {str(folder)!r}" if isinstance(folder, (str, os.PathLike)) else ""
    slices, skipped = _read_files(files, sop_class, what)
    series_uids = sorted({s.series_uid for s in slices})
    if len(series_uids) > 1:
        raise ValueError(f"folder: slices belong to {len(series_uids)} series, expected one{where}")
    planes, kept = [], []
    if slices:
        for pos, s in _sort_unique(_majority(slices, skipped, what), skipped):
            plane = _pixels(s, skipped)
            if plane is not None:
                planes.append(plane)
                kept.append((pos, s))
    if not planes:
        reasons = Counter(why.split(":")[0] for _, why in skipped)
        detail = "; ".join(f"{n} {why}" for why, n in reasons.most_common())
        example = f" (e.g. {skipped[0][0]!r}: {skipped[0][1]})" if skipped else ""
        raise ValueError(f"folder: no readable {what} slice among {len(files)} file(s){where}"
                         + (f": {detail}{example}" if detail else ""))
    first = kept[0][1]
    name = str(folder) if where else f"series {first.series_uid}"
    if len(kept) > 1:
        dz = float(np.median(np.diff([p for p, _ in kept])))
    elif first.thickness is not None:
        dz = first.thickness
    else:
        raise ValueError(f"folder: the single slice {str(first.path)!r} has no usable SliceThickness, "
                         "so its slice spacing is unknown")
    notes = _geometry_warnings(kept, name)
    if notes and strict:
        raise ValueError("folder: " + "; ".join(notes) + " (strict=True)")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    spacing = (dz, *first.pixel_spacing)
    origin = tuple(float(v) for v in first.position)
    return planes, kept, skipped, spacing, origin, notes


def load_ct_series(
    folder: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    strict: bool = False,
) -> CTSeries:
    """Load one CT series as a Hounsfield-unit volume.

    Files whose SOPClassUID is not CT Image Storage (``1.2.840.10008.5.1.4.1.1.2``) are
    left out. The slices that share the most common Rows/Columns, ImageOrientationPatient
    and PixelSpacing form the volume; the others are left out by name. Slices are sorted
    along the slice normal (the cross product of ImageOrientationPatient's row and column
    directions), a repeated position keeps its first file, and
    ``RescaleSlope``/``RescaleIntercept`` are applied per slice. Every geometry and
    rescale value must be finite (spacings and slopes positive). A file that cannot be
    used (unreadable, multi-frame, missing UID or position, bad value) is skipped with a
    warning that names it, and every file left out is listed in ``CTSeries.skipped``.
    Gantry tilt, gaps between slice positions (a missing slice) and uneven steps are
    warnings (listed in ``CTSeries.notes``), or errors with ``strict=True``.

    Args:
        folder: a series folder (its ``*.dcm`` files are read), or an iterable of file
            paths (as found by :func:`mmscale.data.scan_tcia`).
        strict: raise instead of warning about tilt, gaps and uneven slice spacing.

    Returns:
        The :class:`CTSeries` (``hu``: float32 ``[D, H, W]``).

    Raises:
        ValueError: ``folder`` is not a directory; no usable CT Image Storage slice is
            left (the message counts the reasons, e.g. ``no ImagePositionPatient`` or
            ``multi-frame: Enhanced CT Image Storage``); the slices belong to more than
            one series; a single slice has no usable SliceThickness; or, with
            ``strict=True``, the geometry is tilted, has gaps or uneven steps.

    Example:
        >>> import pydicom.data
        >>> ct = load_ct_series([pydicom.data.get_testdata_file("CT_small.dcm")])
        >>> ct.hu.shape, ct.spacing[1:]
        ((1, 128, 128), (0.661468, 0.661468))
    """
    planes, kept, skipped, spacing, origin, notes = _load_series(
        folder, CT_IMAGE_STORAGE, "CT Image Storage", strict)
    first = kept[0][1]
    return CTSeries(
        hu=np.stack(planes),
        spacing=spacing,
        sop_instance_uids=[s.sop_uid for _, s in kept],
        z_positions=[p for p, _ in kept],
        origin=origin,
        series_instance_uid=first.series_uid,
        patient_id=_text(first.ds, "PatientID"),
        skipped=skipped,
        orientation=tuple(float(v) for v in first.orientation),
        notes=notes,
    )


def load_pet_series(
    folder: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    strict: bool = False,
) -> PETSeries:
    """Load one PET series (PET Image Storage) with its per-slice rescale applied.

    The same checks as :func:`load_ct_series`: one majority geometry, slices sorted
    along the normal, every geometry and rescale value finite (and positive where it
    must be), every file left out named in ``PETSeries.skipped`` with a warning.

    Args:
        folder: a series folder or an iterable of file paths.
        strict: raise instead of warning about tilt, gaps and uneven slice spacing.

    Returns:
        The :class:`PETSeries` (``values``: float32 ``[D, H, W]``).

    Raises:
        ValueError: no usable PET Image Storage slice is left (the message counts the
            reasons), the slices belong to several series, or (``strict=True``) the
            geometry is tilted, has gaps or uneven steps.

    Example:
        >>> pet = load_pet_series("Lung_Dx-A0001/.../4.000000-PET-12345")  # doctest: +SKIP
    """
    planes, kept, skipped, spacing, origin, notes = _load_series(
        folder, PET_IMAGE_STORAGE, "PET Image Storage", strict)
    first = kept[0][1]
    return PETSeries(
        values=np.stack(planes),
        spacing=spacing,
        origin=origin,
        units=_text(first.ds, "Units"),
        skipped=skipped,
        orientation=tuple(float(v) for v in first.orientation),
        notes=notes,
    )

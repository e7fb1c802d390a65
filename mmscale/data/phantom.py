"""A small look-alike of the Lung-PET-CT-Dx download, for the demo and the tests.

``make_phantom`` writes real DICOM files with pydicom in the NBIA layout (CT Image
Storage series, a fused "Secondary Capture" series that says ``Modality=CT`` and must
be ignored, optional PET), VOC XML annotations in the archive's layout, ``metadata.csv``
and a clinical xlsx with the real column names (full-width ``Ｍ-Stage`` included).

How the class is made (so that neither modality alone suffices): every patient has an
image latent ``a`` and a table latent ``b`` (2-D each, independent standard normals)
and the class is a region of ``z = a + b``: adenocarcinoma (A) when ``z1 < 0``, else
squamous (G) when ``z2 < 0.5``, small cell (B) when ``z2 < 1.6``, large cell (E)
above. ``a1`` sets the lesion's density (ground glass to solid), ``a2`` its size; ``b1``
drives age, smoking, sex and T stage, ``b2`` weight, N and M stage. Each modality sees
half of the evidence; the sum separates A from G cleanly.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from mmscale.data.dicom import CT_IMAGE_STORAGE, PET_IMAGE_STORAGE, SECONDARY_CAPTURE

__all__ = ["PhantomPaths", "make_phantom"]

COLLECTION = "Lung-PET-CT-Dx"
ANNOTATION_ARCHIVE = "Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020"
CLINICAL_NAME = "statistics-clinical-20201221.xlsx"
# Class mix of the phantom: A majority, then G, B, E (the collection's order).
_LETTER_CYCLE = "AGABGAEAGB"
_XML = (
    '<annotation verified="no"><folder>Unknow</folder><filename>Unknow</filename>'
    "<path>Unknow</path><source>Unknow<database>Unknown</database></source><size>"
    "<width>{w}</width><height>{h}</height><depth>1</depth></size><segmented>0</segmented>"
    "{objects}</annotation>"
)
_XML_OBJECT = (
    "<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
    "<Difficult>0</Difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
    "<ymax>{y1}</ymax></bndbox></object>"
)
_METADATA_COLUMNS = [
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
    "File Location", "Download Timestamp",
]


@dataclass(frozen=True)
class PhantomPaths:
    """Where a phantom was written.

    Attributes:
        root: the phantom's root folder.
        data_dir: the DICOM tree (``root``; patients under ``Lung-PET-CT-Dx/``).
        annotations: the annotation archive folder.
        clinical: the clinical xlsx (or csv).
        metadata: ``metadata.csv``.
        labels: class letter per patient ID.

    Example:
        >>> paths = make_phantom("phantom", n_patients=2, size=32, slices=4)
        >>> paths.labels, paths.clinical.name
        ({'A0001': 'A', 'G0001': 'G'}, 'statistics-clinical-20201221.xlsx')
    """

    root: Path
    data_dir: Path
    annotations: Path
    clinical: Path
    metadata: Path
    labels: dict


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def _region(z: np.ndarray) -> str:
    if z[0] < 0:
        return "A"
    if z[1] < 0.5:
        return "G"
    return "B" if z[1] < 1.6 else "E"


def _latents(rng: np.random.Generator, letter: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw (a, b) until a + b falls in the class's region (rejection sampling)."""
    while True:
        a, b = rng.standard_normal(2), rng.standard_normal(2)
        if _region(a + b) == letter:
            return a, b


def _clinical_row(rng: np.random.Generator, b: np.ndarray) -> dict:
    """Clinical values driven by the table latent ``b``, with the sheet's quirks."""
    b1, b2 = float(b[0]), float(b[1])
    t_ord = int(np.clip(np.round(2.2 + 0.9 * b1 + rng.normal(0, 0.6)), 1, 4))
    t_stage = {1: ["1", "1a", "1b", "1c"], 2: [2, "2a", "2b"], 3: [3], 4: [4]}[t_ord]
    t_value = t_stage[int(rng.integers(len(t_stage)))]
    t_value = int(t_value) if str(t_value).isdigit() else t_value
    n_stage = int(np.clip(np.round(1.2 + 0.9 * b2 + rng.normal(0, 0.6)), 0, 3))
    m_raw = 0.9 * b2 + rng.normal(0, 0.8)
    m_stage = 0 if m_raw < 0.6 else ["1a", "1b", 1, "1c", 2][int(rng.integers(5))]
    grading = rng.choice(["G1", " G1", "G1-2", "G1-G2", "G2", "G2-3", "G2-G3", "G3"])
    return {
        "Sex": "M" if rng.random() < _sigmoid(1.3 * b1 + 0.2) else "F",
        "Age": float(np.clip(np.round(62 + 6.0 * b1 + rng.normal(0, 3.0)), 30, 90)),
        "weight (kg)": float(np.clip(np.round(66 + 8.0 * b2 + rng.normal(0, 4.0)), 38, 120)),
        "T-Stage": t_value,
        "N-Stage": n_stage,
        "Ｍ-Stage": m_stage,
        "Histopathological grading": grading if rng.random() < 0.4 else None,
        "Smoking History": int(rng.random() < _sigmoid(2.0 * b1)),
    }


def _body(rng: np.random.Generator, size: int, depth: int):
    """Chest-like HU volume ``[D, H, W]`` and the two lung masks."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    s = size / 128.0
    body = ((xx - c) / (58 * s)) ** 2 + ((yy - c) / (44 * s)) ** 2 <= 1
    lungs = []
    for side in (-1, 1):
        cx = c + side * 25 * s + rng.normal(0, 1.0)
        lungs.append(((xx - cx) / (19 * s)) ** 2 + ((yy - c + 2 * s) / (32 * s)) ** 2 <= 1)
    lung = lungs[0] | lungs[1]
    spine = (xx - c) ** 2 + (yy - (c + 34 * s)) ** 2 <= (7 * s) ** 2
    plane = np.full((size, size), -1000.0, np.float32)
    plane[body] = 40.0
    plane[lung] = -860.0
    plane[spine] = 700.0
    vol = np.repeat(plane[None], depth, axis=0)
    # Vessels: bright tubes running through the slices, lesion-sized distractors.
    for _ in range(int(rng.integers(4, 8))):
        lung_pts = np.argwhere(lung)
        y0, x0 = lung_pts[int(rng.integers(len(lung_pts)))]
        dy, dx = rng.normal(0, 0.6, size=2)
        r = rng.uniform(0.8, 1.8) * s
        for k in range(depth):
            yk, xk = y0 + dy * k, x0 + dx * k
            vol[k][((yy - yk) ** 2 + (xx - xk) ** 2 <= r * r) & lung] = 30.0
    vol += rng.normal(0, 18.0, size=vol.shape).astype(np.float32)
    return vol, lungs


def _add_lesion(rng, vol, lungs, a, spacing):
    """Insert an ellipsoidal lesion; returns its centre (k, y, x) and radii in voxels."""
    dz, dy, _ = spacing
    depth, size, _ = vol.shape
    radius_mm = float(np.clip(8.0 + 1.5 * a[1] + rng.normal(0, 0.4), 5.0, 13.0))
    core_hu = float(np.clip(-260.0 + 170.0 * (a[0] + rng.normal(0, 0.2)), -700.0, 150.0))
    ry, rz = radius_mm / dy, radius_mm / dz
    lung = lungs[int(rng.integers(2))]
    pts = np.argwhere(lung)
    # Keep the lesion inside the lung, and (when the lung is wide enough) away from the
    # chest wall so that a small crop around it is mostly lung: the wall and the spine
    # are brighter than any lesion and would otherwise dominate a max-pooled feature.
    reach = max(ry + 1, 9.0 * size / 128)
    for tries in range(400):
        cy, cx = pts[int(rng.integers(len(pts)))].astype(float)
        m = reach if tries < 300 else ry + 1
        y0, y1, x0, x1 = int(cy - m), int(cy + m), int(cx - m), int(cx + m)
        if y0 >= 0 and x0 >= 0 and y1 < size and x1 < size and lung[y0:y1 + 1, x0:x1 + 1].all():
            break
    lo = max(2, int(np.ceil(rz)))
    ck = float(rng.integers(lo, max(lo + 1, depth - lo)))
    kk, yy, xx = np.mgrid[0:depth, 0:size, 0:size].astype(np.float32)
    dist = np.sqrt(((kk - ck) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / ry) ** 2)
    weight = 1.0 / (1.0 + np.exp((dist - 1.0) * 6.0))  # soft edge, ~1 voxel wide
    texture = rng.normal(0, 20.0, size=vol.shape).astype(np.float32)
    vol[:] = vol * (1 - weight) + (core_hu + texture) * weight
    return (ck, cy, cx), (rz, ry)


def _uid(seed: int, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def _file_meta(sop_class: str, sop_uid: str, explicit: bool):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    return meta


def _base_dataset(pat: dict, series: dict, sop_class: str, sop_uid: str, instance: int):
    from pydicom.dataset import FileDataset

    ds = FileDataset(None, {}, file_meta=_file_meta(sop_class, sop_uid, pat["explicit"]),
                     preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = pat["study_uid"]
    ds.SeriesInstanceUID = series["uid"]
    ds.FrameOfReferenceUID = pat["frame_uid"]
    ds.PatientID = f"Lung_Dx-{pat['id']}"
    ds.PatientName = f"Lung_Dx-{pat['id']}"
    ds.StudyDate = pat["date"].strftime("%Y%m%d")
    ds.StudyDescription = "Chest"
    ds.SeriesDescription = series["description"]
    ds.SeriesNumber = series["number"]
    ds.InstanceNumber = instance
    ds.Modality = series["modality"]
    ds.Manufacturer = "PHANTOM"
    return ds


def _save(ds, path: Path, explicit: bool) -> int:
    ds.save_as(path, implicit_vr=not explicit, little_endian=True, enforce_file_format=True)
    return path.stat().st_size


def _write_ct_series(pat, series, vol, spacing, origin, folder: Path, names, slope) -> list[str]:
    """One CT Image Storage file per slice; returns the SOPInstanceUIDs in z order."""
    depth, size, _ = vol.shape
    uids = []
    for k in range(depth):
        # Real series: InstanceNumber 1 is the top slice (largest z), so z falls with it.
        instance = depth - k
        uid = _uid(pat["seed"], pat["id"], series["uid"], "slice", k, series.get("phase", 0))
        ds = _base_dataset(pat, series, CT_IMAGE_STORAGE, uid, instance)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{origin[0]:.4f}", f"{origin[1]:.4f}", f"{origin[2] + k * spacing[0]:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[2]:.6f}"]
        ds.SliceThickness = f"{spacing[0]:.3f}"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        stored = np.round((vol[k] + 1024.0) / slope)
        if pat["signed"]:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            arr = np.clip(stored, -32768, 32767).astype(np.int16)
        else:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            arr = np.clip(stored, 0, 4095).astype(np.uint16)
        ds.PixelData = arr.tobytes()
        series["size"] += _save(ds, folder / names[k], pat["explicit"])
        uids.append(uid)
    return uids


def _write_secondary_capture(pat, series, vol, folder: Path, n: int) -> list[str]:
    """Fused PET/CT screenshots: RGB, Secondary Capture, and Modality=CT (a trap)."""
    depth = vol.shape[0]
    uids = []
    for i in range(n):
        k = int(round((i + 0.5) * depth / n))
        uid = _uid(pat["seed"], pat["id"], "sc", i)
        ds = _base_dataset(pat, series, SECONDARY_CAPTURE, uid, i + 1)
        gray = np.clip((vol[min(k, depth - 1)] + 1000.0) / 1400.0 * 255.0, 0, 255).astype(np.uint8)
        rgb = np.stack([gray, (gray * 0.6).astype(np.uint8), gray // 3], axis=-1)
        ds.ConversionType = "WSD"
        ds.Rows, ds.Columns = gray.shape
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
        series["size"] += _save(ds, folder / f"1-{i + 1:02d}.dcm", pat["explicit"])
        uids.append(uid)
    return uids


def _write_pet(pat, series, vol, spacing, origin, folder: Path, rng) -> None:
    """Low-resolution PET (PET Image Storage, BQML, per-slice RescaleSlope)."""
    depth, size, _ = vol.shape
    f = 4
    small = vol[::2, : size - size % f, : size - size % f]
    small = small.reshape(small.shape[0], size // f, f, size // f, f).mean(axis=(2, 4))
    activity = np.clip((small + 200.0) * 8.0, 0, None) + rng.gamma(2.0, 150.0, size=small.shape)
    x0 = origin[0] + (f - 1) / 2 * spacing[2]
    y0 = origin[1] + (f - 1) / 2 * spacing[1]
    for k in range(small.shape[0]):
        uid = _uid(pat["seed"], pat["id"], "pet", k)
        ds = _base_dataset(pat, series, PET_IMAGE_STORAGE, uid, small.shape[0] - k)
        slope = float(activity[k].max() / 30000.0) or 1.0
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{origin[2] + 2 * k * spacing[0]:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [f"{spacing[1] * f:.6f}", f"{spacing[2] * f:.6f}"]
        ds.SliceThickness = f"{2 * spacing[0]:.3f}"
        ds.Rows, ds.Columns = activity[k].shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope = f"{slope:.8g}"
        ds.RescaleIntercept = 0
        ds.Units = "BQML"
        ds.PixelData = np.round(activity[k] / float(ds.RescaleSlope)).astype(np.uint16).tobytes()
        series["size"] += _save(ds, folder / f"1-{k + 1:02d}.dcm", pat["explicit"])


def _series_dir(study_dir: Path, series: dict, naming: str) -> Path:
    """``2.000000-5mm-40805`` (descriptive) or the raw SeriesInstanceUID (classic)."""
    if naming == "classic":
        return study_dir / series["uid"]
    return study_dir / f"{series['number']:.6f}-{series['description']}-{series['uid'][-5:]}"


def _file_names(n: int, rng: np.random.Generator | None) -> list[str]:
    """``1-01.dcm`` ... in slice order (z ascending); shuffled when ``rng`` is given."""
    width = 2 if n < 100 else 3
    names = [f"1-{j + 1:0{width}d}.dcm" for j in range(n)][::-1]  # 1-01 is the top slice
    if rng is not None:
        names = [names[j] for j in rng.permutation(n)]
    return names


def _xml(boxes, size: int, name: str) -> str:
    objects = "".join(_XML_OBJECT.format(name=name, x0=x0, y0=y0, x1=x1, y1=y1)
                      for x0, y0, x1, y1 in boxes)
    return _XML.format(w=size, h=size, objects=objects)


def make_phantom(
    root: str | os.PathLike,
    n_patients: int = 240,
    seed: int = 0,
    *,
    size: int = 128,
    slices: int = 20,
    naming: str = "descriptive",
    shuffle_names: bool = False,
    pet_fraction: float = 0.0,
    second_ct_fraction: float = 0.2,
    duplicate_z_patients: int = 0,
    corrupt_files: int = 0,
    drop_clinical_rows: int = 0,
    unknown_stage_rows: int = 0,
    empty_annotation_folders: int = 0,
    clinical_format: str = "xlsx",
) -> PhantomPaths:
    """Write a small synthetic Lung-PET-CT-Dx download.

    Args:
        root: output folder (created; existing phantom files are overwritten).
        n_patients: number of patients; letters cycle ``A G A B G A E A G B``.
        seed: everything (pixels, UIDs, clinical values) is a function of it.
        size: slice size in pixels (square).
        slices: CT slices per patient (2.5 mm apart).
        naming: ``"descriptive"`` (``04-04-2007-NA-Chest-07990``) or ``"classic"``
            (raw UIDs) folder names.
        shuffle_names: give slice files names unrelated to their z order.
        pet_fraction: share of patients with a PET series.
        second_ct_fraction: share of patients with a second CT reconstruction.
        duplicate_z_patients: patients whose CT series repeats every position (a second
            "phase" at the same z).
        corrupt_files: CT files overwritten with garbage (the first slice of the first
            patients' series, so the volume stays usable).
        drop_clinical_rows: patients (the last ones) left out of the clinical sheet.
        unknown_stage_rows: rows whose T stage is set to the unknown string ``"5x"``.
        empty_annotation_folders: patients whose annotation folder is left empty.
        clinical_format: ``"xlsx"`` or ``"csv"``.

    Returns:
        The :class:`PhantomPaths`.

    Raises:
        ValueError: ``n_patients < 1``, ``size < 32``, ``slices < 4``, an unknown
            ``naming`` or ``clinical_format``, or a fraction outside [0, 1].

    Example:
        >>> paths = make_phantom("/tmp/phantom", n_patients=8, seed=0)  # doctest: +SKIP
        >>> sorted(paths.labels.values()).count("A")  # doctest: +SKIP
        4
    """
    import pandas as pd

    if n_patients < 1:
        raise ValueError(f"n_patients: must be >= 1, got {n_patients}")
    if size < 32:
        raise ValueError(f"size: must be >= 32, got {size}")
    if slices < 4:
        raise ValueError(f"slices: must be >= 4, got {slices}")
    if naming not in ("descriptive", "classic"):
        raise ValueError(f"naming: expected 'descriptive' or 'classic', got {naming!r}")
    if clinical_format not in ("xlsx", "csv"):
        raise ValueError(f"clinical_format: expected 'xlsx' or 'csv', got {clinical_format!r}")
    for name, v in (("pet_fraction", pet_fraction), ("second_ct_fraction", second_ct_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: must be in [0, 1], got {v}")

    root = Path(root).expanduser()
    coll = root / COLLECTION
    ann_root = root / ANNOTATION_ARCHIVE / "Annotation"
    counters = {k: 0 for k in "ABEG"}
    rows, meta_rows, labels = [], [], {}
    first_ct_files: list[Path] = []
    for i in range(n_patients):
        letter = _LETTER_CYCLE[i % len(_LETTER_CYCLE)]
        counters[letter] += 1
        # One generator per patient: a patient's pixels and values do not depend on the
        # options (or the number) of the patients before it.
        rng = np.random.default_rng([seed, i])
        pid = f"{letter}{counters[letter]:04d}"
        labels[pid] = letter
        a, b = _latents(rng, letter)
        ps = float(rng.uniform(1.25, 1.6))
        spacing = (2.5, ps, ps)
        origin = (-(size / 2) * ps, -(size / 2) * ps - 20.0, float(-200.0 - rng.integers(0, 40) * 2.5))
        vol, lungs = _body(rng, size, slices)
        (ck, cy, cx), (rz, ry) = _add_lesion(rng, vol, lungs, a, spacing)
        pat = {
            "id": pid, "seed": seed,
            "study_uid": _uid(seed, pid, "study"), "frame_uid": _uid(seed, pid, "frame"),
            "date": date(2006, 1, 1) + timedelta(days=int(rng.integers(0, 3000))),
            "explicit": bool(i % 2), "signed": bool(i % 3 == 0),
        }
        slope = 0.5 if i % 5 == 4 else 1.0
        patient_dir = coll / f"Lung_Dx-{pid}"
        study_name = (f"{pat['date']:%m-%d-%Y}-NA-Chest-{pat['study_uid'][-5:]}"
                      if naming == "descriptive" else pat["study_uid"])
        study_dir = patient_dir / study_name

        n_ct = 2 if rng.random() < second_ct_fraction else 1
        annotated = int(rng.integers(n_ct))
        ct_uids = None
        all_series = []
        for s_i in range(n_ct):
            series = {
                "uid": _uid(seed, pid, "ct", s_i), "number": 2 + s_i, "modality": "CT",
                "description": "5mm" if s_i == 0 else "ThoraxRoutine  8.0.0  B70f",
                "size": 0, "count": slices, "sop_class": CT_IMAGE_STORAGE, "sop_name": "CT Image Storage",
            }
            folder = _series_dir(study_dir, series, naming)
            folder.mkdir(parents=True, exist_ok=True)
            recon = vol if s_i == 0 else vol + rng.normal(0, 10.0, size=vol.shape).astype(np.float32)
            names = _file_names(slices, rng if shuffle_names else None)
            uids = _write_ct_series(pat, series, recon, spacing, origin, folder, names, slope)
            if s_i == 0:
                first_ct_files.append(folder / names[0])
            if i < duplicate_z_patients and s_i == 0:
                # A second phase at the same positions: same z, new UIDs and file names.
                series["phase"] = 1
                dup_names = [f"2-{j + 1:02d}.dcm" for j in range(slices)]
                _write_ct_series(pat, series, recon + 5.0, spacing, origin, folder, dup_names, slope)
                series["count"] *= 2
            if s_i == annotated:
                ct_uids = uids
            all_series.append((series, folder))
        sc = {"uid": _uid(seed, pid, "sc"), "number": 1001, "modality": "CT",
              "description": "PET-CT fused", "size": 0, "count": 3,
              "sop_class": SECONDARY_CAPTURE, "sop_name": "Secondary Capture Image Storage"}
        sc_dir = _series_dir(study_dir, sc, naming)
        sc_dir.mkdir(parents=True, exist_ok=True)
        sc_uids = _write_secondary_capture(pat, sc, vol, sc_dir, 3)
        all_series.append((sc, sc_dir))
        if rng.random() < pet_fraction:
            pet = {"uid": _uid(seed, pid, "pet"), "number": 4, "modality": "PT",
                   "description": "PET WB", "size": 0, "count": len(range(0, slices, 2)),
                   "sop_class": PET_IMAGE_STORAGE, "sop_name": "Positron Emission Tomography Image Storage"}
            pet_dir = _series_dir(study_dir, pet, naming)
            pet_dir.mkdir(parents=True, exist_ok=True)
            _write_pet(pat, pet, vol, spacing, origin, pet_dir, rng)
            all_series.append((pet, pet_dir))

        # Annotations: one XML per slice the lesion crosses, plus one on a fused image.
        ann_dir = ann_root / pid
        ann_dir.mkdir(parents=True, exist_ok=True)
        # The last patients keep an empty folder (the archive has some).
        if i < n_patients - empty_annotation_folders:
            name = letter if rng.random() < 0.8 else letter.lower()
            for k in range(slices):
                half = ry * np.sqrt(max(0.0, 1.0 - ((k - ck) / rz) ** 2)) * 0.9
                if half < 1.0:
                    continue
                box = (int(cx - half), int(cy - half), int(np.ceil(cx + half)), int(np.ceil(cy + half)))
                (ann_dir / f"{ct_uids[k]}.xml").write_text(_xml([box], size, name))
            (ann_dir / f"{sc_uids[1]}.xml").write_text(
                _xml([(int(cx) - 5, int(cy) - 5, int(cx) + 5, int(cy) + 5)], size, name))

        for series, folder in all_series:
            meta_rows.append({
                "Series UID": series["uid"], "Collection": COLLECTION, "3rd Party Analysis": "NO",
                "Data Description URI": "https://doi.org/10.7937/TCIA.2020.NNC2-0461",
                "Subject ID": f"Lung_Dx-{pid}", "Study UID": pat["study_uid"],
                "Study Description": "Chest", "Study Date": f"{pat['date']:%m-%d-%Y}",
                "Series Description": series["description"], "Manufacturer": "PHANTOM",
                "Modality": series["modality"], "SOP Class Name": series["sop_name"],
                "SOP Class UID": series["sop_class"], "Number of Images": series["count"],
                "File Size": f"{series['size'] / 1e6:.2f} MB",
                "File Location": "./" + folder.relative_to(root).as_posix(),
                "Download Timestamp": "2026-01-01T00:00:00",
            })
        row = {"No.": i + 1, "NewPatientID": pid}
        row.update(_clinical_row(rng, b))
        if rng.random() < 0.02:
            row["Age"] = None
        if rng.random() < 0.03:
            row["weight (kg)"] = None
        if i < unknown_stage_rows:
            row["T-Stage"] = "5x"
        if i < n_patients - drop_clinical_rows:
            rows.append(row)

    # Corrupt files: overwrite one slice of the first patients' CT series with garbage.
    for p in first_ct_files[:corrupt_files]:
        p.write_bytes(b"not a dicom file" + bytes(64))

    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(meta_rows)
    frame = pd.DataFrame(rows, columns=["No.", "NewPatientID", "Sex", "Age", "weight (kg)", "T-Stage",
                                        "N-Stage", "Ｍ-Stage", "Histopathological grading",
                                        "Smoking History"])
    clinical = root / (CLINICAL_NAME if clinical_format == "xlsx" else CLINICAL_NAME.replace(".xlsx", ".csv"))
    if clinical_format == "xlsx":
        frame.to_excel(clinical, index=False)
    else:
        frame.to_csv(clinical, index=False)
    return PhantomPaths(root=root, data_dir=root, annotations=root / ANNOTATION_ARCHIVE,
                        clinical=clinical, metadata=root / "metadata.csv", labels=labels)

"""Walking a Lung-PET-CT-Dx download: CT series, PET series and lesion boxes per patient.

The tree is walked and every decision is made from DICOM headers, so descriptive
(``04-04-2007-NA-Chest-07990``) and classic (raw UID) folder names both work, and file
names (which repeat across series) are never used as keys.
"""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mmscale.data.dicom import (
    CT_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    SECONDARY_CAPTURE,
    read_header,
)

__all__ = [
    "CLASS_NAMES",
    "Box",
    "PatientRecord",
    "ScanSummary",
    "normalize_patient_id",
    "read_annotations",
    "scan_tcia",
]

#: Histology by the patient ID letter: the label never comes from the XML.
CLASS_NAMES = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}

_ID_RE = re.compile(r"^(?:Lung_Dx-)?([ABEG])(\d{4})$", re.IGNORECASE)
_SOP_NAMES = {
    CT_IMAGE_STORAGE: "CT Image Storage",
    PET_IMAGE_STORAGE: "PET Image Storage",
    SECONDARY_CAPTURE: "Secondary Capture",
    # Multi-frame classes are not read (one file per volume); named so the summary says so.
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage (multi-frame, not read)",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage (multi-frame, not read)",
}


def normalize_patient_id(value: str) -> str | None:
    """``"Lung_Dx-A0001"`` or ``"A0001"`` -> ``"A0001"``; ``None`` when it is neither.

    Example:
        >>> normalize_patient_id("Lung_Dx-G0012")
        'G0012'
    """
    m = _ID_RE.match(str(value).strip())
    return f"{m.group(1).upper()}{m.group(2)}" if m else None


@dataclass(frozen=True)
class Box:
    """One annotated box on one slice, in pixel coordinates of that slice.

    Attributes:
        sop_instance_uid: the slice it was drawn on.
        xmin, ymin, xmax, ymax: VOC box corners (pixels, inclusive as written).

    Example:
        >>> Box("1.2.3", 286.0, 310.0, 355.0, 402.0).area
        6348.0
    """

    sop_instance_uid: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def area(self) -> float:
        """Box area in pixels (0 for degenerate boxes)."""
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)


@dataclass
class PatientRecord:
    """What the scan found for one patient.

    Attributes:
        patient_id: normalised ID (``"A0001"``).
        label: class letter, from the ID (``"A"``, ``"B"``, ``"E"`` or ``"G"``).
        ct_files: files of the chosen CT series (CT Image Storage only).
        ct_series_uid: its SeriesInstanceUID.
        ct_candidates: number of CT series the patient has.
        pet_files: files of the patient's PET series, ``[]`` if none.
        boxes: boxes that fall on a slice of the chosen CT series.
        notes: what was odd about this patient (reported, never silently dropped).

    Example:
        >>> rec = PatientRecord("G0001", "G", ["1-01.dcm"], "1.2.3")
        >>> CLASS_NAMES[rec.label]
        'squamous cell carcinoma'
    """

    patient_id: str
    label: str
    ct_files: list[str]
    ct_series_uid: str
    ct_candidates: int = 1
    pet_files: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ScanSummary:
    """Counts and reasons for everything a scan read or skipped.

    Attributes:
        files: DICOM files seen.
        series: series counted by SOP class name (``"CT Image Storage"``,
            ``"Secondary Capture"``, ``"PET Image Storage"``, or the raw UID).
        skipped: ``(path, reason)`` for every file or folder left out.
        patients_without_ct: patient IDs that have DICOM files but no CT series.
        patients_without_boxes: patients with a CT series but no usable box.
        annotation_files: XML files read.
        annotations_unmatched: XML files whose SOPInstanceUID is not a slice of the
            chosen CT series (a third of the real archive points at Secondary Capture).
        empty_annotation_folders: annotation folders with no XML file.
        zero_area_boxes: degenerate boxes dropped.
        bad_boxes: boxes with missing, non-numeric, non-finite or absurd corners
            dropped (each also in ``skipped`` with its file).
        empty_patient_folders: ``(folder, reason)`` for each patient folder that
            yielded no patient (no DICOM file, nothing readable, no CT series).

    Example:
        >>> s = ScanSummary(files=3)
        >>> s.skipped.append(("x/1-01.dcm", "unreadable DICOM: InvalidDicomError"))
        >>> s.skip_reasons
        Counter({'unreadable DICOM': 1})
    """

    files: int = 0
    series: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    patients_without_ct: list[str] = field(default_factory=list)
    patients_without_boxes: list[str] = field(default_factory=list)
    annotation_files: int = 0
    annotations_unmatched: int = 0
    empty_annotation_folders: list[str] = field(default_factory=list)
    zero_area_boxes: int = 0
    bad_boxes: int = 0
    empty_patient_folders: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skip_reasons(self) -> Counter:
        """Skipped entries counted by reason (text before the first ``:``)."""
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def report(self) -> str:
        """A short human-readable account of the scan."""
        lines = [f"{self.files} DICOM files; series: " + ", ".join(
            f"{n} {name}" for name, n in sorted(self.series.items()))]
        for reason, n in sorted(self.skip_reasons.items()):
            lines.append(f"skipped {n}: {reason}")
        if self.patients_without_ct:
            lines.append(f"{len(self.patients_without_ct)} patient(s) without a CT series: "
                         + ", ".join(self.patients_without_ct[:10]))
        if self.patients_without_boxes:
            lines.append(f"{len(self.patients_without_boxes)} patient(s) without a usable box "
                         "(centre crop): " + ", ".join(self.patients_without_boxes[:10]))
        if self.empty_patient_folders:
            lines.append(f"{len(self.empty_patient_folders)} patient folder(s) yielded no patient:")
            lines += [f"  {folder}: {why}" for folder, why in self.empty_patient_folders]
        lines.append(f"{self.annotation_files} annotation files, {self.annotations_unmatched} not "
                     f"on a chosen CT slice, {self.zero_area_boxes} zero-area box(es) dropped, "
                     f"{self.bad_boxes} bad box(es) dropped")
        if self.empty_annotation_folders:
            lines.append(f"{len(self.empty_annotation_folders)} empty annotation folder(s): "
                         + ", ".join(self.empty_annotation_folders[:10]))
        return "\n".join(lines)


_MAX_CORNER = 65535.0  # DICOM Rows/Columns are 16-bit: a corner beyond this is no pixel


def _parse_annotations(path: Path) -> tuple[list[Box], list[str]]:
    """Boxes of one VOC file, and a reason for each ``<object>`` box left out.

    Raises:
        ValueError: the file cannot be read or parsed (the message names it).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"path: {str(path)!r} is not valid XML ({err})") from err
    except (OSError, LookupError, UnicodeError, ValueError) as err:
        # A folder named *.xml, a dangling link, an unknown or wrong declared encoding.
        raise ValueError(f"path: {str(path)!r} cannot be read as XML "
                         f"({type(err).__name__}: {err})") from err
    uid = path.stem
    boxes, bad = [], []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        if bb is None:
            bad.append(f"object {i}: no <bndbox>")
            continue
        texts = [(bb.findtext(k) or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            coords = [float(t) for t in texts]
        except ValueError:
            bad.append(f"object {i}: non-numeric box corner(s) {texts}")
            continue
        if not all(math.isfinite(v) and abs(v) <= _MAX_CORNER for v in coords):
            bad.append(f"object {i}: box corner(s) {texts} not finite or beyond "
                       f"+-{_MAX_CORNER:g} px")
            continue
        boxes.append(Box(uid, *coords))
    return boxes, bad


def read_annotations(path: str | os.PathLike) -> list[Box]:
    """Parse one LabelImg / PASCAL VOC file named ``<SOPInstanceUID>.xml``.

    The ``<name>`` of each object is ignored (it is unreliable in the archive). A box
    whose corners are missing, non-numeric, non-finite or beyond 65535 pixels is left
    out with a warning naming the file; the file's other boxes are kept.

    Args:
        path: the XML file.

    Returns:
        One :class:`Box` per usable ``<object>`` (zero-area boxes included).

    Raises:
        ValueError: the file cannot be read (a folder, a dangling link), is not
            well-formed XML, or declares an unknown encoding; the message names it.

    Example:
        >>> boxes = read_annotations("Annotation/A0001/1.3.6.1.4.1.14519.xml")  # doctest: +SKIP
    """
    path = Path(path)
    boxes, bad = _parse_annotations(path)
    for why in bad:
        warnings.warn(f"{str(path)!r}: box left out, {why}", stacklevel=2)
    return boxes


def _walk(root: Path, summary: ScanSummary | None = None):
    """``os.walk`` that follows symlinked folders, each real folder once (no loops)."""
    seen: set[tuple[int, int]] = set()

    def onerror(err: OSError) -> None:
        if summary is not None:
            warnings.warn(f"cannot list {err.filename!r}: {err.strerror}", stacklevel=4)
            summary.skipped.append((str(err.filename), f"unlistable folder: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a link back up the tree, or a second link to one folder
            if summary is not None:
                summary.skipped.append((dirpath, "folder already scanned (symlink loop or "
                                                 "second link to it)"))
            dirnames[:] = []
            continue
        seen.add(key)
        yield dirpath, dirnames, filenames


def _find_annotation_folders(root: Path, summary: ScanSummary) -> dict[str, Path]:
    """Patient folders (``A0001`` or ``Lung_Dx-A0001``) under an annotation root."""
    found = {}
    for dirpath, dirnames, _ in _walk(root, summary):
        for d in dirnames:
            pid = normalize_patient_id(d)
            if pid is not None:
                found.setdefault(pid, Path(dirpath) / d)
    pid = normalize_patient_id(root.name)
    if pid is not None:  # the caller pointed straight at one patient's folder
        found.setdefault(pid, root)
    return found


def _dicom_folders(root: Path, summary: ScanSummary, patient_folders: dict[str, list[Path]]):
    for dirpath, _, filenames in _walk(root, summary):
        pid = normalize_patient_id(Path(dirpath).name)
        if pid is not None:
            patient_folders[pid].append(Path(dirpath))
        files = sorted(f for f in filenames if f.lower().endswith(".dcm"))
        if files:
            yield Path(dirpath), [str(Path(dirpath) / f) for f in files]


def _header(path: str, summary: ScanSummary) -> dict | None:
    """The header of one file, or ``None`` (reported) when it is unreadable or lacks UIDs."""
    try:
        h = read_header(path)
    except Exception as err:  # corrupt files and values pydicom cannot convert raise many types
        warnings.warn(f"skipping unreadable DICOM file {path!r}: {err}", stacklevel=3)
        summary.skipped.append((path, f"unreadable DICOM: {type(err).__name__}"))
        return None
    for key, name in (("sop_class_uid", "SOPClassUID"), ("sop_instance_uid", "SOPInstanceUID"),
                      ("series_instance_uid", "SeriesInstanceUID")):
        if not h[key]:
            warnings.warn(f"skipping DICOM file {path!r}: no {name}", stacklevel=3)
            summary.skipped.append((path, f"missing UID: no {name}"))
            return None
    return h


def _patient_id_from_path(folder: Path, root: Path) -> str | None:
    for part in folder.relative_to(root).parts if folder != root else ():
        pid = normalize_patient_id(part)
        if pid is not None:
            return pid
    return None


def _series_rank(boxes_by_uid: dict, item: tuple) -> tuple[int, int]:
    """Sort key of a CT series: (annotated slices, slices)."""
    uids = {h["sop_instance_uid"] for h, _ in item[1]}
    return (sum(u in boxes_by_uid for u in uids), len(uids))


def scan_tcia(
    root: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    *,
    progress: bool = False,
) -> tuple[dict[str, PatientRecord], ScanSummary]:
    """Find each patient's CT series, PET series and lesion boxes in a TCIA download.

    Every folder holding ``*.dcm`` files is classified by the SOPClassUID of its files:
    a CT series is CT Image Storage only (Secondary Capture series carry
    ``Modality=CT`` and are skipped, as are PET series except as an optional channel).
    Folders are assumed to hold one series each (NBIA layout); all headers of CT
    folders are read, only the first readable file of other folders. When a patient has
    several CT series, the one with the most annotated slices wins, then the one with
    the most slices. Boxes come from ``<annotations>/**/<ID>/<SOPInstanceUID>.xml``;
    the label comes from the patient ID letter. Symlinked folders are followed, each
    real folder once (a link loop is reported, not followed). Nothing is dropped
    silently: unreadable files, files without UIDs, bad annotation files and boxes,
    and every patient folder that yields no patient are listed in the summary (with a
    warning); one bad entry never stops the scan.

    Args:
        root: the download folder (holding ``Lung-PET-CT-Dx/`` or the patient folders).
        annotations: the annotation archive folder (or its ``Annotation`` folder);
            ``None`` for no boxes (every patient gets a centre crop).
        progress: show a tqdm bar over folders.

    Returns:
        ``(patients, summary)``: records keyed by patient ID (sorted), and a
        :class:`ScanSummary` of everything skipped and why.

    Raises:
        ValueError: ``root`` does not exist, holds no DICOM file, or holds no CT Image
            Storage series (not a TCIA tree); ``annotations`` is not a directory.

    Example:
        >>> patients, summary = scan_tcia("~/tcia", "~/tcia/Annotation")  # doctest: +SKIP
        >>> print(summary.report())  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"root: {str(root)!r} is not a directory")
    if annotations is not None:
        annotations = Path(annotations).expanduser()
        if not annotations.is_dir():
            raise ValueError(f"annotations: {str(annotations)!r} is not a directory")
    summary = ScanSummary()
    patient_folders: dict[str, list[Path]] = defaultdict(list)
    folders = list(_dicom_folders(root, summary, patient_folders))
    if not folders:
        raise ValueError(
            f"root: {str(root)!r} is not a TCIA download: no *.dcm file anywhere below it "
            "(expected <root>/Lung-PET-CT-Dx/Lung_Dx-A0001/<study>/<series>/1-01.dcm)"
        )
    if progress:
        from tqdm.auto import tqdm

        folders = tqdm(folders, desc="scan DICOM folders", unit="folder")

    # patient -> series uid -> list of (header, path); PET kept per patient.
    ct_series: dict[str, dict[str, list[tuple[dict, str]]]] = defaultdict(lambda: defaultdict(list))
    pet_files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    seen_patients: set[str] = set()
    for folder, files in folders:
        summary.files += len(files)
        first, first_i = None, 0
        for i, path in enumerate(files):
            first = _header(path, summary)
            if first is not None:
                first_i = i
                break
        if first is None:
            continue
        header_pid = normalize_patient_id(first["patient_id"])
        path_pid = _patient_id_from_path(folder, root)
        if header_pid and path_pid and header_pid != path_pid:
            # A file filed under the wrong patient: attributing it to either could be wrong.
            why = (f"PatientID {first['patient_id']!r} in the header but the folder belongs to "
                   f"{path_pid}")
            warnings.warn(f"skipping series folder {str(folder)!r}: {why}", stacklevel=2)
            summary.skipped.append((str(folder), f"patient mismatch: {why}"))
            continue
        pid = header_pid or path_pid
        if pid is None:
            warnings.warn(f"skipping series folder {str(folder)!r}: no Lung_Dx patient ID in header "
                          "or path", stacklevel=2)
            summary.skipped.append((str(folder), "no Lung_Dx patient ID in header or path"))
            continue
        seen_patients.add(pid)
        sop = first["sop_class_uid"]
        summary.series[_SOP_NAMES.get(sop, sop or "unknown SOP class")] += 1
        if sop == PET_IMAGE_STORAGE:
            pet_files[pid][first["series_instance_uid"]].extend(files[first_i:])
            continue
        if sop != CT_IMAGE_STORAGE:
            why = ("Secondary Capture series (fused PET/CT, says Modality=CT)"
                   if sop == SECONDARY_CAPTURE else
                   f"series of SOP class {_SOP_NAMES.get(sop, sop or '?')}")
            summary.skipped.append((str(folder), f"{why}, not a CT volume"))
            continue
        ct_series[pid][first["series_instance_uid"]].append((first, files[first_i]))
        for path in files[first_i + 1:]:
            h = _header(path, summary)
            if h is None:
                continue
            if h["sop_class_uid"] != CT_IMAGE_STORAGE:
                summary.skipped.append((path, f"file of SOP class {h['sop_class_uid']} in a CT series"))
                continue
            other = normalize_patient_id(h["patient_id"])
            if other is not None and other != pid:
                why = f"PatientID {h['patient_id']!r} in a series of {pid}"
                warnings.warn(f"skipping DICOM file {path!r}: {why}", stacklevel=2)
                summary.skipped.append((path, f"patient mismatch: {why}"))
                continue
            ct_series[pid][h["series_instance_uid"]].append((h, path))

    for pid, dirs in sorted(patient_folders.items()):
        if pid in ct_series:
            continue
        why = ("DICOM files but no CT Image Storage series" if pid in seen_patients
               else "no readable DICOM file")
        for d in dirs:
            has_dcm = any(f.lower().endswith(".dcm") for _, _, fs in _walk(d) for f in fs)
            reason = why if has_dcm else "no *.dcm file"
            warnings.warn(f"patient folder {str(d)!r} yields no patient: {reason}", stacklevel=2)
            summary.empty_patient_folders.append((str(d), reason))
    if not ct_series:
        raise ValueError(
            f"root: {str(root)!r} holds {summary.files} DICOM file(s) but no CT Image Storage "
            f"series ({dict(summary.series)}); is this a Lung-PET-CT-Dx download?"
        )

    ann_folders = _find_annotation_folders(annotations, summary) if annotations is not None else {}
    patients: dict[str, PatientRecord] = {}
    for pid in sorted(seen_patients):
        if pid not in ct_series:
            summary.patients_without_ct.append(pid)
            continue
        boxes_by_uid: dict[str, list[Box]] = defaultdict(list)
        n_xml = 0
        folder = ann_folders.get(pid)
        if folder is not None:
            try:
                xmls = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml")
            except OSError as err:
                warnings.warn(f"cannot list annotation folder {str(folder)!r}: {err}", stacklevel=2)
                summary.skipped.append((str(folder), f"unlistable folder: {err}"))
                xmls = []
            n_xml = len(xmls)
            summary.annotation_files += n_xml
            if not xmls:
                summary.empty_annotation_folders.append(pid)
            for xml in xmls:
                try:
                    found, bad = _parse_annotations(xml)
                except ValueError as err:
                    warnings.warn(f"skipping annotation: {err}", stacklevel=2)
                    summary.skipped.append((str(xml), f"bad annotation: {err}"))
                    continue
                for why in bad:
                    warnings.warn(f"{str(xml)!r}: box left out, {why}", stacklevel=2)
                    summary.skipped.append((str(xml), f"bad box: {why}"))
                    summary.bad_boxes += 1
                for box in found:
                    if box.area <= 0:
                        summary.zero_area_boxes += 1
                        continue
                    boxes_by_uid[box.sop_instance_uid].append(box)

        series_uid, members = max(ct_series[pid].items(),
                                  key=functools.partial(_series_rank, boxes_by_uid))
        uids = {h["sop_instance_uid"] for h, _ in members}
        boxes = [b for u in sorted(uids) for b in boxes_by_uid.get(u, [])]
        matched_xml = sum(1 for u in boxes_by_uid if u in uids)
        summary.annotations_unmatched += n_xml - matched_xml
        record = PatientRecord(
            patient_id=pid,
            label=pid[0],
            ct_files=[p for _, p in members],
            ct_series_uid=series_uid,
            ct_candidates=len(ct_series[pid]),
            pet_files=max(pet_files[pid].values(), key=len) if pet_files.get(pid) else [],
            boxes=boxes,
        )
        if folder is None:
            record.notes.append("no annotation folder")
        elif n_xml == 0:
            record.notes.append("empty annotation folder")
        elif not boxes:
            record.notes.append(f"none of {n_xml} annotation file(s) is on a slice of the CT series")
        if len(pet_files.get(pid, {})) > 1:
            record.notes.append(f"{len(pet_files[pid])} PET series; the one with the most files is used")
        if not boxes:
            summary.patients_without_boxes.append(pid)
        patients[pid] = record
    return patients, summary

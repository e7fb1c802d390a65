"""Scanning phantom TCIA trees: SOP-class filtering, both naming styles, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("pydicom")

from mmscale.data import (  # noqa: E402
    CT_IMAGE_STORAGE,
    lesion_center,
    load_ct_series,
    read_annotations,
    read_header,
    scan_tcia,
)
from mmscale.data.phantom import COLLECTION  # noqa: E402


def _scan(paths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_tcia(paths.data_dir, paths.annotations)


def test_patients_labels_and_series(phantom):
    patients, summary = _scan(phantom)
    assert sorted(patients) == sorted(phantom.labels)
    assert {pid: r.label for pid, r in patients.items()} == phantom.labels
    assert summary.series["Secondary Capture"] == len(patients)
    assert summary.series["PET Image Storage"] >= 1
    for rec in patients.values():
        # Never a fused Secondary Capture (which says Modality=CT) or a PET file.
        assert {read_header(f)["sop_class_uid"] for f in rec.ct_files} == {CT_IMAGE_STORAGE}
        assert rec.boxes, rec.patient_id
    assert any(r.ct_candidates == 2 for r in patients.values())
    assert any(r.pet_files for r in patients.values())
    # One XML per patient points at a Secondary Capture slice: counted, not used.
    assert summary.annotations_unmatched == len(patients)
    assert "Secondary Capture" in summary.report()


def test_chosen_series_is_the_annotated_one_and_box_is_on_the_lesion(phantom):
    patients, _ = _scan(phantom)
    for rec in patients.values():
        ct = load_ct_series(rec.ct_files)
        assert all(ct.slice_index(b.sop_instance_uid) is not None for b in rec.boxes)
        k, y, x = lesion_center(ct, rec.boxes)
        lung = -860.0
        assert ct.hu[int(k), int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].mean() > lung + 100


def test_duplicate_positions_removed(phantom):
    patients, _ = _scan(phantom)
    first = patients[sorted(phantom.labels)[0]]  # A0001 has a second phase at every z
    assert len(first.ct_files) == 16
    ct = load_ct_series(first.ct_files)
    assert ct.hu.shape[0] == 8
    assert np.all(np.diff(ct.z_positions) > 0)
    assert sum("duplicate" in why for _, why in ct.skipped) == 8


def test_classic_names_shuffled_files_corrupt_file_empty_annotations(phantom, quirky_phantom):
    with pytest.warns(UserWarning, match=r"unreadable DICOM file .*\.dcm"):
        patients, summary = scan_tcia(quirky_phantom.data_dir, quirky_phantom.annotations)
    assert sorted(patients) == sorted(quirky_phantom.labels)
    assert summary.skip_reasons["unreadable DICOM"] == 1
    assert "unreadable DICOM" in summary.report()
    empty = [p for p, r in patients.items() if "empty annotation folder" in r.notes]
    assert len(empty) == 1 and summary.empty_annotation_folders == empty
    assert summary.patients_without_boxes == empty
    # Same seed, other names: the first patient's volume is the same voxel for voxel
    # (its corrupt slice aside), so neither folder names nor file names matter.
    ref, _ = _scan(phantom)
    pid = sorted(phantom.labels)[1]
    a = load_ct_series(ref[pid].ct_files)
    b = load_ct_series(patients[pid].ct_files)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.z_positions == b.z_positions


def test_not_a_tcia_tree(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a TCIA download"):
        scan_tcia(tmp_path)
    with pytest.raises(ValueError, match="root"):
        scan_tcia(tmp_path / "missing")


def test_tree_without_ct_series(phantom, tmp_path):
    import shutil

    # Keep only the fused Secondary Capture folders: DICOM, but no CT volume.
    for sc in (phantom.data_dir / COLLECTION).glob("*/*/*fused*"):
        shutil.copytree(sc, tmp_path / sc.relative_to(phantom.data_dir))
    with pytest.raises(ValueError, match="no CT Image Storage"):
        scan_tcia(tmp_path)


def test_annotation_parsing_and_bad_xml(tmp_path):
    xml = tmp_path / "1.2.3.xml"
    xml.write_text(
        '<annotation verified="no"><size><width>512</width><height>512</height></size>'
        "<object><name>a</name><bndbox><xmin>286</xmin><ymin>310</ymin><xmax>355</xmax>"
        "<ymax>402</ymax></bndbox></object><object><name>A0192</name><bndbox><xmin>5</xmin>"
        "<ymin>5</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object></annotation>")
    boxes = read_annotations(xml)
    assert [b.sop_instance_uid for b in boxes] == ["1.2.3", "1.2.3"]
    assert boxes[0].area == 69 * 92 and boxes[1].area == 0
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not valid XML"):
        read_annotations(bad)

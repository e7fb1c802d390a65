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


def _linked_tree(phantom, tmp_path):
    """A download whose patient folders are all symlinks, one of them holding a link loop."""
    root = tmp_path / "linked"
    (root / COLLECTION).mkdir(parents=True)
    for pdir in sorted((phantom.data_dir / COLLECTION).iterdir()):
        (root / COLLECTION / pdir.name).symlink_to(pdir, target_is_directory=True)
    return root


def test_symlinked_patient_folders_are_followed_and_loops_guarded(phantom, tmp_path):
    root = _linked_tree(phantom, tmp_path)
    loop_home = tmp_path / "loop_home" / "Lung_Dx-A0999"
    loop_home.mkdir(parents=True)
    (loop_home / "again").symlink_to(loop_home, target_is_directory=True)
    (root / COLLECTION / "Lung_Dx-A0999").symlink_to(loop_home, target_is_directory=True)
    with pytest.warns(UserWarning, match="Lung_Dx-A0999.*yields no patient: no \\*.dcm file"):
        patients, summary = scan_tcia(root, phantom.annotations)
    assert sorted(patients) == sorted(phantom.labels)
    assert any("symlink loop" in why for _, why in summary.skipped)
    assert summary.empty_patient_folders == [(str(root / COLLECTION / "Lung_Dx-A0999"), "no *.dcm file")]
    assert "Lung_Dx-A0999: no *.dcm file" in summary.report()


def test_patient_folder_without_ct_or_readable_files_is_reported(phantom, tmp_path):
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(phantom.data_dir / COLLECTION, root / COLLECTION, symlinks=True)
    junk = root / COLLECTION / "Lung_Dx-G0998" / "study" / "series"
    junk.mkdir(parents=True)
    (junk / "1-01.dcm").write_bytes(b"not dicom")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patients, summary = scan_tcia(root)
    assert "G0998" not in patients and len(patients) == len(phantom.labels)
    assert summary.empty_patient_folders == [(str(root / COLLECTION / "Lung_Dx-G0998"),
                                              "no readable DICOM file")]
    assert any("Lung_Dx-G0998" in str(w.message) for w in caught)


def _bad_annotations(phantom, tmp_path):
    import shutil

    ann = tmp_path / "ann"
    shutil.copytree(phantom.annotations, ann)
    folder = next(p for p in ann.rglob("*") if p.is_dir() and list(p.glob("*.xml")))
    good = sorted(folder.glob("*.xml"))
    (folder / "1.2.3.dir.xml").mkdir()  # a folder named like an annotation
    (folder / "1.2.3.enc.xml").write_text('<?xml version="1.0" encoding="no-such-codec"?><annotation/>')
    (folder / "loop").symlink_to(ann, target_is_directory=True)
    text = good[0].read_text()
    # inf, an overflowing 1e400 and an absurd 1e30 corner: each box left out, the file's good box kept.
    extra = "".join(f"<object><bndbox><xmin>{v}</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
                    "</bndbox></object>" for v in ("inf", "1e400", "1e30", "", "-nan"))
    good[0].write_text(text.replace("</annotation>", extra + "</annotation>"))
    return ann, folder, good[0]


def test_bad_annotation_entries_are_reported_and_never_stop_the_scan(phantom, tmp_path):
    ann, folder, spoiled = _bad_annotations(phantom, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patients, summary = scan_tcia(phantom.data_dir, ann)
    ref, _ = _scan(phantom)
    assert sorted(patients) == sorted(ref)
    assert {pid: r.boxes for pid, r in patients.items()} == {pid: r.boxes for pid, r in ref.items()}
    reasons = {p: why for p, why in summary.skipped if p.startswith(str(folder))}
    assert "IsADirectoryError" in reasons[str(folder / "1.2.3.dir.xml")]
    assert "LookupError" in reasons[str(folder / "1.2.3.enc.xml")]
    assert summary.bad_boxes == 5 and summary.skip_reasons["bad box"] == 5
    assert all(np.isfinite([b.xmin, b.ymin, b.xmax, b.ymax]).all() and b.area < 1e6
               for r in patients.values() for b in r.boxes)
    assert any(str(spoiled) in str(w.message) and "not finite" in str(w.message) for w in caught)


def test_read_annotations_leaves_out_non_finite_boxes_with_a_warning(tmp_path):
    xml = tmp_path / "1.2.3.xml"
    xml.write_text("<annotation><object><bndbox><xmin>inf</xmin><ymin>1</ymin><xmax>1e400</xmax>"
                   "<ymax>5</ymax></bndbox></object><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    with pytest.warns(UserWarning, match="1.2.3.xml.*object 0.*not finite"):
        boxes = read_annotations(xml)
    assert [(b.xmin, b.xmax) for b in boxes] == [(1.0, 5.0)]
    (tmp_path / "dir.xml").mkdir()
    with pytest.raises(ValueError, match="dir.xml.*cannot be read"):
        read_annotations(tmp_path / "dir.xml")


def test_series_filed_under_another_patient_is_skipped_not_misattributed(phantom, tmp_path):
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(phantom.data_dir / COLLECTION, root / COLLECTION)
    a1, a2 = (root / COLLECTION / "Lung_Dx-A0001"), (root / COLLECTION / "Lung_Dx-A0002")
    series = next(p for p in a2.rglob("*") if p.is_dir() and list(p.glob("*.dcm")))
    stray = next(p for p in a1.iterdir() if p.is_dir()) / "9.000000-stray-00000"
    shutil.copytree(series, stray)
    ref, _ = scan_tcia(phantom.data_dir)
    with pytest.warns(UserWarning, match="9.000000-stray.*belongs to A0001"):
        patients, summary = scan_tcia(root)
    assert (str(stray), "patient mismatch: PatientID 'Lung_Dx-A0002' in the header but the folder "
                        "belongs to A0001") in summary.skipped
    assert patients["A0001"].ct_candidates == ref["A0001"].ct_candidates
    assert len(patients["A0002"].ct_files) == len(ref["A0002"].ct_files)


def test_enhanced_ct_series_is_named_in_the_scan(phantom, tmp_path):
    import shutil

    import pydicom

    root = tmp_path / "tree"
    pdir = phantom.data_dir / COLLECTION / "Lung_Dx-A0002"
    shutil.copytree(pdir, root / COLLECTION / pdir.name)
    for f in (root / COLLECTION).rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        if ds.SOPClassUID == CT_IMAGE_STORAGE:
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
            ds.save_as(f)
    with pytest.raises(ValueError, match="Enhanced CT Image Storage \\(multi-frame, not read\\)"):
        _quiet_scan(root)


def _quiet_scan(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scan_tcia(root)

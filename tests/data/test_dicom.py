"""CT loading on pydicom's bundled real CT slice and on hand-modified copies of it."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from mmscale.data import CT_IMAGE_STORAGE, SECONDARY_CAPTURE, load_ct_series, read_header  # noqa: E402

CT_SMALL = get_testdata_file("CT_small.dcm")


def test_real_ct_slice_in_hounsfield_units():
    ds = pydicom.dcmread(CT_SMALL)
    ct = load_ct_series([CT_SMALL])
    assert ct.hu.shape == (1, 128, 128) and ct.hu.dtype == np.float32
    assert ct.spacing == (5.0, 0.661468, 0.661468)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(ct.hu[0], expected)
    assert float(ds.RescaleIntercept) == -1024
    assert ct.sop_instance_uids == [str(ds.SOPInstanceUID)]
    assert read_header(CT_SMALL)["sop_class_uid"] == CT_IMAGE_STORAGE


def _copies(folder, zs, names, slope=1.0):
    """Copies of CT_small at positions ``zs`` written under ``names`` (new SOP UIDs)."""
    base = pydicom.dcmread(CT_SMALL)
    series = generate_uid()
    uids = []
    for z, name in zip(zs, names, strict=True):
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.ImagePositionPatient = [-158.135803, -179.035797, z]
        ds.RescaleSlope = slope
        # Mark each slice so that its order can be checked after loading.
        arr = ds.pixel_array.copy()
        arr[0, 0] = int(z * 10)
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / name)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def test_sorted_by_position_not_file_name_and_duplicates_removed(tmp_path):
    zs = [10.0, -5.0, 0.0, 5.0, 0.0]  # file order scrambled, z=0 twice
    _copies(tmp_path, zs, ["1-01.dcm", "1-02.dcm", "1-03.dcm", "1-04.dcm", "2-01.dcm"])
    ct = load_ct_series(tmp_path)
    assert ct.z_positions == [-5.0, 0.0, 5.0, 10.0]
    assert ct.spacing[0] == 5.0
    # The stored marker (z * 10) comes back in z order after the -1024 intercept.
    assert [int(v) for v in ct.hu[:, 0, 0] + 1024] == [-50, 0, 50, 100]
    assert any("duplicate slice position" in why for _, why in ct.skipped)


def test_rescale_slope_applied(tmp_path):
    _copies(tmp_path, [0.0], ["a.dcm"], slope=2.0)
    raw = pydicom.dcmread(tmp_path / "a.dcm").pixel_array.astype(np.float32)
    np.testing.assert_array_equal(load_ct_series(tmp_path).hu[0], raw * 2.0 - 1024.0)


def test_corrupt_file_skipped_with_warning_naming_it(tmp_path):
    _copies(tmp_path, [0.0, 5.0], ["1-01.dcm", "1-02.dcm"])
    bad = tmp_path / "1-03.dcm"
    bad.write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="1-03.dcm"):
        ct = load_ct_series(tmp_path)
    assert ct.hu.shape[0] == 2
    assert [p for p, why in ct.skipped if why.startswith("unreadable")] == [str(bad)]


def test_secondary_capture_is_not_a_ct_slice(tmp_path):
    _copies(tmp_path, [0.0], ["1-01.dcm"])
    ds = pydicom.dcmread(tmp_path / "1-01.dcm")
    ds.SOPClassUID = SECONDARY_CAPTURE  # still says Modality=CT, like the fused images
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "1-02.dcm")
    ct = load_ct_series(tmp_path)
    assert ct.hu.shape[0] == 1
    assert any("is not CT Image Storage" in why for _, why in ct.skipped)


def test_bad_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        load_ct_series(tmp_path / "missing")
    with pytest.raises(ValueError, match="no readable CT Image Storage"):
        load_ct_series(tmp_path)

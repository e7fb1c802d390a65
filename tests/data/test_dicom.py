"""CT loading on pydicom's bundled real CT slice and on hand-modified copies of it."""

from __future__ import annotations

import warnings
from pathlib import Path

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


def _series(folder, n=4, step=5.0, edit=None):
    """``n`` axial copies of CT_small, ``step`` mm apart; ``edit(k, ds)`` may alter slice k."""
    series = generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(CT_SMALL)  # a fresh dataset each time: copies share elements
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.ImagePositionPatient = [-158.135803, -179.035797, k * step]
        if edit is not None:
            edit(k, ds)
        path = folder / f"1-{k + 1:02d}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid values written on purpose
            ds.save_as(path)
        paths.append(path)
    return paths


def _load(folder, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ct = load_ct_series(folder, **kw)
    return ct, [str(w.message) for w in caught]


def test_slice_of_another_size_is_left_out_and_the_majority_kept(tmp_path):
    def smaller(k, ds):
        if k == 0:  # the lowest slice used to decide the volume's size
            ds.PixelData = ds.pixel_array[:64, :64].copy().tobytes()
            ds.Rows = ds.Columns = 64

    paths = _series(tmp_path, n=6, edit=smaller)
    ct, msgs = _load(tmp_path)
    assert ct.hu.shape == (5, 128, 128)
    assert ct.skipped == [(str(paths[0]), "mismatched geometry: Rows/Columns 64x64 differ from the "
                                          "series' 128x128 (5 slice(s))")]
    assert any(paths[0].name in m for m in msgs)


def test_sagittal_series_sorted_along_the_slice_normal(tmp_path):
    def sagittal(k, ds):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [float([10, -5, 0, 5][k]), -100.0, 50.0]  # only x moves

    paths = _series(tmp_path, n=4, edit=sagittal)
    ct = load_ct_series(tmp_path)
    assert ct.hu.shape[0] == 4 and ct.spacing[0] == 5.0
    # The normal is (-1, 0, 0): increasing position along it means decreasing x.
    assert [ct.sop_instance_uids.index(str(pydicom.dcmread(p).SOPInstanceUID)) for p in paths] == [0, 3, 2, 1]
    assert ct.orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0) and ct.skipped == []


def test_slice_without_position_is_skipped_with_a_warning_naming_it(tmp_path):
    def no_ipp(k, ds):
        if k == 2:
            del ds.ImagePositionPatient

    paths = _series(tmp_path, n=4, edit=no_ipp)
    ct, msgs = _load(tmp_path)
    assert ct.hu.shape[0] == 3
    assert ct.skipped[0] == (str(paths[2]), "bad geometry: no ImagePositionPatient")
    assert any(paths[2].name in m and "ImagePositionPatient" in m for m in msgs)


def test_gap_tilt_and_uneven_spacing_warn_and_strict_raises(tmp_path):
    gap = tmp_path / "gap"
    gap.mkdir()
    _series(gap, n=4, edit=lambda k, ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, [0, 5, 10, 20][k]]))
    ct, msgs = _load(gap)
    assert ct.hu.shape[0] == 4 and any("gap" in n for n in ct.notes)
    assert any("1 gap(s)" in m for m in msgs)
    with pytest.raises(ValueError, match="gap.*strict"):
        load_ct_series(gap, strict=True)
    tilt = tmp_path / "tilt"
    tilt.mkdir()
    _series(tilt, n=4, edit=lambda k, ds: setattr(ds, "ImagePositionPatient", [0.0, 1.0 * k, 5.0 * k]))
    ct, msgs = _load(tilt)
    assert any("gantry tilt of 11.31 degrees" in m for m in msgs)
    with pytest.raises(ValueError, match="gantry tilt"):
        load_ct_series(tilt, strict=True)
    uneven = tmp_path / "uneven"
    uneven.mkdir()
    _series(uneven, n=4, edit=lambda k, ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, [0, 5, 11, 15][k]]))
    ct, msgs = _load(uneven)
    assert any("inconsistent slice spacing" in m for m in msgs)
    with pytest.raises(ValueError, match="inconsistent"):
        load_ct_series(uneven, strict=True)


def test_nothing_left_says_why(tmp_path):
    (tmp_path / "a").mkdir()
    _series(tmp_path / "a", n=2, edit=lambda k, ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(ValueError, match="2 bad geometry.*no ImagePositionPatient"):
        _load(tmp_path / "a")
    (tmp_path / "b").mkdir()

    def enhanced(k, ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"

    _series(tmp_path / "b", n=1, edit=enhanced)
    with pytest.raises(ValueError, match="1 multi-frame.*Enhanced CT Image Storage"):
        _load(tmp_path / "b")
    (tmp_path / "c").mkdir()
    _series(tmp_path / "c", n=1, edit=lambda k, ds: setattr(ds, "NumberOfFrames", 3))
    with pytest.raises(ValueError, match="multi-frame: 3 frames"):
        _load(tmp_path / "c")
    (tmp_path / "d").mkdir()
    _series(tmp_path / "d", n=1, edit=lambda k, ds: setattr(ds, "SOPClassUID", SECONDARY_CAPTURE))
    with pytest.raises(ValueError, match=f"SOP class {SECONDARY_CAPTURE} is not CT Image Storage"):
        _load(tmp_path / "d")


@pytest.mark.parametrize("keyword, value, reason", [
    ("RescaleSlope", "nan", "RescaleSlope [nan] is not finite"),
    ("RescaleSlope", "inf", "RescaleSlope [inf] is not finite"),
    ("RescaleSlope", "1e38", "values beyond float32"),
    ("RescaleSlope", "0", "RescaleSlope [0.0] must be positive"),
    ("RescaleIntercept", "-inf", "RescaleIntercept [-inf] is not finite"),
    ("PixelSpacing", "nan\\1", "PixelSpacing [nan, 1.0] is not finite"),
    ("PixelSpacing", "inf\\inf", "PixelSpacing [inf, inf] is not finite"),
    ("PixelSpacing", "0\\0", "PixelSpacing [0.0, 0.0] must be positive"),
    ("PixelSpacing", "-1\\1", "PixelSpacing [-1.0, 1.0] must be positive"),
    ("PixelSpacing", "1", "PixelSpacing has 1 value(s), expected 2"),
    ("PixelSpacing", "", "no PixelSpacing"),
    ("ImagePositionPatient", "0\\0\\nan", "ImagePositionPatient [0.0, 0.0, nan] is not finite"),
    ("ImagePositionPatient", "1", "ImagePositionPatient has 1 value(s), expected 3"),
    ("RescaleSlope", "1\\2", "RescaleSlope has 2 value(s), expected 1"),
    ("ImageOrientationPatient", "1\\0\\0\\1\\0\\0", "is not two orthogonal unit vectors"),
    ("SeriesInstanceUID", "", "missing UID: no SeriesInstanceUID"),
    ("SOPInstanceUID", "", "missing UID: no SOPInstanceUID"),
])
def test_bad_value_skips_the_slice_with_a_warning_naming_the_file(tmp_path, keyword, value, reason):
    def spoil(k, ds):
        if k == 1:
            setattr(ds, keyword, value)

    paths = _series(tmp_path, n=3, edit=spoil)
    ct, msgs = _load(tmp_path)
    assert ct.hu.shape[0] == 2 and np.isfinite(ct.hu).all()
    assert all(np.isfinite(v) and v > 0 for v in ct.spacing) and np.isfinite(ct.origin).all()
    ((path, why),) = ct.skipped
    assert path == str(paths[1]) and reason in why
    assert any(paths[1].name in m and reason in m for m in msgs)


def test_single_slice_needs_a_usable_slice_thickness(tmp_path):
    _series(tmp_path, n=1, edit=lambda k, ds: setattr(ds, "SliceThickness", "1\\2"))
    with pytest.raises(ValueError, match="1-01.dcm.*no usable SliceThickness"):
        load_ct_series(tmp_path)


def test_a_header_value_pydicom_cannot_convert_skips_only_that_file(tmp_path, monkeypatch):
    """Any exception while reading one file's values (here NotImplementedError) is a named skip."""
    paths = _series(tmp_path, n=3)
    real = pydicom.dcmread

    class Unconvertible(pydicom.Dataset):
        def get(self, key, default=None):
            if key == "SOPClassUID":
                raise NotImplementedError("cannot convert this value")
            return super().get(key, default)

    def dcmread(path, *args, **kwargs):
        ds = real(path, *args, **kwargs)
        return Unconvertible(ds) if Path(path) == paths[1] else ds

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    ct, msgs = _load(tmp_path)
    assert ct.hu.shape[0] == 2
    assert ct.skipped == [(str(paths[1]), "bad header: NotImplementedError: cannot convert this value")]
    assert any(paths[1].name in m for m in msgs)

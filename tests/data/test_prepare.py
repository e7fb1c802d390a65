"""Crops, the resumable prepare cache and the augmentation's determinism."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("pydicom")

import mmscale.data.cache as prep  # noqa: E402
import mmscale.data.patient as patient_mod  # noqa: E402
from mmscale.data import (  # noqa: E402
    CropConfig,
    CTSeries,
    LesionDataset,
    PETSeries,
    PreparedData,
    crop_volume,
    prepare,
    resample_pet_to_ct,
)

CROP = CropConfig(depth=4, resize=48, crop=16, margin=2)


def _ct(d=6, h=40, w=40):
    hu = np.full((d, h, w), -1000.0, np.float32)
    return CTSeries(hu=hu, spacing=(2.0, 1.0, 1.0), sop_instance_uids=[str(i) for i in range(d)],
                    z_positions=[2.0 * i for i in range(d)], origin=(0.0, 0.0, 0.0),
                    series_instance_uid="1", patient_id="A0001")


def test_crop_is_centred_on_the_lesion():
    ct = _ct()
    ct.hu[3, 10, 30] = 400.0  # one bright voxel: the "lesion"
    cfg = CropConfig(depth=3, resize=40, crop=9, margin=0)
    out = crop_volume(ct, (3.0, 10.0, 30.0), cfg)
    assert out.shape == (1, 3, 9, 9)
    assert out[0, 1, 4, 4] == 1.0 and out.sum() == 1.0
    # Near the edge: slices repeat the edge slice, pixels beyond the image are air (0).
    edge = crop_volume(ct, (0.0, 0.0, 0.0), cfg)
    assert edge.shape == (1, 3, 9, 9) and edge.max() == 0.0


def test_resize_keeps_the_centre_and_validates():
    ct = _ct(h=40, w=40)
    ct.hu[2, 18:22, 18:22] = 400.0
    out = crop_volume(ct, (2.0, 19.5, 19.5), CropConfig(depth=1, resize=20, crop=4, margin=0))
    # The block stays in the window's middle (blurred by the antialiasing filter).
    centre = out[0, 0, 1:3, 1:3]
    assert centre.min() == out.max() > 0.5
    with pytest.raises(ValueError, match="crop"):
        CropConfig(resize=32, crop=64)
    with pytest.raises(ValueError, match="pet"):
        crop_volume(ct, None, CropConfig(depth=1, resize=40, crop=8, pet=True), pet=np.zeros((1, 2, 2)))


def test_pet_resampled_onto_the_ct_grid():
    ct = _ct(d=4, h=8, w=8)
    values = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    # PET voxels twice the CT's in-plane size; PET voxel (k, i, j) sits on CT voxel
    # (k, 1 + 2i, 1 + 2j), and half-way between two PET voxels the CT gets their mean.
    pet = PETSeries(values=values, spacing=(2.0, 2.0, 2.0), origin=(1.0, 1.0, 0.0), units="BQML")
    out = resample_pet_to_ct(pet, ct)
    assert out.shape == (4, 8, 8)
    np.testing.assert_allclose(out[:, 1::2, 1::2], values, atol=1e-4)
    np.testing.assert_allclose(out[:, 1, 2], (values[:, 0, 0] + values[:, 0, 1]) / 2, atol=1e-4)


def _prepare(paths, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(paths.data_dir, cache, annotations=paths.annotations,
                       clinical=paths.clinical, crop=CROP, progress=False, **kw)


def test_prepare_reports_and_keeps_incomplete_patients(quirky_phantom, tmp_path):
    with pytest.warns(UserWarning) as caught:
        data = prepare(quirky_phantom.data_dir, tmp_path, annotations=quirky_phantom.annotations,
                       clinical=quirky_phantom.clinical, crop=CROP, progress=False)
    assert any("without a clinical row" in str(w.message) for w in caught)
    assert data.volumes.shape == (8, 1, 4, 20, 20) and data.volumes.dtype == np.float16
    assert 0.0 <= float(data.volumes.min()) and float(data.volumes.max()) <= 1.0
    assert sorted(data.patient_ids) == sorted(quirky_phantom.labels)
    missing = [p for p, r in zip(data.patient_ids, data.rows, strict=True) if r is None]
    assert len(missing) == 1 and missing[0] in data.report
    assert sum(not b for b in data.has_box) == 1
    assert "unknown T-Stage" in data.report and "unreadable DICOM" in data.report
    assert "empty annotation folder" in data.report


def test_prepare_resumes_after_interruption_without_half_files(phantom, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = patient_mod.crop_volume

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(patient_mod, "crop_volume", flaky)
    with pytest.raises(KeyboardInterrupt):
        _prepare(phantom, tmp_path)
    assert not (tmp_path / "index.json").exists()
    assert len(list((tmp_path / "crops").glob("*.npy"))) == 3
    assert not list(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr(patient_mod, "crop_volume", real)
    calls["n"] = 0
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(patient_mod, "crop_volume", counting)
    data = _prepare(phantom, tmp_path)
    assert counted["n"] == 5  # only the patients not cut before
    fresh = _prepare(phantom, tmp_path / "fresh")
    np.testing.assert_array_equal(data.volumes, fresh.volumes)
    # A finished cache is loaded as is, without scanning again.
    monkeypatch.setattr("mmscale.data.tcia.scan_tcia", None)
    again = _prepare(phantom, tmp_path)
    assert again.patient_ids == data.patient_ids
    info = json.loads((tmp_path / "index.json").read_text())
    assert info["crop"]["crop"] == 16 and len(info["patients"]) == 8
    with pytest.raises(ValueError, match="no finished cache"):
        PreparedData.load(tmp_path / "crops")


def test_prepare_pet_channel(phantom, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(phantom.data_dir, tmp_path, annotations=phantom.annotations,
                       crop=CropConfig(depth=4, resize=48, crop=16, margin=2, pet=True), progress=False)
    assert data.volumes.shape[1] == 2
    with_pet = [float(v[1].max()) > 0 for v in data.volumes]
    assert any(with_pet) and not all(with_pet)
    assert all(r is None for r in data.rows)  # no clinical sheet given


def test_dataset_augmentation_is_a_function_of_seed_and_epoch():
    rng = np.random.default_rng(0)
    vols = rng.random((5, 1, 4, 20, 20)).astype(np.float16)
    ds = LesionDataset(vols, np.zeros((5, 2), np.float32), np.zeros((5, 5), np.int64),
                       np.arange(5) % 2, crop=16, train=True, seed=7)
    a = ds[3]["volume"]
    ds.set_epoch(1)
    b = ds[3]["volume"]
    ds.set_epoch(0)
    assert a.shape == (1, 4, 16, 16)
    assert np.array_equal(a, ds[3]["volume"]) and not np.array_equal(a, b)
    centre = LesionDataset(vols, np.zeros((5, 2)), np.zeros((5, 5)), np.zeros(5), crop=16)[0]["volume"]
    np.testing.assert_array_equal(centre.numpy(), vols[0, :, :, 2:18, 2:18].astype(np.float32))
    with pytest.raises(ValueError, match="lengths"):
        LesionDataset(vols, np.zeros((4, 2)), np.zeros((5, 5)), np.zeros(5), crop=16)
    with pytest.raises(ValueError, match="crop"):
        LesionDataset(vols, np.zeros((5, 2)), np.zeros((5, 5)), np.zeros(5), crop=32)


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    """Files written through a temp file get the umask's mode, not the temp file's owner-only 0o600."""
    import os
    import stat

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    prep.atomic_write_bytes(tmp_path / "atomic.bin", b"y")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)
    assert (tmp_path / "atomic.bin").read_bytes() == b"y"
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_write_lives_in_a_neutral_module_and_is_re_exported():
    """The benchmarks import the writer without the data package; the old names still work."""
    import mmscale._io
    import mmscale.data

    assert mmscale.data.atomic_write_bytes is mmscale._io.atomic_write_bytes
    assert prep.atomic_write_bytes is mmscale._io.atomic_write_bytes


def test_crop_patient_gives_exactly_the_cached_crop(phantom, tmp_path):
    """prepare caches what crop_patient returns, so a prediction sees the training input."""
    from mmscale.data import crop_patient, scan_tcia

    data = _prepare(phantom, tmp_path)
    patients, _ = scan_tcia(phantom.data_dir, phantom.annotations)
    for i, pid in enumerate(data.patient_ids):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pc = crop_patient(patients[pid], CROP, center_fallback=True)
        assert pc.volume.dtype == np.float16 and pc.volume.shape == (1, 4, 20, 20)
        np.testing.assert_array_equal(pc.volume, data.volumes[i])
        assert pc.lesion_centred == data.has_box[i]


def test_crop_patient_without_a_usable_box_needs_center_fallback(phantom):
    import dataclasses

    from mmscale.data import Box, NoLesionBoxError, crop_patient, scan_tcia

    patients, _ = scan_tcia(phantom.data_dir, phantom.annotations)
    rec = next(r for r in patients.values() if r.boxes)
    on = rec.boxes[0].sop_instance_uid
    bad = dataclasses.replace(rec, boxes=[Box("1.2.3.4", 1.0, 1.0, 5.0, 5.0), Box(on, 3.0, 3.0, 3.0, 9.0),
                                          Box(on, -60000.0, 1.0, 10.0, 5.0), Box(on, 1.0, float("inf"), 5.0, 5.0)])
    with pytest.raises(NoLesionBoxError, match=f"{rec.patient_id}.*center_fallback"):
        crop_patient(bad, CROP)
    with pytest.warns(UserWarning, match=f"patient {rec.patient_id}.*centre"):
        pc = crop_patient(bad, CROP, center_fallback=True)
    assert not pc.lesion_centred and pc.center is None
    assert [why for _, why in pc.dropped_boxes] == ["its slice is not in the loaded CT volume", "zero area",
                                                    "its centre lies outside the 48x48 slice",
                                                    "non-finite corner"]
    centred = crop_patient(rec, CROP)
    assert centred.lesion_centred and centred.dropped_boxes == []


def test_prepare_stops_on_a_full_disk_and_leaves_no_index(phantom, tmp_path, monkeypatch):
    """An out-of-space error is not a bad patient: the run stops and nothing claims completeness."""
    import errno

    real = prep.atomic_write_bytes
    calls = {"n": 0}

    def full_disk(path, data):
        calls["n"] += 1
        if calls["n"] >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(prep, "atomic_write_bytes", full_disk)
    with pytest.raises(OSError, match="cannot write.*No space left") as info:
        _prepare(phantom, tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "index.json").exists()
    monkeypatch.setattr(prep, "atomic_write_bytes", real)
    data = _prepare(phantom, tmp_path)  # resumes once space is back: every patient is there
    assert sorted(data.patient_ids) == sorted(phantom.labels) and data.info["failed"] == []


def test_prepare_report_names_every_dropped_slice(phantom, tmp_path):
    """The duplicate-position slices of the multi-phase patient are named in text and index."""
    data = _prepare(phantom, tmp_path)
    dropped = [(e["id"], f, why) for e in data.info["patients"] for f, why in e["dropped_slices"]]
    assert dropped and all("duplicate slice position" in why for _, _, why in dropped)
    for pid, f, _ in dropped:
        assert f"{pid}: {f}" in data.report
    assert "slice file(s) left out" in data.report


def test_prepare_index_lists_what_the_scan_left_out(quirky_phantom, tmp_path):
    data = _prepare(quirky_phantom, tmp_path)
    skipped = data.info["scan_skipped"]
    unreadable = [(f, why) for f, why in skipped if why.startswith("unreadable")]
    assert [why for _, why in unreadable] == ["unreadable DICOM: InvalidDicomError"]
    assert f"{unreadable[0][0]}: unreadable DICOM" in data.report  # named, not only counted
    assert data.info["patients_without_ct"] == [] and data.info["empty_patient_folders"] == []


@pytest.mark.parametrize("field, value", [("depth", 2.5), ("resize", True), ("margin", 1.5),
                                          ("hu_max", float("inf")), ("hu_min", float("nan")),
                                          ("pet", "yes")])
def test_crop_config_rejects_ill_typed_fields(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        CropConfig(**{field: value})


def test_negative_pet_is_not_flipped_into_uptake():
    ct = _ct(d=2, h=8, w=8)
    out = crop_volume(ct, None, CropConfig(depth=2, resize=8, crop=8, margin=0, pet=True),
                      pet=-np.ones((2, 8, 8), np.float32))
    assert out[1].max() == 0.0


def test_damaged_cache_is_a_clear_error_naming_the_file(phantom, tmp_path):
    data = _prepare(phantom, tmp_path)
    index = tmp_path / "index.json"
    text = index.read_text()
    index.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="index.json.*not a readable cache index"):
        PreparedData.load(tmp_path)
    index.write_text(text)
    crop = tmp_path / "crops" / f"{data.patient_ids[0]}.npy"
    crop.write_bytes(crop.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{data.patient_ids[0]}.npy.*cannot be read"):
        PreparedData.load(tmp_path)


def test_crop_volume_refuses_a_centre_far_outside_the_volume():
    ct = _ct(d=2, h=8, w=8)
    cfg = CropConfig(depth=2, resize=8, crop=8, margin=0)
    for center in ((0.0, 1e6, 4.0), (0.0, 4.0, float("nan")), (-100.0, 4.0, 4.0)):
        with pytest.raises(ValueError, match="center"):
            crop_volume(ct, center, cfg)
    assert crop_volume(ct, (0.0, -3.0, 12.0), cfg).shape == (1, 2, 8, 8)  # near the edge: padded


def test_finished_cache_from_other_inputs_is_refused_not_reused(phantom, tmp_path):
    _prepare(phantom, tmp_path)
    other = CropConfig(depth=4, resize=48, crop=24, margin=2)
    with pytest.raises(ValueError, match="cache_dir: .*other inputs.*crop: cached"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(phantom.data_dir, tmp_path, annotations=phantom.annotations,
                    clinical=phantom.clinical, crop=other, progress=False)
    with pytest.raises(ValueError, match="clinical: cached"):
        _prepare_without_clinical(phantom, tmp_path)


def _prepare_without_clinical(paths, cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(paths.data_dir, cache, annotations=paths.annotations, crop=CROP, progress=False)


def test_interrupted_cache_resumed_with_another_crop_recuts_every_patient(phantom, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = patient_mod.crop_volume

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(patient_mod, "crop_volume", flaky)
    with pytest.raises(KeyboardInterrupt):
        _prepare(phantom, tmp_path)
    monkeypatch.setattr(patient_mod, "crop_volume", real)
    other = CropConfig(depth=4, resize=48, crop=24, margin=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(phantom.data_dir, tmp_path, annotations=phantom.annotations,
                       clinical=phantom.clinical, crop=other, progress=False)
    assert data.volumes.shape[-1] == other.stored  # no crop of the first geometry survives

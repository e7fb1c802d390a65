"""Seeded mutation fuzzing of the readers over real pydicom files and phantom outputs.

Each reader gets mutated inputs (DICOM tags set to wrong, non-finite, empty or
wrongly-multiple values or deleted; bytes flipped, files truncated; VOC corners and
encodings spoiled; clinical cells, headers and bytes spoiled). Every outcome must be
one of: a correct result (no non-finite value anywhere, every file either used or
listed as skipped), a ``ValueError`` naming the file or folder, or a skip with a
warning. Any other exception fails the test with the seed and mutation that caused it.

The CI budget is small (a few seconds). A longer run::

    MMSCALE_FUZZ_BUDGET=2000 MMSCALE_FUZZ_SEED=1 python -m pytest -q tests/data/test_fuzz_readers.py

``MMSCALE_FUZZ_BUDGET`` is the number of mutated inputs per reader (default 20),
``MMSCALE_FUZZ_SEED`` the base seed (default 0).
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pandas")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from mmscale.data import (  # noqa: E402
    load_ct_series,
    load_pet_series,
    make_phantom,
    read_annotations,
    read_clinical,
    scan_tcia,
)

BUDGET = int(os.environ.get("MMSCALE_FUZZ_BUDGET", "20"))
SEED = int(os.environ.get("MMSCALE_FUZZ_SEED", "0"))

# Values a careless or hostile writer puts into numeric and UID tags.
BAD_VALUES = ["", "nan", "-nan", "inf", "-inf", "1e38", "1e400", "-1e400", "0", "-1", "1\\2",
              "1\\2\\3", "1\\2\\3\\4\\5\\6\\7", "abc", "1,5", " ", "3.4e38", "1e-320"]
TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "RescaleSlope", "RescaleIntercept", "SOPInstanceUID", "SeriesInstanceUID", "SOPClassUID",
        "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "PixelRepresentation",
        "SamplesPerPixel", "PixelData", "Units"]
INT_VALUES = [0, 1, 7, 64, 65535]
CORNERS = ["inf", "-inf", "nan", "1e400", "1e30", "-1e30", "", "abc", "1,5", "0x10", "65536", "-0"]
CELLS = ["inf", "-inf", "nan", "NaN", "1e400", "57 years", "63,5", "1_000", "", " ", "TRUE", "é",
         "\uff15\uff18", "-1e308", "1e308", "A0001", "Lung_Dx-A0002", "\x00", '"', ",,"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two patients with CT, PET, annotations and an xlsx sheet, 32 px, 4 slices."""
    root = tmp_path_factory.mktemp("fuzz_phantom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_phantom(root, n_patients=2, seed=5, size=32, slices=4, pet_fraction=1.0,
                            second_ct_fraction=0.0)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _mutate_bytes(path: Path, rng: np.random.Generator) -> str:
    data = bytearray(path.read_bytes())
    op = rng.integers(3)
    if op == 0 and data:
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        what = "flipped bytes"
    elif op == 1:
        data = data[: int(rng.integers(len(data) + 1))]
        what = f"truncated to {len(data)} bytes"
    else:
        at = int(rng.integers(len(data) + 1))
        data[at:at] = rng.bytes(int(rng.integers(1, 64)))
        what = "inserted garbage"
    path.write_bytes(bytes(data))
    return f"{path.name}: {what}"


def _mutate_tags(path: Path, rng: np.random.Generator) -> str:
    try:
        ds = pydicom.dcmread(path)
    except Exception:  # spoiled by an earlier byte mutation: spoil it further
        return _mutate_bytes(path, rng)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        tag = TAGS[int(rng.integers(len(TAGS)))]
        if rng.random() < 0.25:
            if tag in ds:
                del ds[tag]
            done.append(f"del {tag}")
            continue
        if tag in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation", "SamplesPerPixel"):
            value = INT_VALUES[int(rng.integers(len(INT_VALUES)))]
        elif tag == "PixelData":
            value = rng.bytes(int(rng.integers(0, 4096)))
        else:
            value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
        try:
            setattr(ds, tag, value)
        except Exception:
            continue  # pydicom refuses this value for this VR: not an input anyone can write
        done.append(f"{tag}={value if not isinstance(value, bytes) else len(value)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path)
    except Exception:
        return f"{path.name}: unwritable mutation, unchanged"
    return f"{path.name}: " + ", ".join(done)


def _mutate_dicom(path: Path, rng: np.random.Generator) -> str:
    return _mutate_tags(path, rng) if rng.random() < 0.7 else _mutate_bytes(path, rng)


def _ct_folder(folder: Path, n: int = 3) -> list[Path]:
    """``n`` slices of pydicom's real CT_small, 5 mm apart, in one series."""
    folder.mkdir(parents=True)
    series = generate_uid()
    paths = []
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.ImagePositionPatient = [-158.135803, -179.035797, 5.0 * k]
        paths.append(folder / f"1-{k + 1:02d}.dcm")
        ds.save_as(paths[-1])
    return paths


def _check_series(load, folder: Path, n_files: int, values: str, context: str) -> str:
    try:
        series = _quiet(load, folder)
    except ValueError as err:
        assert str(folder) in str(err), f"{context}: error does not name the folder: {err}"
        return "error"
    except Exception as err:  # pragma: no cover - the failure report
        pytest.fail(f"{context}: {type(err).__name__}: {err}")
    vol = getattr(series, values)
    assert vol.dtype == np.float32 and vol.ndim == 3 and np.isfinite(vol).all(), context
    assert all(math.isfinite(v) and v > 0 for v in series.spacing), (context, series.spacing)
    assert all(math.isfinite(v) for v in series.origin), (context, series.origin)
    # Every file is used or listed as skipped: nothing vanishes.
    assert vol.shape[0] + len(series.skipped) == n_files, (context, series.skipped)
    if hasattr(series, "z_positions"):
        z = np.array(series.z_positions)
        assert np.isfinite(z).all() and (np.diff(z) > 0).all(), context
    return "loaded"


def test_fuzz_load_ct_series_on_real_ct_files(tmp_path):
    outcomes = []
    for i in range(BUDGET):
        rng = np.random.default_rng([SEED, 1, i])
        folder = tmp_path / f"case{i}"
        paths = _ct_folder(folder)
        done = [_mutate_dicom(paths[int(rng.integers(len(paths)))], rng)
                for _ in range(int(rng.integers(1, 4)))]
        outcomes.append(_check_series(load_ct_series, folder, len(paths), "hu",
                                      f"seed {SEED} case {i}: {done}"))
    assert len(outcomes) == BUDGET


def test_fuzz_load_pet_series_on_phantom_files(tiny, tmp_path):
    source = next(p for p in tiny.data_dir.rglob("*") if p.is_dir() and "PET" in p.name
                  and list(p.glob("*.dcm")))
    for i in range(BUDGET):
        rng = np.random.default_rng([SEED, 2, i])
        folder = tmp_path / f"case{i}"
        shutil.copytree(source, folder)
        paths = sorted(folder.glob("*.dcm"))
        done = [_mutate_dicom(paths[int(rng.integers(len(paths)))], rng)
                for _ in range(int(rng.integers(1, 4)))]
        _check_series(load_pet_series, folder, len(paths), "values", f"seed {SEED} case {i}: {done}")


def _mutate_xml(path: Path, rng: np.random.Generator) -> str:
    op = rng.integers(5)
    if op == 0:
        text = path.read_text()
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            if rng.random() < 0.5:
                value = CORNERS[int(rng.integers(len(CORNERS)))]
                start, end = text.find(f"<{tag}>"), text.find(f"</{tag}>")
                text = text[: start + len(tag) + 2] + value + text[end:]
        path.write_text(text)
        return f"{path.name}: corners {text[text.find('<bndbox>'):text.find('</bndbox>')]}"
    if op == 1:
        enc = ["utf-8", "no-such-codec", "utf-16", "latin-1", "ascii"][int(rng.integers(5))]
        path.write_text(f'<?xml version="1.0" encoding="{enc}"?>' + path.read_text())
        return f"{path.name}: declares {enc}"
    if op == 2:
        path.unlink()
        path.mkdir()
        return f"{path.name}: a folder"
    if op == 3:
        text = path.read_text()
        path.write_text(text.replace("</bndbox>", "", 1) if rng.random() < 0.5 else
                        text.replace("<bndbox>", "<bndbox><xmin>1</xmin>", 1))
        return f"{path.name}: broken structure"
    return _mutate_bytes(path, rng)


def test_fuzz_read_annotations_on_phantom_xml(tiny, tmp_path):
    sources = sorted(tiny.annotations.rglob("*.xml"))
    for i in range(BUDGET * 2):
        rng = np.random.default_rng([SEED, 3, i])
        path = tmp_path / f"case{i}" / sources[int(rng.integers(len(sources)))].name
        path.parent.mkdir()
        shutil.copy(sources[int(rng.integers(len(sources)))], path)
        context = f"seed {SEED} case {i}: {_mutate_xml(path, rng)}"
        try:
            boxes = _quiet(read_annotations, path)
        except ValueError as err:
            assert path.name in str(err), f"{context}: error does not name the file: {err}"
            continue
        except Exception as err:  # pragma: no cover - the failure report
            pytest.fail(f"{context}: {type(err).__name__}: {err}")
        for b in boxes:
            corners = [b.xmin, b.ymin, b.xmax, b.ymax]
            assert all(math.isfinite(v) and abs(v) <= 65535 for v in corners), (context, b)
            assert math.isfinite(b.area), (context, b)


def test_fuzz_scan_tcia_on_mutated_phantom_trees(tiny, tmp_path):
    for i in range(max(BUDGET // 2, 5)):
        rng = np.random.default_rng([SEED, 4, i])
        root = tmp_path / f"case{i}"
        shutil.copytree(tiny.root, root, ignore=shutil.ignore_patterns("*.xlsx", "*.csv"))
        dicoms = sorted(root.rglob("*.dcm"))
        xmls = sorted(root.rglob("*.xml"))
        done = []
        for _ in range(int(rng.integers(1, 6))):
            op = rng.integers(4)
            if op == 0:
                done.append(_mutate_dicom(dicoms[int(rng.integers(len(dicoms)))], rng))
            elif op == 1 and xmls:
                x = xmls.pop(int(rng.integers(len(xmls))))
                done.append(_mutate_xml(x, rng))
            elif op == 2:
                patient = sorted(root.rglob("Lung_Dx-*"))[0]
                if not (patient / "loop").is_symlink():
                    (patient / "loop").symlink_to(patient.parent, target_is_directory=True)
                done.append("symlink loop")
            else:
                empty = root / "Lung-PET-CT-Dx" / f"Lung_Dx-G09{i:02d}"
                empty.mkdir(exist_ok=True)
                done.append("empty patient folder")
        context = f"seed {SEED} case {i}: {done}"
        annotations = root / tiny.annotations.relative_to(tiny.root)
        try:
            patients, summary = _quiet(scan_tcia, root, annotations)
        except ValueError as err:
            assert str(root) in str(err), f"{context}: error does not name the root: {err}"
            continue
        except Exception as err:  # pragma: no cover - the failure report
            pytest.fail(f"{context}: {type(err).__name__}: {err}")
        assert summary.report()
        for rec in patients.values():
            assert rec.ct_files and all(Path(f).is_file() for f in rec.ct_files), context
            for b in rec.boxes:
                assert all(math.isfinite(v) for v in (b.xmin, b.ymin, b.xmax, b.ymax)), (context, b)
                assert 0 < b.area < math.inf, (context, b)


def _mutate_csv(text: str, rng: np.random.Generator) -> str:
    lines = text.splitlines()
    for _ in range(int(rng.integers(1, 5))):
        r = int(rng.integers(len(lines)))
        cells = lines[r].split(",")
        c = int(rng.integers(len(cells)))
        cells[c] = CELLS[int(rng.integers(len(CELLS)))] if r else (
            ["Age", "\uff2eewPatientID", "Ａge", "", "Sex"][int(rng.integers(5))])
        lines[r] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _check_clinical(path: Path, context: str) -> None:
    try:
        table = _quiet(read_clinical, path)
    except ValueError as err:
        assert path.name in str(err), f"{context}: error does not name the file: {err}"
        return
    except Exception as err:  # pragma: no cover - the failure report
        pytest.fail(f"{context}: {type(err).__name__}: {err}")
    for name in table.schema.numerical:
        x = np.asarray(table.frame[name], dtype=np.float64)
        assert (np.isfinite(x) | np.isnan(x)).all(), (context, name, x)
    if len(table.frame):
        schema = _quiet(table.schema.fit, table.frame)
        assert all(math.isfinite(c.mean) and math.isfinite(c.std) and c.std > 0
                   for c in schema.columns), context
        num, cat = _quiet(schema.encode, table.frame)
        assert (np.isfinite(num) | np.isnan(num)).all(), context


def test_fuzz_read_clinical_on_real_rows_and_phantom_xlsx(tiny, tmp_path):
    from tests.data.test_clinical import HEADER, ROWS

    xlsx = tiny.clinical.read_bytes()
    for i in range(BUDGET):
        rng = np.random.default_rng([SEED, 5, i])
        case = tmp_path / f"case{i}"
        case.mkdir()
        op = rng.integers(4)
        if op == 0:
            path = case / "clinical.csv"
            path.write_text(_mutate_csv(HEADER + ROWS, rng), encoding="utf-8")
            what = path.read_text()
        elif op == 1:
            path = case / "clinical.csv"
            path.write_bytes((HEADER + ROWS).encode(["utf-16", "utf-8", "cp1252"][int(rng.integers(3))],
                                                    errors="replace"))
            what = _mutate_bytes(path, rng)
        elif op == 2:
            path = case / "clinical.xlsx"
            path.write_bytes(xlsx)
            what = _mutate_bytes(path, rng)
        else:
            path = case / ("clinical.xlsx" if rng.random() < 0.5 else "clinical.csv")
            path.write_bytes(xlsx if path.suffix == ".csv" else (HEADER + ROWS).encode())
            what = "content of the other format"
        _check_clinical(path, f"seed {SEED} case {i}: {what!r}")

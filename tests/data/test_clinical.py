"""The clinical sheet's quirks and the TableSchema round trip."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pandas")

from mmscale.data import PAPER_FEATURES, TableSchema, read_clinical  # noqa: E402

HEADER = ("No.,NewPatientID,Sex,Age,weight (kg),T-Stage,N-Stage,\uff2d-Stage,"
          "Histopathological grading,Smoking History\n")
# The first rows of the real sheet, plus one with a leading space and gaps.
ROWS = ("1,A0001,M,58.0,65.0,2b,3,1b,G3,1\n"
        "2,A0002,F,53.0,55.0,2b,1,0,NaN,0\n"
        "3,G0001,M,,70,is,0,1, G1,1\n")


@pytest.fixture()
def sheet(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text(HEADER + ROWS, encoding="utf-8")
    return path


def test_real_first_rows(sheet):
    table = read_clinical(sheet)
    assert "M-Stage" in table.frame.columns  # full-width U+FF2D matched
    assert list(table.frame.index) == ["A0001", "A0002", "G0001"]
    a1 = table.row("Lung_Dx-A0001")
    assert a1["Sex"] == "M" and a1["Age"] == 58.0 and a1["weight (kg)"] == 65.0
    assert (a1["T-Stage"], a1["N-Stage"], a1["M-Stage"], a1["Smoking History"]) == ("2b", "3", "1b", "1")
    assert table.row("A0002")["Histopathological grading"] is None
    g1 = table.row("G0001")
    assert g1["Age"] is None and g1["Histopathological grading"] == "G1" and g1["T-Stage"] == "is"
    assert table.row("B0001") is None
    assert table.issues == []


def test_xlsx_with_mixed_int_and_str_cells_matches_csv(phantom):
    xlsx = read_clinical(phantom.clinical)
    assert len(xlsx.frame) == 8
    csv_path = phantom.clinical.with_suffix(".csv")
    import pandas as pd

    pd.read_excel(phantom.clinical, dtype=object).to_csv(csv_path, index=False)
    from_csv = read_clinical(csv_path)
    names = [n for n, _ in PAPER_FEATURES]
    assert xlsx.frame[names].astype(str).equals(from_csv.frame[names].astype(str))
    # Integer-valued stages written as numbers come back as the same strings as text ones.
    assert set(xlsx.frame["N-Stage"].dropna()) <= {"0", "1", "2", "3"}


def test_unknown_stage_reported_and_missing(quirky_phantom):
    with pytest.warns(UserWarning, match="unknown T-Stage value '5x'"):
        table = read_clinical(quirky_phantom.clinical)
    assert len(table.issues) == 1 and "A0001" in table.issues[0]
    assert table.row("A0001")["T-Stage"] is None
    assert len(table.frame) == 7  # one patient has no row (dropped on purpose)


def test_bad_sheets(tmp_path):
    with pytest.raises(ValueError, match="path"):
        read_clinical(tmp_path / "missing.xlsx")
    bad = tmp_path / "x.csv"
    bad.write_text("ID,Sex\nA0001,M\n")
    with pytest.raises(ValueError, match="NewPatientID"):
        read_clinical(bad)
    bad.write_text("NewPatientID,Sex\nA0001,M\n")
    with pytest.raises(ValueError, match="Age"):
        read_clinical(bad)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="xlsx or .csv"):
        read_clinical(tmp_path / "x.json")


def test_schema_fit_encode_and_checkpoint_round_trip(sheet):
    table = read_clinical(sheet)
    schema = table.schema.fit(table.frame.loc[["A0001", "A0002"]])  # the "training split"
    assert schema.numerical == ["Age", "weight (kg)"]
    assert schema.categorical == ["Sex", "T-Stage", "N-Stage", "M-Stage", "Smoking History"]
    assert schema.cardinalities == (2, 1, 2, 2, 2)
    num, cat = schema.encode(table.frame)
    assert num.dtype == np.float32 and num.shape == (3, 2)
    assert cat.dtype == np.int64 and cat.shape == (3, 5)
    np.testing.assert_allclose(num[:2, 0], [1.0, -1.0])  # (58, 53) standardised
    assert math.isnan(num[2, 0])  # G0001's missing age
    assert cat[2].tolist() == [1, -1, -1, -1, 1]  # unseen T "is", N "0", M "1" -> -1
    # Plain types only: JSON and torch.load(weights_only=True) both take it.
    d = schema.to_dict()
    assert TableSchema.from_dict(json.loads(json.dumps(d))) == schema
    buf = io.BytesIO()
    torch.save({"table_schema": d}, buf)
    buf.seek(0)
    back = TableSchema.from_dict(torch.load(buf, weights_only=True)["table_schema"])
    np.testing.assert_array_equal(back.encode(table.frame)[1], cat)


def test_schema_errors():
    with pytest.raises(ValueError, match="columns"):
        TableSchema([("Age", "ordinal")])
    with pytest.raises(ValueError, match="columns: expected \\(name, kind\\) pairs or ColumnSpec, got 'Age'"):
        TableSchema(["Age", "Sex"])  # names without kinds used to become columns 'A' of kind 'g'
    with pytest.raises(ValueError, match="fit"):
        TableSchema().encode([{}])
    with pytest.raises(ValueError, match="zero rows"):
        TableSchema().fit([])
    with pytest.raises(ValueError, match="Sex"):
        TableSchema([("Sex", "categorical")]).fit([{"Age": 3}])


values = st.one_of(st.none(), st.integers(0, 4), st.sampled_from(["1a", " 2b", "is", "M", "F", "nan"]),
                   st.sampled_from(["inf", "-inf", "1e400", "57 years", "63,5", 1e308, -1.7e308]),
                   st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=40, deadline=None)
@given(train=st.lists(st.fixed_dictionaries({n: values for n, _ in PAPER_FEATURES}), min_size=1, max_size=6),
       rows=st.lists(st.fixed_dictionaries({n: values for n, _ in PAPER_FEATURES}), max_size=6))
def test_encode_invariants(train, rows):
    """Whatever the cells (inf, huge, unparseable), statistics are finite and codes in range."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = TableSchema().fit(train)
        num, cat = schema.encode(rows)
    assert all(math.isfinite(c.mean) and math.isfinite(c.std) and c.std > 0 for c in schema.columns)
    assert num.shape == (len(rows), 2) and cat.shape == (len(rows), 5)
    assert np.all(np.isnan(num) | np.isfinite(num))
    for j, card in enumerate(schema.cardinalities):
        assert np.all((cat[:, j] >= -1) & (cat[:, j] < card))


def _csv(tmp_path, body, name="clinical.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes((HEADER + body).encode(encoding))
    return path


def test_unparseable_and_non_finite_numbers_are_reported_per_patient_and_column(tmp_path):
    path = _csv(tmp_path, "1,A0001,M,57 years,65,2b,3,1b,G3,1\n"
                          "2,A0002,F,\"63,5\",inf,2b,1,0,G3,0\n"
                          "3,A0003,F,nan,1e400,2b,1,0,G3,0\n"
                          "4,A0004,F,1_000,-Infinity,2b,1,0,G3,0\n"
                          "5,A0005,F,61.5,,2b,1,0,G3,0\n")
    with pytest.warns(UserWarning, match="A0001: Age value '57 years' is not a number"):
        table = read_clinical(path)
    assert table.issues == [
        "A0001: Age value '57 years' is not a number; treated as missing",
        "A0002: Age value '63,5' is not a number; treated as missing",
        "A0003: Age value 'nan' is not a finite number; treated as missing",
        "A0004: Age value '1_000' is not a number; treated as missing",
        "A0002: weight (kg) value 'inf' is not a finite number; treated as missing",
        "A0003: weight (kg) value '1e400' is not a finite number; treated as missing",
        "A0004: weight (kg) value '-Infinity' is not a finite number; treated as missing",
    ]
    assert table.frame["Age"].tolist()[-1] == 61.5 and table.frame["Age"].isna().sum() == 4
    assert table.frame["weight (kg)"].isna().sum() == 4  # three bad, one empty (not an issue)
    schema = table.schema.fit(table.frame)
    assert all(math.isfinite(c.mean) and math.isfinite(c.std) for c in schema.columns)


def test_fit_never_gives_a_non_finite_statistic():
    rows = [{"Age": v} for v in (float("inf"), 1.7e308, 1.7e308, -1e308, 60.0)]
    with pytest.warns(UserWarning, match="'Age': 1 unusable value"):
        schema = TableSchema([("Age", "numerical")]).fit(rows)
    (col,) = schema.columns
    assert math.isfinite(col.mean) and math.isfinite(col.std) and col.std > 0
    with pytest.warns(UserWarning, match="float32 range"):
        num, _ = TableSchema([("Age", "numerical")]).fit([{"Age": 60}, {"Age": 70}]).encode([{"Age": 1e300}])
    assert np.isnan(num).all()
    with pytest.raises(ValueError, match="'Age' has mean inf"):
        TableSchema.from_dict({"columns": [{"name": "Age", "kind": "numerical", "mean": float("inf")}]})
    with pytest.raises(ValueError, match="bad column entry"):
        TableSchema.from_dict({"columns": [{"kind": "numerical"}]})


def test_unreadable_sheets_give_one_error_naming_the_file(tmp_path):
    cases = {
        "csv_named.xlsx": (HEADER + ROWS).encode(),
        "empty.csv": b"",
        "empty.xlsx": b"",
        "latin1.csv": (HEADER.replace("\uff2d", "M") + ROWS.replace("M,", "\xc9,")).encode("latin-1"),
        "binary.csv": b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe\x00",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"cannot read clinical sheet .*{name}"):
            read_clinical(tmp_path / name)
    # A workbook whose compressed sheet is damaged (zlib / BadZipFile inside openpyxl).
    import pandas as pd

    good = tmp_path / "good.xlsx"
    pd.DataFrame({"NewPatientID": ["A0001"]}).to_excel(good, index=False)
    data = bytearray(good.read_bytes())
    data[len(data) // 2: len(data) // 2 + 40] = b"\x00" * 40
    (tmp_path / "damaged.xlsx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.xlsx"):
        read_clinical(tmp_path / "damaged.xlsx")
    header_only = _csv(tmp_path, "", name="header_only.csv")
    with pytest.raises(ValueError, match="header_only.csv.*no data rows"):
        read_clinical(header_only)


def test_wrong_sheet_lists_the_sheets(tmp_path):
    import pandas as pd

    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as w:
        pd.DataFrame({"note": ["see next sheet"]}).to_excel(w, sheet_name="notes", index=False)
        pd.read_csv(io.StringIO(HEADER + ROWS), dtype=object).to_excel(w, sheet_name="clinical", index=False)
    with pytest.raises(ValueError, match=r"no 'NewPatientID' column.*sheets in the file: \['notes', 'clinical'\]"):
        read_clinical(path)
    with pytest.raises(ValueError, match=r"sheet: 'clin' is not a sheet of 'book.xlsx'; its sheets: \['notes', 'clinical'\]"):
        read_clinical(path, sheet="clin")
    assert list(read_clinical(path, sheet="clinical").frame.index) == ["A0001", "A0002", "G0001"]


def test_headers_colliding_after_unicode_normalisation_are_an_error(tmp_path):
    path = tmp_path / "clash.csv"
    path.write_text(HEADER.rstrip("\n") + ",\uff2eewPatientID\n" + ROWS.replace("\n", ",X\n"), encoding="utf-8")
    with pytest.raises(ValueError, match="same after Unicode normalisation.*NewPatientID"):
        read_clinical(path)
    path.write_text(HEADER.rstrip("\n") + ",Age\n" + ROWS.replace("\n", ",1\n"), encoding="utf-8")
    with pytest.raises(ValueError, match="same after Unicode normalisation.*Age"):
        read_clinical(path)

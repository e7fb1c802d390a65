"""The clinical sheet's quirks and the TableSchema round trip."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pandas")

from mmscale.data import PAPER_FEATURES, TableSchema, read_clinical  # noqa: E402

HEADER = ("No.,NewPatientID,Sex,Age,weight (kg),T-Stage,N-Stage,\uff2d-Stage,"
          "Histopathological grading,Smoking History\n")
# The first rows of the real sheet (DATASET.md), plus one with a leading space and gaps.
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
    with pytest.raises(ValueError, match="fit"):
        TableSchema().encode([{}])
    with pytest.raises(ValueError, match="zero rows"):
        TableSchema().fit([])
    with pytest.raises(ValueError, match="Sex"):
        TableSchema([("Sex", "categorical")]).fit([{"Age": 3}])


values = st.one_of(st.none(), st.integers(0, 4), st.sampled_from(["1a", " 2b", "is", "M", "F", "nan"]),
                   st.floats(allow_nan=True, allow_infinity=False, width=32))


@settings(max_examples=40, deadline=None)
@given(train=st.lists(st.fixed_dictionaries({n: values for n, _ in PAPER_FEATURES}), min_size=1, max_size=6),
       rows=st.lists(st.fixed_dictionaries({n: values for n, _ in PAPER_FEATURES}), max_size=6))
def test_encode_invariants(train, rows):
    schema = TableSchema().fit(train)
    num, cat = schema.encode(rows)
    assert num.shape == (len(rows), 2) and cat.shape == (len(rows), 5)
    assert np.all(np.isnan(num) | np.isfinite(num))
    for j, card in enumerate(schema.cardinalities):
        assert np.all((cat[:, j] >= -1) & (cat[:, j] < card))

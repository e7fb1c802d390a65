"""The clinical sheet: reading it robustly and encoding it for the model.

The real sheet mixes ints and strings in one column (T stage ``2`` next to ``"2b"``),
has leading spaces (``" G1"``), missing values, and a full-width ``Ｍ`` (U+FF2D) in
``Ｍ-Stage``. Column names are matched after Unicode NFKC normalisation, which maps the
full-width letter to ``M``; values are kept as clean strings (categorical) or floats
(numerical). ``pandas`` is imported inside the functions (optional ``data`` extra).
"""

from __future__ import annotations

import functools
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmscale.data.tcia import normalize_patient_id

__all__ = [
    "ColumnSpec",
    "ClinicalTable",
    "PAPER_FEATURES",
    "TableSchema",
    "read_clinical",
]

#: The paper's 7 features, by canonical (NFKC) column name, with their kind.
PAPER_FEATURES: tuple[tuple[str, str], ...] = (
    ("Sex", "categorical"),
    ("Age", "numerical"),
    ("weight (kg)", "numerical"),
    ("T-Stage", "categorical"),
    ("N-Stage", "categorical"),
    ("M-Stage", "categorical"),
    ("Smoking History", "categorical"),
)

# Values the collection is documented to hold; anything else is reported and treated as
# missing rather than becoming a category of its own.
_KNOWN_VALUES = {
    "Sex": {"M", "F"},
    "T-Stage": {"1", "1a", "1b", "1c", "2", "2a", "2b", "3", "4", "is"},
    "N-Stage": {"0", "1", "2", "3"},
    "M-Stage": {"0", "1", "1a", "1b", "1c", "2", "3"},
    "Smoking History": {"0", "1"},
}
_ID_COLUMN = "NewPatientID"


def _canonical(name: Any) -> str:
    """Column name after NFKC (full-width ``Ｍ`` -> ``M``) and whitespace clean-up."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", str(name))).strip()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in {"", "nan", "na", "n/a", "none"}


def _clean_category(value: Any) -> str | None:
    """``2`` / ``2.0`` / ``" 2 "`` -> ``"2"``; ``" G1"`` -> ``"G1"``; missing -> ``None``."""
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = unicodedata.normalize("NFKC", str(value)).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text


_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MISSING_TEXT = {"", "na", "n/a", "none"}  # written-out "missing"; "nan"/"inf" are reported


def _parse_number(value: Any) -> tuple[float, str | None]:
    """``(number, None)``, ``(nan, None)`` when missing, or ``(nan, why)`` when unusable.

    Only plain decimal numbers are numbers: ``"57 years"``, ``"63,5"``, ``"1_000"``,
    booleans and anything non-finite (``inf``, ``nan`` text, ``1e400``) are not.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return float("nan"), None  # an empty cell
    if isinstance(value, (bool, np.bool_)):
        return float("nan"), f"{value!r} is not a number"
    if isinstance(value, (int, float, np.integer, np.floating)):
        x = float(value)
    else:
        text = unicodedata.normalize("NFKC", str(value)).strip()
        if text.lower() in _MISSING_TEXT:
            return float("nan"), None
        if text.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
            return float("nan"), f"{str(value)!r} is not a finite number"
        if not _NUMBER_RE.fullmatch(text):
            return float("nan"), f"{str(value)!r} is not a number"
        x = float(text)
    if not math.isfinite(x):
        return float("nan"), f"{str(value)!r} is not a finite number"
    return x, None


def _clean_number(value: Any) -> float:
    """The number, or NaN when missing or unusable (see :func:`_parse_number`)."""
    return _parse_number(value)[0]


def _numbers(values: Sequence[Any], column: str, where: str) -> np.ndarray:
    """float64 numbers of one column; unusable values become NaN, with one warning."""
    parsed = [_parse_number(v) for v in values]
    bad = [f"row {i}: {why}" for i, (_, why) in enumerate(parsed) if why is not None]
    if bad:
        warnings.warn(f"{where}: column {column!r}: {len(bad)} unusable value(s) treated as missing ("
                      + "; ".join(bad[:5]) + ")", stacklevel=3)
    return np.array([x for x, _ in parsed], dtype=np.float64)


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of finite ``x``, scaled first so that huge values cannot overflow."""
    if x.size == 0:
        return 0.0, 1.0
    scale = float(np.abs(x).max()) or 1.0
    y = x / scale
    mean = float(y.mean()) * scale
    std = float(y.std()) * scale if x.size > 1 else 1.0
    return mean, (std if std > 1e-8 * max(1.0, abs(mean)) else 1.0)


@dataclass
class ColumnSpec:
    """One encoded column of a :class:`TableSchema`.

    Attributes:
        name: canonical column name (``"M-Stage"``, ASCII ``M``).
        kind: ``"numerical"`` or ``"categorical"``.
        vocabulary: categorical values in code order (code = index), fitted.
        mean, std: numerical normalisation, fitted (``(x - mean) / std``).

    Example:
        >>> ColumnSpec("T-Stage", "categorical", vocabulary=["1a", "2b"]).vocabulary.index("2b")
        1
    """

    name: str
    kind: str
    vocabulary: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0


class TableSchema:
    """Column names, kinds, category vocabularies and numeric normalisation.

    Fit it on the training split only (:meth:`fit`), store :meth:`to_dict` in the
    checkpoint (plain types, loadable with ``torch.load(weights_only=True)``), and
    encode any rows with :meth:`encode`.

    Args:
        columns: ``(name, kind)`` pairs; kind is ``"numerical"`` or ``"categorical"``.
            Names are matched after NFKC normalisation (``"Ｍ-Stage"`` == ``"M-Stage"``).

    Raises:
        ValueError: an entry that is not a ``(name, kind)`` pair, an unknown kind, a
            duplicate or empty column list.

    Example:
        >>> schema = TableSchema([("Age", "numerical"), ("Sex", "categorical")])
        >>> schema = schema.fit([{"Age": 60, "Sex": "M"}, {"Age": 70, "Sex": "F"}])
        >>> num, cat = schema.encode([{"Age": None, "Sex": "X"}])
        >>> num.tolist(), cat.tolist()
        ([[nan]], [[-1]])
    """

    def __init__(self, columns: Iterable[tuple[str, str]] | Iterable[ColumnSpec] = PAPER_FEATURES):
        specs = []
        for col in columns:
            if not isinstance(col, ColumnSpec) and not (
                    isinstance(col, (tuple, list)) and len(col) == 2 and isinstance(col[0], str)):
                raise ValueError(f"columns: expected (name, kind) pairs or ColumnSpec, got {col!r}")
            spec = col if isinstance(col, ColumnSpec) else ColumnSpec(_canonical(col[0]), col[1])
            if spec.kind not in ("numerical", "categorical"):
                raise ValueError(f"columns: kind of {spec.name!r} must be 'numerical' or "
                                 f"'categorical', got {spec.kind!r}")
            specs.append(spec)
        names = [s.name for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"columns: expected distinct column names, got {names}")
        self.columns: list[ColumnSpec] = specs
        self.fitted = False

    @property
    def numerical(self) -> list[str]:
        """Numerical column names, in encoding order."""
        return [c.name for c in self.columns if c.kind == "numerical"]

    @property
    def categorical(self) -> list[str]:
        """Categorical column names, in encoding order."""
        return [c.name for c in self.columns if c.kind == "categorical"]

    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Vocabulary size of each categorical column (for the model's config)."""
        return tuple(len(c.vocabulary) for c in self.columns if c.kind == "categorical")

    def _values(self, rows, name):
        if hasattr(rows, "columns"):  # a DataFrame: look the column up by canonical name
            lookup = {_canonical(c): c for c in rows.columns}
            if name not in lookup:
                raise ValueError(f"rows: missing column {name!r} (have {list(rows.columns)})")
            return list(rows[lookup[name]])
        out = []
        for row in rows:
            lookup = {_canonical(k): k for k in row}
            if name not in lookup:
                raise ValueError(f"rows: a row has no column {name!r} (has {list(row)})")
            out.append(row[lookup[name]])
        return out

    def fit(self, rows: Any) -> TableSchema:
        """Fit vocabularies (sorted observed values) and mean/std on training rows.

        Args:
            rows: a DataFrame or a sequence of mappings (column -> value).

        Returns:
            A new fitted schema (``self`` is unchanged).

        Numbers that are unparseable or not finite are left out of the statistics
        with a warning naming the column; mean and std are always finite.

        Raises:
            ValueError: a column is missing from ``rows``, ``rows`` is empty, or a
                column's values are too large for a finite mean/std.
        """
        rows = rows if hasattr(rows, "columns") else list(rows)
        if len(rows) == 0:
            raise ValueError("rows: cannot fit a schema on zero rows")
        out = []
        for c in self.columns:
            values = self._values(rows, c.name)
            if c.kind == "categorical":
                vocab = sorted({v for v in map(_clean_category, values) if v is not None})
                out.append(ColumnSpec(c.name, c.kind, vocabulary=vocab))
            else:
                x = _numbers(values, c.name, "rows")
                x = x[~np.isnan(x)]
                mean, std = _mean_std(x)
                if not (math.isfinite(mean) and math.isfinite(std)):
                    raise ValueError(f"rows: column {c.name!r} gives a non-finite mean/std "
                                     f"({mean}, {std}); its values are out of range")
                out.append(ColumnSpec(c.name, c.kind, mean=mean, std=std))
        schema = TableSchema(out)
        schema.fitted = True
        return schema

    def encode(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Encode rows for the model.

        Args:
            rows: a DataFrame or a sequence of mappings, ``N`` rows.

        Returns:
            ``(numerical, categorical)``: float32 ``[N, n_num]`` normalised with NaN for
            missing, and int64 ``[N, n_cat]`` codes with -1 for missing or unknown values.
            Unparseable, non-finite or (once normalised) out-of-float32-range numbers are
            missing, with a warning naming the column; no value is ever infinite.

        Raises:
            ValueError: the schema is not fitted, or a column is missing from ``rows``.
        """
        if not self.fitted:
            raise ValueError("rows: fit the schema on the training split before encode()")
        rows = rows if hasattr(rows, "columns") else list(rows)
        n = len(rows)
        num = np.full((n, len(self.numerical)), np.nan, dtype=np.float32)
        cat = np.full((n, len(self.categorical)), -1, dtype=np.int64)
        i_num = i_cat = 0
        for c in self.columns:
            values = self._values(rows, c.name)
            if c.kind == "numerical":
                x = _numbers(values, c.name, "rows")
                with np.errstate(over="ignore", invalid="ignore"):
                    z = ((x - c.mean) / c.std).astype(np.float32)
                huge = np.isnan(z) & ~np.isnan(x)
                huge |= np.isinf(z)
                if huge.any():
                    warnings.warn(f"rows: column {c.name!r}: {int(huge.sum())} value(s) beyond the "
                                  f"float32 range once normalised (e.g. {float(x[huge][0])!r}); "
                                  "treated as missing", stacklevel=2)
                    z[huge] = np.nan
                num[:, i_num] = z
                i_num += 1
            else:
                index = {v: k for k, v in enumerate(c.vocabulary)}
                cat[:, i_cat] = [index.get(_clean_category(v), -1) for v in values]
                i_cat += 1
        return num, cat

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form (str, float, bool, list, dict) for ``weights_only`` checkpoints."""
        return {
            "fitted": bool(self.fitted),
            "columns": [
                {"name": c.name, "kind": c.kind, "vocabulary": [str(v) for v in c.vocabulary],
                 "mean": float(c.mean), "std": float(c.std)}
                for c in self.columns
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSchema:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``data`` lacks a ``"columns"`` list, a column entry is malformed,
                or a numerical column's mean/std is not finite (std not positive).
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("columns"), list):
            raise ValueError("data: expected a dict with a 'columns' list (from to_dict())")
        specs = []
        for c in data["columns"]:
            try:
                spec = ColumnSpec(str(c["name"]), str(c["kind"]), [str(v) for v in c.get("vocabulary", [])],
                                  float(c.get("mean", 0.0)), float(c.get("std", 1.0)))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise ValueError(f"data: bad column entry {c!r} ({type(err).__name__}: {err})") from err
            if not (math.isfinite(spec.mean) and math.isfinite(spec.std) and spec.std > 0):
                raise ValueError(f"data: column {spec.name!r} has mean {spec.mean} and std {spec.std}; "
                                 "expected finite values and a positive std")
            specs.append(spec)
        schema = cls(specs)
        schema.fitted = bool(data.get("fitted", True))
        return schema

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TableSchema) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"TableSchema(numerical={self.numerical}, categorical={self.categorical}, "
                f"fitted={self.fitted})")


@dataclass
class ClinicalTable:
    """A cleaned clinical sheet.

    Attributes:
        frame: pandas DataFrame indexed by normalised patient ID (``"A0001"``), columns
            renamed to canonical names (``"M-Stage"``); categorical columns hold clean
            strings or ``None``, numerical columns floats or NaN.
        schema: an unfitted :class:`TableSchema` for the requested features.
        issues: what was odd (unknown stage strings set to missing, bad IDs, ...).

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"Sex": ["M"]}, index=pd.Index(["A0001"], name="patient_id"))
        >>> ClinicalTable(frame, TableSchema([("Sex", "categorical")])).row("Lung_Dx-A0001")
        {'Sex': 'M'}
    """

    frame: Any
    schema: TableSchema
    issues: list[str] = field(default_factory=list)

    def row(self, patient_id: str) -> dict[str, Any] | None:
        """The row of one patient as a dict, or ``None`` when the sheet has none."""
        pid = normalize_patient_id(patient_id) or patient_id
        if pid not in self.frame.index:
            return None
        return {k: (None if _is_missing(v) else v) for k, v in self.frame.loc[pid].items()}


def _is_excel(path: Path) -> bool:
    return path.suffix.lower() in (".xlsx", ".xlsm", ".xls")


def _sheet_names(path: Path) -> list[str]:
    if not _is_excel(path):
        return []
    import pandas as pd

    try:
        with pd.ExcelFile(path) as book:
            return [str(n) for n in book.sheet_names]
    except Exception as err:  # openpyxl/xlrd/zipfile raise many types for a damaged file
        raise ValueError(f"path: cannot read clinical sheet {str(path)!r} as a spreadsheet "
                         f"({type(err).__name__}: {err})") from err


def _read_sheet(path: Path, sheet: str | int):
    """The raw sheet, every cell as written; one ``ValueError`` naming the file otherwise."""
    import pandas as pd

    suffix = path.suffix.lower()
    if _is_excel(path):
        names = _sheet_names(path)
        ok = sheet in names if isinstance(sheet, str) else (
            isinstance(sheet, int) and not isinstance(sheet, bool) and -len(names) <= sheet < len(names))
        if not ok:
            raise ValueError(f"sheet: {sheet!r} is not a sheet of {path.name!r}; its sheets: {names}")
        kind = "a spreadsheet"
        read = functools.partial(pd.read_excel, path, sheet_name=sheet, dtype=object)
    elif suffix in (".csv", ".txt"):
        kind = "UTF-8 CSV"
        # Only empty cells are missing here: "nan"/"inf" text must reach the checks.
        read = functools.partial(pd.read_csv, path, dtype=object, keep_default_na=False,
                                 na_values=[""], encoding="utf-8-sig")
    else:
        raise ValueError(f"path: expected an .xlsx or .csv clinical sheet, got {path.name!r}")
    try:
        # dtype=object keeps each cell as written (2 and "2b" side by side, " G1").
        return read()
    except Exception as err:  # BadZipFile, zlib.error, KeyError, UnicodeDecodeError, ParserError, ...
        raise ValueError(f"path: cannot read clinical sheet {str(path)!r} as {kind} "
                         f"({type(err).__name__}: {err})") from err


def read_clinical(
    path: str | os.PathLike,
    features: Sequence[tuple[str, str]] = PAPER_FEATURES,
    *,
    sheet: str | int = 0,
) -> ClinicalTable:
    """Read the clinical sheet (xlsx or csv) into a clean table and an unfitted schema.

    Args:
        path: ``statistics-clinical-20201221.xlsx`` or a UTF-8 csv with the same columns.
        features: ``(column, kind)`` pairs to encode; default the paper's 7 features.
        sheet: the spreadsheet's sheet, by name or position (ignored for csv).

    Returns:
        A :class:`ClinicalTable`. Unknown stage strings (not in the documented
        vocabularies) and numbers that are unparseable (``"57 years"``, ``"63,5"``) or
        not finite (``inf``, ``nan`` text) become missing and are listed in ``issues``
        per patient and column, with a warning.

    Raises:
        ValueError: the file does not exist, has an unsupported suffix or cannot be read
            as what its suffix says (a CSV named ``.xlsx``, a damaged workbook, a CSV
            that is not UTF-8, an empty file; the message names the file); ``sheet`` is
            not one of its sheets (the message lists them); it has no data rows, headers
            that coincide after Unicode normalisation, no ``NewPatientID`` column (the
            message lists the columns and sheets) or no requested feature column; or it
            repeats a patient.

    Example:
        >>> table = read_clinical("statistics-clinical-20201221.xlsx")  # doctest: +SKIP
        >>> schema = table.schema.fit(table.frame.loc[train_ids])  # doctest: +SKIP
    """
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"path: clinical sheet {str(path)!r} does not exist")
    raw = _read_sheet(path, sheet)
    where = f"{path.name!r}" + (f" (sheet {sheet!r})" if _is_excel(path) else "")
    if raw.shape[0] == 0:
        raise ValueError(f"path: clinical sheet {str(path)!r} has no data rows")
    canonical = [_canonical(c) for c in raw.columns]
    clashes = {c: [r for r, k in zip(raw.columns, canonical, strict=True) if k == c]
               for c in set(canonical) if canonical.count(c) > 1}
    # pandas renames a repeated CSV header "Age" to "Age.1": that is a repeat too.
    for r, k in zip(raw.columns, canonical, strict=True):
        m = re.fullmatch(r"(.*)\.(\d+)", k)
        if m and m.group(1) in canonical and isinstance(r, str):
            clashes.setdefault(m.group(1), [m.group(1)]).append(r)
    if clashes:
        raise ValueError(f"path: {where} has column headers that are the same after Unicode "
                         f"normalisation: {sorted(clashes.items())}; rename or remove the repeats")
    raw = raw.rename(columns=dict(zip(raw.columns, canonical, strict=True)))
    if _ID_COLUMN not in raw.columns:
        sheets = _sheet_names(path)
        raise ValueError(f"path: {where} has no {_ID_COLUMN!r} column (columns: "
                         f"{list(raw.columns)})" + (f"; sheets in the file: {sheets}" if sheets else ""))
    schema = TableSchema(features)
    missing = [c.name for c in schema.columns if c.name not in raw.columns]
    if missing:
        raise ValueError(f"path: {where} lacks feature column(s) {missing} (columns: "
                         f"{list(raw.columns)})")
    issues = []
    ids = []
    for i, value in enumerate(raw[_ID_COLUMN]):
        pid = normalize_patient_id(str(value)) if not _is_missing(value) else None
        if pid is None:
            issues.append(f"row {i + 2}: patient ID {value!r} is not like 'A0001'; row ignored")
        ids.append(pid)
    raw = raw.assign(**{_ID_COLUMN: ids})
    raw = raw[raw[_ID_COLUMN].notna()]
    dup = raw[_ID_COLUMN][raw[_ID_COLUMN].duplicated()].tolist()
    if dup:
        raise ValueError(f"path: patient ID(s) {dup[:5]} appear more than once in {path.name!r}")
    frame = pd.DataFrame(index=pd.Index(raw[_ID_COLUMN].tolist(), name="patient_id"))
    for col in raw.columns:
        if col == _ID_COLUMN:
            continue
        spec = next((c for c in schema.columns if c.name == col), None)
        if spec is not None and spec.kind == "numerical":
            parsed = [_parse_number(v) for v in raw[col]]
            for pid, (_, why) in zip(frame.index, parsed, strict=True):
                if why is not None:
                    issues.append(f"{pid}: {col} value {why}; treated as missing")
            frame[col] = [x for x, _ in parsed]
            continue
        values = [_clean_category(v) for v in raw[col]]
        known = _KNOWN_VALUES.get(col)
        if known is not None:
            for j, (pid, v) in enumerate(zip(frame.index, values, strict=True)):
                if v is not None and v not in known:
                    issues.append(f"{pid}: unknown {col} value {v!r}; treated as missing")
                    values[j] = None
        frame[col] = pd.Series(values, index=frame.index, dtype=object)
    for msg in issues:
        warnings.warn(f"{path.name}: {msg}", stacklevel=2)
    return ClinicalTable(frame=frame, schema=schema, issues=issues)

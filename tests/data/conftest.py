"""Shared tiny phantoms for the data tests (session-scoped: written once per run)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("pandas")
pytest.importorskip("openpyxl")

from mmscale.data import make_phantom  # noqa: E402

# Small but complete: A, G, A, B, G, A, E, A patients; 48 px slices, 8 slices each.
TINY = dict(n_patients=8, size=48, slices=8)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    """Descriptive names, a duplicate-z patient, a PET series, a second CT series."""
    root = tmp_path_factory.mktemp("phantom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_phantom(root, seed=3, duplicate_z_patients=1, pet_fraction=0.5,
                            second_ct_fraction=0.5, **TINY)


@pytest.fixture(scope="session")
def quirky_phantom(tmp_path_factory):
    """Classic names, shuffled file names, a corrupt file, a missing clinical row, an
    unknown stage string and an empty annotation folder."""
    root = tmp_path_factory.mktemp("quirky")
    return make_phantom(root, seed=3, naming="classic", shuffle_names=True, corrupt_files=1,
                        drop_clinical_rows=1, unknown_stage_rows=1, empty_annotation_folders=1,
                        clinical_format="csv", **TINY)

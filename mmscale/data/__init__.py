"""Lung-PET-CT-Dx data: DICOM reading, clinical table encoding, crops, caching, phantom.

Needs the optional extra ``pip install 'mmscale[data]'`` (pydicom, openpyxl, pandas,
tqdm); those are imported only inside the functions that use them, so this package
imports without them. ``data`` never imports ``mmscale.models``.

Example:
    >>> from mmscale.data import make_phantom, prepare, CropConfig
    >>> paths = make_phantom("/tmp/phantom", n_patients=20)  # doctest: +SKIP
    >>> data = prepare(paths.data_dir, "/tmp/cache", annotations=paths.annotations,
    ...                clinical=paths.clinical, crop=CropConfig(12, 128, 32))  # doctest: +SKIP
"""

from mmscale.data.cache import LesionDataset, PreparedData, atomic_write_bytes, cache_key, prepare
from mmscale.data.clinical import (
    PAPER_FEATURES,
    ClinicalTable,
    ColumnSpec,
    TableSchema,
    read_clinical,
)
from mmscale.data.crops import (
    CropConfig,
    center_crop,
    crop_volume,
    lesion_center,
    random_crop,
    resample_pet_to_ct,
)
from mmscale.data.dicom import (
    AXIAL,
    CT_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    SECONDARY_CAPTURE,
    CTSeries,
    PETSeries,
    load_ct_series,
    load_pet_series,
    read_header,
)
from mmscale.data.patient import NoLesionBoxError, PatientCrop, crop_patient
from mmscale.data.phantom import PhantomPaths, make_phantom
from mmscale.data.tcia import (
    CLASS_NAMES,
    Box,
    PatientRecord,
    ScanSummary,
    normalize_patient_id,
    read_annotations,
    scan_tcia,
)

__all__ = [
    "AXIAL",
    "CLASS_NAMES",
    "CT_IMAGE_STORAGE",
    "PAPER_FEATURES",
    "PET_IMAGE_STORAGE",
    "SECONDARY_CAPTURE",
    "Box",
    "CTSeries",
    "ClinicalTable",
    "ColumnSpec",
    "CropConfig",
    "LesionDataset",
    "NoLesionBoxError",
    "PETSeries",
    "PatientCrop",
    "PatientRecord",
    "PhantomPaths",
    "PreparedData",
    "ScanSummary",
    "TableSchema",
    "atomic_write_bytes",
    "cache_key",
    "center_crop",
    "crop_patient",
    "crop_volume",
    "lesion_center",
    "load_ct_series",
    "load_pet_series",
    "make_phantom",
    "normalize_patient_id",
    "prepare",
    "random_crop",
    "read_annotations",
    "read_clinical",
    "read_header",
    "resample_pet_to_ct",
    "scan_tcia",
]

"""Class probabilities for one patient: a DICOM folder plus a clinical row.

Examples:
    python examples/lung_pet_ct/predict.py --checkpoint runs/lung_pet_ct/fold0/best.pt \\
        --patient-dir ~/tcia/Lung-PET-CT-Dx/Lung_Dx-A0001 \\
        --annotations ~/tcia/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020 \\
        --clinical ~/tcia/statistics-clinical-20201221.xlsx
    python examples/lung_pet_ct/predict.py --checkpoint best.pt --patient-dir DIR \\
        --row '{"Sex": "M", "Age": 61, "weight (kg)": 70, "T-Stage": "2a", "N-Stage": 1,
                "M-Stage": 0, "Smoking History": 1}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer import predict_patient  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, predict, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--patient-dir", required=True, help="one patient's DICOM folder")
    p.add_argument("--annotations", help="the annotation archive or the patient's folder in it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clinical", help="clinical sheet; the patient's row is looked up by ID")
    g.add_argument("--row", type=json.loads, help="clinical values as JSON")
    a = p.parse_args(argv)
    result = predict_patient(a.checkpoint, a.patient_dir, a.annotations, a.row, a.clinical)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"error: {err}")

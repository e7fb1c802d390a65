"""Class probabilities for one patient: a DICOM folder plus a clinical row.

Examples:
    python examples/lung_pet_ct/predict.py --checkpoint runs/lung_pet_ct/fold0/best.pt \\
        --patient-dir ~/tcia/Lung-PET-CT-Dx/Lung_Dx-A0001 \\
        --annotations ~/tcia/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020 \\
        --clinical ~/tcia/statistics-clinical-20201221.xlsx
    python examples/lung_pet_ct/predict.py --checkpoint best.pt --patient-dir DIR \\
        --annotations ANNOTATIONS --row '{"Sex": "M", "Age": 61, "weight (kg)": 70, "T-Stage": "2a", "N-Stage": 1,
                "M-Stage": 0, "Smoking History": 1}'
"""

from lung_trainer.cli import predict_main, run_main

if __name__ == "__main__":
    run_main(predict_main)

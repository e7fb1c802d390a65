"""Train MMCAF-Net on Lung-PET-CT-Dx (or, with no arguments, on a built-in phantom).

Examples:
    python examples/lung_pet_ct/train.py                     # phantom demo, tiny preset
    python examples/lung_pet_ct/train.py --modality image    # one modality only
    python examples/lung_pet_ct/train.py --data-dir ~/tcia \\
        --annotations ~/tcia/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020 \\
        --clinical ~/tcia/statistics-clinical-20201221.xlsx --folds 5 --out runs/real
    torchrun --nproc_per_node=2 examples/lung_pet_ct/train.py --out runs/ddp
    python examples/lung_pet_ct/train.py --out runs/x --resume  # continue a killed run
"""

from lung_trainer.cli import run_main, train_main

if __name__ == "__main__":
    run_main(train_main)

"""Command lines of ``train.py``, ``evaluate.py`` and ``predict.py``."""

from __future__ import annotations

import argparse
import json
import sys

from .config import MODALITIES, TASKS, TrainConfig
from .engine import run
from .inference import evaluate_checkpoint, predict_patient

__all__ = ["evaluate_main", "parse_train_args", "predict_main", "train_main"]

TRAIN_DESCRIPTION = """Train MMCAF-Net on Lung-PET-CT-Dx (or, with no arguments, on a built-in phantom).

Examples:
    python examples/lung_pet_ct/train.py                     # phantom demo, tiny preset
    python examples/lung_pet_ct/train.py --modality image    # one modality only
    python examples/lung_pet_ct/train.py --data-dir ~/tcia \\
        --annotations ~/tcia/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020 \\
        --clinical ~/tcia/statistics-clinical-20201221.xlsx --folds 5 --out runs/real
    torchrun --nproc_per_node=2 examples/lung_pet_ct/train.py --out runs/ddp
    python examples/lung_pet_ct/train.py --out runs/x --resume  # continue a killed run
"""

EVALUATE_DESCRIPTION = """Evaluate a trained checkpoint on one split of its run (metrics table, JSON, PNGs).

Example:
    python examples/lung_pet_ct/evaluate.py --checkpoint runs/lung_pet_ct/fold0/best.pt --split test
"""

PREDICT_DESCRIPTION = """Class probabilities for one patient: a DICOM folder plus a clinical row.

Examples:
    python examples/lung_pet_ct/predict.py --checkpoint runs/lung_pet_ct/fold0/best.pt \\
        --patient-dir ~/tcia/Lung-PET-CT-Dx/Lung_Dx-A0001 \\
        --annotations ~/tcia/Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020 \\
        --clinical ~/tcia/statistics-clinical-20201221.xlsx
    python examples/lung_pet_ct/predict.py --checkpoint best.pt --patient-dir DIR \\
        --row '{"Sex": "M", "Age": 61, "weight (kg)": 70, "T-Stage": "2a", "N-Stage": 1,
                "M-Stage": 0, "Smoking History": 1}'
"""


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> :class:`TrainConfig` (defaults live in the dataclass)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="TCIA download (DICOM tree); omit for the phantom")
    g.add_argument("--clinical", help="statistics-clinical-20201221.xlsx (or csv)")
    g.add_argument("--annotations", help="annotation archive folder (VOC XML per SOPInstanceUID)")
    g.add_argument("--phantom-patients", type=int, default=d.phantom_patients)
    g.add_argument("--phantom-seed", type=int, default=d.phantom_seed)
    g.add_argument("--phantom-dir", help="where the phantom lives (default under the cache root)")
    g.add_argument("--cache-root", help="phantoms and prepared caches (default $MMSCALE_CACHE or ~/.cache/mmscale)")
    g.add_argument("--cache-dir", help="prepared cache folder (default: derived from the inputs)")
    g.add_argument("--depth", type=int, help="slices per crop (phantom 8, real 12)")
    g.add_argument("--resize", type=int, help="slice resize before cropping (phantom 128, real 208)")
    g.add_argument("--crop", type=int, help="in-plane crop (phantom 24, real 192)")
    g.add_argument("--margin", type=int, help="random-crop margin kept in the cache")
    g.add_argument("--pet", action="store_true", help="add a PET channel resampled onto the CT grid")
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=sorted(TASKS), default=d.task)
    g.add_argument("--modality", choices=MODALITIES, default=d.modality)
    g.add_argument("--folds", type=int, default=d.folds, help="1: train/val/test split; K: K-fold")
    g.add_argument("--fold", type=int, help="run only this fold")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction)
    g.add_argument("--val-fraction", type=float, default=d.val_fraction)
    g.add_argument("--out", default=d.out)
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--preset", choices=("tiny", "paper"), default=d.preset)
    g.add_argument("--model-overrides", type=json.loads, default={},
                   help='JSON MMCAFNetConfig overrides, e.g. \'{"drop_path_rate": 0}\'')
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    g.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation")
    g.add_argument("--amp", choices=("auto", "on", "off"), default=d.amp,
                   help="mixed precision (auto: CUDA fp16 only)")
    g.add_argument("--patience", type=int, default=d.patience, help="early stopping on val AUROC")
    g.add_argument("--freeze-epochs", type=int, default=d.freeze_epochs,
                   help="staged training: epochs with the image encoder frozen")
    g.add_argument("--modality-dropout", type=float, default=d.modality_dropout,
                   help="with --modality both: share of training samples shown one modality only")
    g.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g = p.add_argument_group("runs")
    g.add_argument("--resume", action="store_true", help="continue from OUT/fold*/checkpoint.pt")
    g.add_argument("--stop-after", type=int, help="stop after N epochs (to test --resume)")
    g.add_argument("--attention-patients", type=int, default=d.attention_patients)
    g.add_argument("--no-progress", dest="progress", action="store_false")
    args = vars(p.parse_args(argv))
    return TrainConfig(**args)



def train_main(argv: list[str] | None = None) -> dict | None:
    """Parse arguments and train."""
    return run(parse_train_args(argv))


def evaluate_main(argv: list[str] | None = None) -> None:
    """Parse arguments and evaluate."""
    p = argparse.ArgumentParser(description=EVALUATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or checkpoint.pt of a run")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    p.add_argument("--out", help="output folder (default: next to the checkpoint)")
    p.add_argument("--data-dir", help="override the run's data location (moved download)")
    p.add_argument("--clinical")
    p.add_argument("--annotations")
    p.add_argument("--cache-root")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    overrides = {k: v for k, v in {"data_dir": a.data_dir, "clinical": a.clinical,
                                   "annotations": a.annotations, "cache_root": a.cache_root}.items()
                 if v is not None}
    overrides["progress"] = a.progress
    evaluate_checkpoint(a.checkpoint, a.split, a.out, overrides)



def predict_main(argv: list[str] | None = None) -> dict:
    """Parse arguments, predict, print JSON."""
    p = argparse.ArgumentParser(description=PREDICT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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



def run_main(main) -> None:
    """Run a script's ``main`` and turn a :class:`ValueError` into one line on stderr and exit 1."""
    try:
        main()
    except ValueError as err:
        sys.exit(f"error: {err}")

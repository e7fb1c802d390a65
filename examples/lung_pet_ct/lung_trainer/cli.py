"""Command lines of ``train.py``, ``evaluate.py`` and ``predict.py``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .config import MODALITIES, NONFINITE_POLICIES, TASKS, TrainConfig
from .engine import run
from .inference import evaluate_checkpoint, predict_patient
from .rundir import RunError

__all__ = ["evaluate_main", "evaluate_parser", "json_object", "parse_train_args", "predict_main",
           "predict_parser", "run_main", "train_main", "train_parser"]

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
        --annotations ANNOTATIONS --row '{"Sex": "M", "Age": 61, "weight (kg)": 70, "T-Stage": "2a", "N-Stage": 1,
                "M-Stage": 0, "Smoking History": 1}'
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and ends every option's help with its default.

    Options whose help already says ``default`` are left as written (used where the
    default is not a plain value, e.g. "the phantom"); flags say ``(default: off)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def json_object(text: str) -> dict:
    """argparse type: a JSON object (``'{"key": value}'``), with a clear error otherwise.

    Raises:
        argparse.ArgumentTypeError: not JSON, or JSON that is not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg} at character {err.pos}): "
                                         f"{text!r}; expected an object like '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got "
                                         f"{type(value).__name__} {text!r}")
    return value


def train_parser() -> argparse.ArgumentParser:
    """The ``train.py`` command line (defaults come from :class:`TrainConfig`)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="train.py", description=TRAIN_DESCRIPTION, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="TCIA download (the DICOM tree) (default: none, the built-in phantom)")
    g.add_argument("--clinical", help="statistics-clinical-20201221.xlsx (or csv); needs --data-dir "
                                      "(default: none, no clinical table)")
    g.add_argument("--annotations", help="annotation archive folder (VOC XML per SOPInstanceUID); needs "
                                         "--data-dir (default: none)")
    g.add_argument("--phantom-patients", type=int, default=d.phantom_patients,
                   help="patients in the phantom used without --data-dir")
    g.add_argument("--phantom-seed", type=int, default=d.phantom_seed, help="the phantom's random seed")
    g.add_argument("--phantom-dir", help="where the phantom lives (default: under the cache root)")
    g.add_argument("--cache-root", help="folder for phantoms and prepared caches "
                                        "(default: $MMSCALE_CACHE or ~/.cache/mmscale)")
    g.add_argument("--cache-dir", help="the prepared-crop cache folder (default: derived from the inputs "
                                       "under the cache root)")
    g.add_argument("--depth", type=int, help="slices per crop (default: phantom 8, real data 12)")
    g.add_argument("--resize", type=int, help="slice size after resizing, before cropping "
                                              "(default: phantom 128, real data 208)")
    g.add_argument("--crop", type=int, help="in-plane crop fed to the network (default: phantom 24, real data 192)")
    g.add_argument("--margin", type=int, help="extra pixels kept around the crop for random shifts "
                                              "(default: phantom 4, real data the whole resized slice)")
    g.add_argument("--pet", action="store_true", help="add a PET channel resampled onto the CT grid")
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=sorted(TASKS), default=d.task,
                   help="ag: adenocarcinoma (A) vs squamous cell carcinoma (G); 4class: A/B/E/G")
    g.add_argument("--modality", choices=MODALITIES, default=d.modality, help="inputs the model gets")
    g.add_argument("--folds", type=int, default=d.folds,
                   help="1: one train/val/test split; K: K-fold cross-validation (test = fold k)")
    g.add_argument("--fold", type=int, help="run only this fold (default: all folds)")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction, help="test share with --folds 1")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="validation share of the non-test patients")
    g.add_argument("--out", default=d.out, help="output folder (one run per folder)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="one seed for split, initialisation, sampling, augmentation, dropout")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--preset", choices=("tiny", "paper"), default=d.preset, help="MMCAFNet.from_preset name")
    g.add_argument("--model-overrides", type=json_object, default={},
                   help='MMCAFNetConfig fields to change, as a JSON object, e.g. \'{"drop_path_rate": 0}\'')
    g.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (early stopping may end sooner)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per batch, per process")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="linear learning-rate warm-up before the cosine decay")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps,
                   help="batches whose gradients are summed per optimizer step")
    g.add_argument("--amp", choices=("auto", "on", "off"), default=d.amp,
                   help="mixed precision: auto = float16 on CUDA only; on = float16 on CUDA, bfloat16 on CPU")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: epochs without a validation AUROC gain")
    g.add_argument("--freeze-epochs", type=int, default=d.freeze_epochs,
                   help="staged training: epochs with the image encoder frozen")
    g.add_argument("--modality-dropout", type=float, default=d.modality_dropout,
                   help="with --modality both: share of training samples shown one modality only")
    g.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight the loss by inverse class frequency (default: weighted)")
    g.add_argument("--loss", choices=("ce", "focal"), default=d.loss,
                   help="ce: cross-entropy on one logit per class; focal: the published head, one logit "
                        "with a binary focal loss (alpha 0.25, gamma 2; binary tasks only)")
    g.add_argument("--on-nonfinite", choices=NONFINITE_POLICIES, default=d.on_nonfinite,
                   help="a training batch with a non-finite input or loss: stop the run, or skip the "
                        "batch (counted in the log); it never reaches the weights or BatchNorm statistics")
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes")
    g = p.add_argument_group("runs")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its fold*/checkpoint.pt (only --epochs, --patience "
                        "and data locations may change)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files are removed first)")
    g.add_argument("--stop-after", type=int, help="stop after N epochs, as if killed (default: never)")
    g.add_argument("--attention-patients", type=int, default=d.attention_patients,
                   help="validation patients that get an attention-map PNG")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: bars shown)")
    return p


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> :class:`TrainConfig`."""
    return TrainConfig(**vars(train_parser().parse_args(argv)))


def train_main(argv: list[str] | None = None) -> dict | None:
    """Parse arguments and train."""
    return run(parse_train_args(argv))


def evaluate_parser() -> argparse.ArgumentParser:
    """The ``evaluate.py`` command line."""
    p = argparse.ArgumentParser(prog="evaluate.py", description=EVALUATE_DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or checkpoint.pt of a run (required)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                   help="which of the run's own patient sets to evaluate")
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--data-dir", help="where the DICOM tree is now, if it moved (default: the run's)")
    p.add_argument("--clinical", help="where the clinical sheet is now (default: the run's)")
    p.add_argument("--annotations", help="where the annotation archive is now (default: the run's)")
    p.add_argument("--cache-root", help="where phantoms and caches are now (default: the run's)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (default: bars shown)")
    return p


def evaluate_main(argv: list[str] | None = None) -> dict:
    """Parse arguments and evaluate."""
    a = evaluate_parser().parse_args(argv)
    overrides = {k: v for k, v in {"data_dir": a.data_dir, "clinical": a.clinical,
                                   "annotations": a.annotations, "cache_root": a.cache_root}.items()
                 if v is not None}
    overrides["progress"] = a.progress
    return evaluate_checkpoint(a.checkpoint, a.split, a.out, overrides)


def predict_parser() -> argparse.ArgumentParser:
    """The ``predict.py`` command line."""
    p = argparse.ArgumentParser(prog="predict.py", description=PREDICT_DESCRIPTION,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or checkpoint.pt of a run (required)")
    p.add_argument("--patient-dir", required=True, help="one patient's DICOM folder (required)")
    p.add_argument("--annotations", help="the annotation archive or the patient's folder in it; places "
                                         "the crop on the lesion (default: none)")
    p.add_argument("--center-crop", action="store_true",
                   help="without a lesion box, crop the volume centre instead of refusing (the run "
                        "trained on lesion-centred crops: expect a different answer)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clinical", help="clinical sheet; the patient's row is looked up by ID (default: none)")
    g.add_argument("--row", type=json_object,
                   help="clinical values as a JSON object keyed by the schema's column names "
                        "(default: none)")
    return p


def predict_main(argv: list[str] | None = None) -> dict:
    """Parse arguments, predict, print JSON."""
    a = predict_parser().parse_args(argv)
    result = predict_patient(a.checkpoint, a.patient_dir, a.annotations, a.row, a.clinical,
                             center_crop=a.center_crop)
    print(json.dumps(result, indent=2))
    return result


def run_main(main) -> None:
    """Run a script's ``main``; a refusal or failure ends with one line on stderr and exit code 1.

    ``ValueError`` (bad arguments or data), :class:`RunError` (a busy run folder, a
    failed write, a non-finite batch) and ``OSError`` (out of space, read-only, ...)
    never reach the user as a traceback. Warnings print as ``warning: ...`` lines.
    """
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        main()
    except (ValueError, RunError) as err:
        sys.exit(f"error: {err}")
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        sys.exit(f"error: {err.strerror or err}{where}")
    except KeyboardInterrupt:
        sys.exit("interrupted")

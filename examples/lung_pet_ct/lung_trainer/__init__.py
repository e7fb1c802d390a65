"""The Lung-PET-CT-Dx example trainer as an importable package.

``train.py``, ``evaluate.py`` and ``predict.py`` beside this package are thin command
lines over it. Modules, one concern each:

* :mod:`.config`: :class:`TrainConfig`, everything a run depends on;
* :mod:`.cli`: the three command lines;
* :mod:`.runtime`: process placement (one process or ``torchrun``) and logging;
* :mod:`.data`: the phantom, the prepared cache, patient splits, encoded subsets;
* :mod:`.engine`: the model, one fold's training loop, checkpoints, the whole run;
* :mod:`.metrics`: the paper's metrics and their table;
* :mod:`.reporting`: ``metrics.json``, ``predictions.csv`` and the plots;
* :mod:`.inference`: evaluating a checkpoint and predicting one patient.

The run is resumable bit-exactly: the sampler order and the crop augmentation are
pure functions of ``(seed, epoch)``, and the global RNG states (dropout, stochastic
depth) travel in the checkpoint as tensors and lists so that
``torch.load(weights_only=True)`` reads it.
"""

from .config import MODALITIES, TASKS, TrainConfig
from .engine import build_model, modality_dropout, run
from .inference import evaluate_checkpoint, predict_patient
from .metrics import METRIC_KEYS, compute_metrics, format_metrics

__all__ = [
    "METRIC_KEYS",
    "MODALITIES",
    "TASKS",
    "TrainConfig",
    "build_model",
    "compute_metrics",
    "evaluate_checkpoint",
    "format_metrics",
    "modality_dropout",
    "predict_patient",
    "run",
]

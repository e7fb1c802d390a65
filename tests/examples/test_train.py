"""The Lung-PET-CT-Dx trainer end to end on a tiny phantom, plus its metric helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.examples.conftest import run_script, small_args

KEYS = ("auroc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv")


def test_run_writes_metrics_plots_and_weights_only_checkpoints(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(KEYS) <= set(metrics) and metrics["positive_class"] == "G"
    for key in KEYS:
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    for png in ("roc.png", "confusion.png"):
        assert (trained / png).stat().st_size > 1000
    assert len(list((trained / "attention").glob("attention_*.png"))) == 2
    state = torch.load(trained / "fold0" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["finished"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "table_schema", "config"} <= set(state)
    from mmscale.data import TableSchema
    from mmscale.models import MMCAFNet

    model = MMCAFNet.from_checkpoint(trained / "fold0" / "best.pt")
    schema = TableSchema.from_dict(model.table_schema)
    assert schema.fitted and model.config.num_numerical == len(schema.numerical)
    assert set(state["split"]) == {"train", "val", "test"}
    assert not set(state["split"]["train"]) & set(state["split"]["test"])


def test_evaluate_and_predict_scripts(trained, shared_dirs, tmp_path):
    phantom, _ = shared_dirs
    ckpt = trained / "fold0" / "best.pt"
    proc = run_script("evaluate.py", "--checkpoint", str(ckpt), "--split", "val", "--out",
                      str(tmp_path / "ev"), "--no-progress")
    assert "AUROC" in proc.stdout
    assert set(KEYS) <= set(json.loads((tmp_path / "ev" / "metrics.json").read_text()))
    patient = next((phantom / "Lung-PET-CT-Dx").glob("Lung_Dx-G0001"))
    proc = run_script("predict.py", "--checkpoint", str(ckpt), "--patient-dir", str(patient),
                      "--annotations", str(next(phantom.glob("*Annotations*"))),
                      "--clinical", str(next(phantom.glob("*.xlsx"))))
    out = json.loads(proc.stdout)
    assert out["patient_id"] == "G0001" and out["lesion_centred"] and out["clinical_row"]
    assert set(out["probabilities"]) == {"A", "G"}
    assert abs(sum(out["probabilities"].values()) - 1.0) < 1e-4


def test_clear_errors(tmp_path):
    from lung_trainer import evaluate_checkpoint, run
    from lung_trainer.cli import parse_train_args as parse_args

    (tmp_path / "readme.txt").write_text("not dicom")
    with pytest.raises(ValueError, match="not a TCIA download"):
        run(parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--cache-root", str(tmp_path / "c"), "--no-progress"]))
    with pytest.raises(ValueError, match="checkpoint"):
        evaluate_checkpoint(tmp_path / "missing.pt")


def test_compute_metrics_matches_sklearn_definitions():
    from lung_trainer import compute_metrics, format_metrics
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60)
    probs[np.arange(60), y] += 0.3 * rng.random(60)
    probs /= probs.sum(1, keepdims=True)
    m = compute_metrics(y, probs, ("A", "B", "E", "G"))
    cm = confusion_matrix(y, probs.argmax(1))
    for k, c in enumerate("ABEG"):
        tp = cm[k, k]
        fn, fp = cm[k].sum() - tp, cm[:, k].sum() - tp
        tn = cm.sum() - tp - fn - fp
        pc = m["per_class"][c]
        assert pc["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert pc["specificity"] == pytest.approx(tn / (tn + fp))
        assert pc["ppv"] == pytest.approx(tp / (tp + fp))
        assert pc["npv"] == pytest.approx(tn / (tn + fn))
    assert m["acc"] == pytest.approx(np.trace(cm) / cm.sum())
    assert m["sensitivity"] == pytest.approx(np.mean([m["per_class"][c]["sensitivity"] for c in "ABEG"]))
    table = format_metrics(m, "t")
    assert "macro" in table and "SPECIFICITY" in table
    binary = compute_metrics(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]]),
                             ("A", "G"))
    assert binary["auroc"] == 0.75 and binary["sensitivity"] == 0.5 and binary["specificity"] == 0.5


def test_splits_are_patient_level_and_stratified():
    from lung_trainer import TrainConfig
    from lung_trainer.data import make_splits

    ids = [f"A{i:04d}" for i in range(30)] + [f"G{i:04d}" for i in range(10)]
    labels = [0] * 30 + [1] * 10
    splits = make_splits(ids, labels, TrainConfig(folds=5))
    tests = [p for s in splits for p in s.test]
    assert sorted(tests) == sorted(ids)  # every patient tested exactly once
    for s in splits:
        assert not (set(s.train) & set(s.val)) and not (set(s.train) & set(s.test))
        assert sum(p[0] == "G" for p in s.test) == 2
    with pytest.raises(ValueError, match="too small"):
        make_splits(ids[:32], labels[:32], TrainConfig(folds=5))


def test_bad_config():
    from lung_trainer import TrainConfig

    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="3class").validate()
    with pytest.raises(ValueError, match="modality"):
        TrainConfig(modality="pet").validate()
    with pytest.raises(ValueError, match="data_dir"):
        TrainConfig(clinical="x.xlsx").validate()


def test_table_modality_trains(shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args

    phantom, cache = shared_dirs
    run(parse_args(small_args(phantom, cache, tmp_path, "--modality", "table", "--epochs", "1")))
    assert json.loads((tmp_path / "metrics.json").read_text())["modality"] == "table"
    assert not list((tmp_path / "attention").glob("*.png"))  # no image, no attention map


def test_staged_training_keeps_the_image_encoder_frozen_first(shared_dirs, tmp_path):
    from lung_trainer import build_model, run
    from lung_trainer.cli import parse_train_args as parse_args

    from mmscale.data import TableSchema

    phantom, cache = shared_dirs
    cfg = parse_args(small_args(phantom, cache, tmp_path, "--freeze-epochs", "1", "--stop-after", "1"))
    assert run(cfg) is None  # stopped after epoch 1, still inside the frozen stage
    state = torch.load(tmp_path / "fold0" / "checkpoint.pt", weights_only=True)
    torch.manual_seed(cfg.seed)  # the trainer's seed for fold 0: the same initial weights
    init = build_model(cfg, TableSchema.from_dict(state["table_schema"]), 1).state_dict()
    encoder = [k for k in init if k.startswith(("backbone.", "neck_norm.", "pyramid."))]
    others = [k for k in init if k not in encoder and init[k].is_floating_point()]
    assert encoder and all(torch.equal(state["model"][k], init[k]) for k in encoder)
    assert any(not torch.equal(state["model"][k], init[k]) for k in others)
    assert state["history"][0]["frozen_encoder"] is True


def test_amp_and_gradient_accumulation_run(shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args

    phantom, cache = shared_dirs
    metrics = run(parse_args(small_args(phantom, cache, tmp_path, "--amp", "on", "--accum-steps", "2",
                                        "--epochs", "1", "--attention-patients", "0")))
    state = torch.load(tmp_path / "fold0" / "checkpoint.pt", weights_only=True)
    # 10 training patients in batches of 4 -> 3 batches -> 2 optimizer steps per epoch.
    assert state["scheduler"]["last_epoch"] == 2
    assert metrics["auroc"] is None or 0.0 <= metrics["auroc"] <= 1.0


def test_four_class_task_needs_enough_patients_per_class(shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args

    phantom, cache = shared_dirs
    with pytest.raises(ValueError, match="too small to stratify"):
        run(parse_args(small_args(phantom, cache, tmp_path, "--task", "4class")))


def test_modality_dropout_hides_one_modality_never_both():
    from lung_trainer import modality_dropout

    n = 400
    batch = {"volume": torch.rand(n, 1, 2, 4, 4), "numerical": torch.zeros(n, 2),
             "categorical": torch.zeros(n, 5, dtype=torch.long), "label": torch.zeros(n, dtype=torch.long)}
    assert modality_dropout(batch, 0.0) is batch
    out = modality_dropout(batch, 0.5)
    no_table = out["numerical"].isnan().all(1) & (out["categorical"] == -1).all(1)
    no_image = ~out["volume_present"]
    assert not (no_table & no_image).any()
    assert 0.15 < no_table.float().mean() < 0.35 and 0.15 < no_image.float().mean() < 0.35
    assert torch.equal(out["volume"], batch["volume"]) and not batch["numerical"].isnan().any()


def test_real_collection_arguments(shared_dirs, tmp_path):
    """--data-dir/--clinical/--annotations: the path taken for the real download."""
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args

    phantom, _ = shared_dirs
    args = small_args(phantom, tmp_path / "cache", tmp_path / "out", "--epochs", "1")
    args = args[4:]  # drop --phantom-dir/--phantom-patients: this is "real" data now
    cfg = parse_args(["--data-dir", str(phantom), "--clinical", str(next(phantom.glob("*.xlsx"))),
                      "--annotations", str(next(phantom.glob("*Annotations*"))), "--resize", "64",
                      *args])
    assert cfg.crop_config().resize == 64 and cfg.crop_config().depth == 4
    metrics = run(cfg)
    assert metrics["task"] == "ag" and (tmp_path / "out" / "metrics.json").is_file()

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
    for png in ("roc.png", "confusion.png", "learning_curve.png", "fold0/learning_curve.png"):
        assert (trained / png).stat().st_size > 1000
    ci = metrics["auroc_ci95"]
    assert ci["resamples"] == 2000 and ci["level"] == 0.95
    if metrics["auroc"] is not None and ci["resamples_used"]:
        assert ci["low"] <= metrics["auroc"] <= ci["high"]
    assert metrics["classes"] == {"A": "adenocarcinoma", "G": "squamous cell carcinoma"}
    assert [h["epoch"] for h in metrics["histories"]["fold 0"]] == [1, 2]
    fold = json.loads((trained / "fold0" / "metrics.json").read_text())
    att = fold["attention"]
    assert set(att["inside_outside_ratio"]) == {"A", "G"} and len(att["map_grid"]) == 3
    # (here the lesion boxes are larger than the 16-pixel test crops: no "outside", no ratio)
    assert all(v["n"] >= 0 for v in att["inside_outside_ratio"].values())
    assert metrics["attention"]["fold"] == 0
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
    with pytest.raises(ValueError, match="overwrite: --overwrite and --resume contradict"):
        TrainConfig(resume=True, overwrite=True).validate()
    with pytest.raises(ValueError, match="on_nonfinite"):
        TrainConfig(on_nonfinite="ignore").validate()


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


def test_auroc_rows_match_sklearn_and_the_bootstrap_interval_behaves():
    from lung_trainer.metrics import auroc_rows, bootstrap_auroc_ci
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (5, 40)).astype(bool)
    s = np.round(rng.random((5, 40)) + 0.3 * y, 1)  # rounded: many ties
    assert np.allclose(auroc_rows(y, s), [roc_auc_score(a, b) for a, b in zip(y, s, strict=True)])
    assert np.isnan(auroc_rows(np.zeros((1, 4), bool), np.ones((1, 4))))[0]

    def probs(score):
        return np.stack([1 - score, score], 1)

    y1 = rng.integers(0, 2, 45)
    p1 = probs(np.clip(0.25 + 0.5 * y1 + 0.3 * rng.standard_normal(45), 0, 1))
    small = bootstrap_auroc_ci(y1, p1)
    assert small == bootstrap_auroc_ci(y1, p1)  # seeded: reproducible
    assert small["low"] <= roc_auc_score(y1, p1[:, 1]) <= small["high"]
    y4, p4 = np.tile(y1, 4), np.tile(p1, (4, 1))  # same AUROC, 4x the patients: narrower
    big = bootstrap_auroc_ci(y4, p4)
    assert big["high"] - big["low"] < 0.75 * (small["high"] - small["low"])
    none = bootstrap_auroc_ci(np.zeros(6, int), probs(np.linspace(0, 1, 6)))
    assert none["resamples_used"] == 0 and np.isnan(none["low"])


def test_summary_spells_out_the_classes_and_explains_its_markers():
    from lung_trainer import compute_metrics, format_metrics

    m = compute_metrics(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]]),
                        ("A", "G"))
    table = format_metrics(m, "t")
    assert "G vs A" in table and "pos=" not in table
    assert "positive class G (squamous cell carcinoma), negative A (adenocarcinoma)" in table
    assert "95% CI" in table and "bootstrap" in table


def test_lesion_boxes_land_on_the_phantom_lesions(shared_dirs, tmp_path):
    """The box mapped into each evaluation crop covers the phantom lesion (brighter than the
    lung in a ring around the box)."""
    from lung_trainer.cli import parse_train_args as parse_args
    from lung_trainer.data import lesion_boxes_in_crop, load_data
    from lung_trainer.reporting import box_mask
    from lung_trainer.runtime import Runtime

    from mmscale.data import center_crop

    phantom, _ = shared_dirs
    # crops larger than the lesions (resize 96 of the 64-pixel slices: 1.5x, odd offsets)
    cfg = parse_args(["--phantom-dir", str(phantom), "--phantom-patients", "24", "--cache-root",
                      str(tmp_path), "--depth", "3", "--resize", "96", "--crop", "40", "--margin", "3",
                      "--no-progress"])
    data = load_data(cfg, Runtime())
    boxes = lesion_boxes_in_crop(cfg, data, data.patient_ids)
    assert sum(b is not None for b in boxes.values()) == sum(data.has_box) > 0
    brighter = []
    for pid, vol in zip(data.patient_ids, data.volumes, strict=True):
        if boxes[pid] is None:
            continue
        sl = center_crop(vol.astype(np.float32), data.crop.crop)[0, data.crop.depth // 2]
        inside = box_mask(boxes[pid], data.crop.crop)
        y0, x0, y1, x1 = boxes[pid]
        assert 0 < y0 < y1 < data.crop.crop - 1 and 0 < x0 < x1 < data.crop.crop - 1
        assert abs((y0 + y1) / 2 - (data.crop.crop - 1) / 2) <= 1 and abs((x0 + x1) / 2 - (data.crop.crop - 1) / 2) <= 1
        ring = box_mask((y0 - 4, x0 - 4, y1 + 4, x1 + 4), data.crop.crop) & ~inside  # lung around it
        brighter.append(sl[inside].mean() > sl[ring].mean() + 0.03)
    assert np.mean(brighter) >= 0.9


def test_attention_statistics_and_the_choice_of_patients():
    from lung_trainer.reporting import attention_box_stats, pick_both_classes

    gates = torch.full((3, 1, 2, 4, 4), 0.1)
    gates[0, 0, :, 1:3, 1:3] = 1.0  # patient 0 attends to its lesion (the middle 4x4 of 8x8)
    gates[1, 0, 0, 0, 0] = 0.3  # off the middle slice: patient 1 stays indifferent there
    gates[2, 0, 1] = 0.5
    box = (2.0, 2.0, 5.0, 5.0)
    stats = attention_box_stats(gates, [0, 1, 1], [box, box, None], ("A", "G"), (4, 8, 8))
    assert stats["inside_outside_ratio"]["A"] == {"mean": pytest.approx(10.0), "median": pytest.approx(10.0),
                                                  "n": 1}
    assert stats["inside_outside_ratio"]["G"]["n"] == 1 and stats["inside_outside_ratio"]["G"]["mean"] == 1.0
    assert stats["map_grid"] == [2, 4, 4] and -1 <= stats["mean_pairwise_correlation"] <= 1
    # the mean map (patient 0's lesion preference averaged with two indifferent maps) is
    # the same for both patients with a box
    base = stats["inside_outside_ratio_of_the_mean_map"]
    assert base["A"]["mean"] == pytest.approx(base["G"]["mean"]) and 1 < base["A"]["mean"] < 10
    assert pick_both_classes([0, 0, 0, 1, 1], 3) == [0, 3, 1]
    assert pick_both_classes([0, 0], 4) == [0, 1]


def test_focal_loss_trains_a_one_logit_head(shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args
    from lung_trainer.engine import probabilities

    from mmscale.models import MMCAFNet

    phantom, cache = shared_dirs
    metrics = run(parse_args(small_args(phantom, cache, tmp_path, "--loss", "focal", "--epochs", "1",
                                        "--attention-patients", "0")))
    assert metrics["auroc"] is None or 0.0 <= metrics["auroc"] <= 1.0
    model = MMCAFNet.from_checkpoint(tmp_path / "fold0" / "best.pt")
    assert model.config.num_classes == 1
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "patient_id,label,p_A,p_G"
    for row in rows[1:]:
        p_a, p_g = map(float, row.split(",")[2:])
        assert abs(p_a + p_g - 1) < 1e-5 and 0 < p_g < 1
    logits = torch.tensor([[0.0], [2.0]])
    assert torch.allclose(probabilities(logits), torch.tensor([[0.5, 0.5], [1 - torch.sigmoid(torch.tensor(2.0)),
                                                                            torch.sigmoid(torch.tensor(2.0))]]))
    assert torch.allclose(probabilities(torch.zeros(1, 3)), torch.full((1, 3), 1 / 3))


def test_loss_choice_is_checked():
    from lung_trainer import TrainConfig, build_model

    from mmscale.data import TableSchema

    with pytest.raises(ValueError, match="loss: 'focal' is the binary"):
        TrainConfig(loss="focal", task="4class").validate()
    with pytest.raises(ValueError, match="loss: expected one of"):
        TrainConfig(loss="mse").validate()
    cfg = TrainConfig(loss="ce", model_overrides={"num_classes": 1})
    with pytest.raises(ValueError, match="model_overrides: num_classes=1 does not fit --loss ce"):
        build_model(cfg, TableSchema().fit([{"Sex": "M", "Age": 60, "weight (kg)": 70, "T-Stage": "2a",
                                             "N-Stage": 1, "M-Stage": 0, "Smoking History": 1}]), 1)

"""The training engine: model construction, one fold's loop, checkpoints and the whole run."""

from __future__ import annotations

import contextlib
import io
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmscale.data import (
    PAPER_FEATURES,
    LesionDataset,
    PreparedData,
    TableSchema,
    atomic_write_bytes,
)
from mmscale.models import MMCAFNet

from .config import TrainConfig
from .data import Encoded, Split, load_data, make_splits, table_rows, task_patients
from .metrics import METRIC_KEYS, compute_metrics, format_metrics
from .reporting import plot_attention, write_report
from .runtime import Runtime, barrier, log, setup_runtime

__all__ = ["build_model", "forward", "lr_lambda", "modality_dropout", "predict_probs", "rng_state",
           "run", "save_checkpoint", "set_rng_state", "train_fold"]


def forward(model: torch.nn.Module, batch: dict, modality: str, device: torch.device) -> torch.Tensor:
    """Logits for a batch, feeding only the modalities the run uses."""
    vol = batch["volume"].to(device, non_blocking=True) if modality != "table" else None
    num = batch["numerical"].to(device) if modality != "image" else None
    cat = batch["categorical"].to(device) if modality != "image" else None
    present = batch.get("volume_present")
    present = present.to(device) if present is not None and vol is not None else None
    return model(vol, num, cat, present)


def modality_dropout(batch: dict, p: float) -> dict:
    """Hide one modality of some training samples (each with probability ``p / 2``).

    The table is the easier cue: without this the fusion leans on it before the image
    encoder has learnt anything. Hidden tables become all-missing (NaN / -1), hidden
    volumes ``volume_present=False``. Draws from the global torch RNG (checkpointed).
    """
    if p <= 0:
        return batch
    r = torch.rand(len(batch["label"]))
    no_table, no_image = r < p / 2, (r >= p / 2) & (r < p)
    out = dict(batch)
    out["numerical"] = batch["numerical"].masked_fill(no_table[:, None], float("nan"))
    out["categorical"] = batch["categorical"].masked_fill(no_table[:, None], -1)
    out["volume_present"] = ~no_image
    return out


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain lists (``weights_only``-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through a temp file + ``os.replace`` (never a half-written file)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio`` (per optimizer step)."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return fn


def build_model(cfg: TrainConfig, schema: TableSchema, in_channels: int) -> MMCAFNet:
    """The preset with the table dimensions of ``schema`` and the task's class count."""
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("in_channels", in_channels)
    overrides.setdefault("num_classes", len(cfg.classes))
    overrides.setdefault("num_numerical", len(schema.numerical))
    overrides.setdefault("categorical_cardinalities", tuple(max(1, c) for c in schema.cardinalities))
    return MMCAFNet.from_preset(cfg.preset, **overrides)


@torch.no_grad()
def predict_probs(model, dataset: LesionDataset, cfg: TrainConfig, rt: Runtime) -> np.ndarray:
    """Class probabilities ``[N, C]`` over a dataset (eval mode, centre crops)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(cfg.batch_size, 32), shuffle=False)
    outs = []
    for batch in loader:
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32,
                            enabled=rt.amp_dtype is not None):
            logits = forward(model, batch, cfg.modality, rt.device)
        outs.append(logits.float().softmax(-1).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(cfg.classes)), np.float32)


def _score(metrics: dict) -> float:
    return metrics["auroc"] if np.isfinite(metrics["auroc"]) else -1.0


def train_fold(cfg: TrainConfig, rt: Runtime, data: PreparedData, split: Split, fold: int) -> dict:
    """Train one fold to the end (or to ``stop_after``); returns its test metrics and preds.

    Writes ``out/fold<k>/checkpoint.pt`` every epoch, ``best.pt`` on each validation
    AUROC improvement, and on completion ``metrics.json``, ``predictions.csv``, ROC and
    confusion PNGs and attention PNGs.
    """
    from tqdm.auto import tqdm

    fold_dir = Path(cfg.out) / f"fold{fold}"
    ckpt_path, best_path = fold_dir / "checkpoint.pt", fold_dir / "best.pt"
    crop = data.crop
    schema = TableSchema(PAPER_FEATURES).fit(table_rows(data, split.train))
    train_set = Encoded(data, split.train, schema, cfg.classes)
    val_set = Encoded(data, split.val, schema, cfg.classes)
    test_set = Encoded(data, split.test, schema, cfg.classes)

    torch.manual_seed(cfg.seed + 1000 * fold)
    model = build_model(cfg, schema, crop.channels).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ds_train = train_set.dataset(crop.crop, train=True, seed=cfg.seed + 1000 * fold)
    per_rank = math.ceil(len(ds_train) / rt.world)
    steps_per_epoch = math.ceil(math.ceil(per_rank / cfg.batch_size) / cfg.accum_steps)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(total, int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    counts = np.bincount(train_set.labels, minlength=len(cfg.classes)).astype(np.float64)
    weight = (counts.sum() / (len(counts) * np.maximum(counts, 1))) if cfg.class_weights else None
    criterion = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weight, dtype=torch.float32, device=rt.device) if weight is not None else None)

    start, best, bad, history, finished = 0, -math.inf, 0, [], False
    if cfg.resume and rt.main:
        # a run killed while writing a checkpoint leaves its temp file (never a half
        # checkpoint.pt, which is replaced atomically): clear such leftovers
        for stale in fold_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
    if cfg.resume and ckpt_path.is_file():
        # On the CPU: RNG states must stay CPU tensors; the loaders move the rest.
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["split"] != split.to_dict():
            raise ValueError(f"resume: {ckpt_path} was trained on another split (seed/folds changed?)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best, bad = state["epoch"], state["best"], state["bad_epochs"]
        history, finished = list(state["history"]), bool(state["finished"])
        log(rt, f"fold {fold}: resumed from {ckpt_path} at epoch {start}")

    sampler = (torch.utils.data.DistributedSampler(ds_train, num_replicas=rt.world, rank=rt.rank,
                                                   shuffle=True, seed=cfg.seed + fold)
               if rt.distributed else None)
    ran = 0
    epoch_bar = tqdm(range(start, cfg.epochs), desc=f"fold {fold}", unit="epoch",
                     initial=start, total=cfg.epochs, disable=not (cfg.progress and rt.main))
    for epoch in epoch_bar:
        if finished:
            break
        if cfg.stop_after is not None and ran >= cfg.stop_after:
            log(rt, f"fold {fold}: stopping after {ran} epoch(s) as asked (--stop-after)")
            return {"interrupted": True}
        frozen = epoch < cfg.freeze_epochs
        model.set_image_encoder_trainable(not frozen)
        net = model
        if rt.distributed:
            # Rebuilt per epoch so that DDP tracks exactly the parameters trainable now.
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                find_unused_parameters=True)
            sampler.set_epoch(epoch)
        ds_train.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + fold * 1009 + epoch)
        loader = torch.utils.data.DataLoader(
            ds_train, batch_size=cfg.batch_size, sampler=sampler, shuffle=sampler is None,
            generator=None if sampler is not None else gen, num_workers=cfg.num_workers,
            # BatchNorm cannot train on a batch of one sample: drop such a last batch.
            drop_last=per_rank % cfg.batch_size == 1)
        net.train()
        total_loss, seen = 0.0, 0
        n_batches = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                   disable=not (cfg.progress and rt.main))
        opt.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            last = (step + 1) % cfg.accum_steps == 0 or step + 1 == n_batches
            sync = net.no_sync() if (rt.distributed and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32,
                                    enabled=rt.amp_dtype is not None):
                    if cfg.modality == "both":
                        batch = modality_dropout(batch, cfg.modality_dropout)
                    logits = forward(net, batch, cfg.modality, rt.device)
                    loss = criterion(logits.float(), batch["label"].to(rt.device))
                scaler.scale(loss / cfg.accum_steps).backward()
            if last:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
            total_loss += float(loss.detach()) * len(batch["label"])
            seen += len(batch["label"])
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        ran += 1

        stop = torch.zeros(1, device=rt.device)  # nccl broadcasts CUDA tensors only
        if rt.main:
            probs = predict_probs(model, val_set.dataset(crop.crop, False, 0), cfg, rt)
            val = compute_metrics(val_set.labels, probs, cfg.classes)
            improved = _score(val) > best + 1e-6
            if improved:
                best, bad = _score(val), 0
                save_checkpoint(best_path, {**model.checkpoint_state(schema.to_dict()),
                                            "train_config": asdict(cfg), "split": split.to_dict(),
                                            "epoch": epoch + 1, "classes": list(cfg.classes)})
            else:
                bad += 1
            history.append({"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
                            "val_auroc": val["auroc"], "val_acc": val["acc"],
                            "lr": float(sched.get_last_lr()[0]), "frozen_encoder": frozen})
            finished = bad >= cfg.patience or epoch + 1 == cfg.epochs
            epoch_bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}",
                                  val_auroc=f"{val['auroc']:.3f}", best=f"{best:.3f}")
            log(rt, f"fold {fold} epoch {epoch + 1}/{cfg.epochs}: train loss "
                    f"{total_loss / max(seen, 1):.4f}  val AUROC {val['auroc']:.3f}  ACC "
                    f"{val['acc']:.3f}{'  *' if improved else ''}")
            if bad >= cfg.patience:
                log(rt, f"fold {fold}: early stop, no val AUROC gain for {cfg.patience} epochs")
            stop[0] = float(finished)
        if rt.distributed:
            dist.broadcast(stop, src=0)
        finished = bool(stop[0])
        if rt.main:
            save_checkpoint(ckpt_path, {
                **model.checkpoint_state(schema.to_dict()),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                "best": best, "bad_epochs": bad, "history": history, "finished": finished,
                "train_config": asdict(cfg), "split": split.to_dict(), "classes": list(cfg.classes),
            })
        barrier(rt)
    if not rt.main:
        return {}

    best_model = MMCAFNet.from_checkpoint(best_path, map_location=rt.device) if best_path.is_file() else model
    probs = predict_probs(best_model, test_set.dataset(crop.crop, False, 0), cfg, rt)
    metrics = compute_metrics(test_set.labels, probs, cfg.classes)
    metrics["history"] = history
    write_report(fold_dir, test_set.labels, probs, test_set.ids, cfg.classes, metrics,
                 f"fold {fold} test")
    if cfg.modality != "table" and cfg.attention_patients > 0:
        k = min(cfg.attention_patients, len(val_set.ids))
        ds_val = val_set.dataset(crop.crop, False, 0)
        vols = torch.stack([ds_val[i]["volume"] for i in range(k)]).to(rt.device)
        plot_attention(best_model, vols, val_set.ids[:k], fold_dir / "attention")
    return {"metrics": metrics, "probs": probs, "labels": test_set.labels, "ids": test_set.ids}


def run(cfg: TrainConfig) -> dict | None:
    """Prepare data, train every fold, print and write the pooled test metrics.

    Returns:
        The metrics dict on rank 0 (``None`` on other ranks or when stopped early by
        ``stop_after``).

    Raises:
        ValueError: a bad config or unusable data.
    """
    cfg.validate()
    rt = setup_runtime(cfg)
    try:
        t0 = time.time()
        data = load_data(cfg, rt)
        ids, labels = task_patients(data, cfg.classes)
        splits = make_splits(ids, labels, cfg)
        log(rt, f"task {cfg.task} ({'/'.join(cfg.classes)}): {len(ids)} patients, "
                f"{len(splits)} fold(s), modality {cfg.modality}, world size {rt.world}, "
                f"device {rt.device}")
        folds = list(range(len(splits))) if cfg.fold is None else [cfg.fold]
        results = []
        for k in folds:
            split = splits[k]
            log(rt, f"fold {k}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} patients")
            res = train_fold(cfg, rt, data, split, k)
            if res.get("interrupted"):
                return None
            results.append(res)
        if not rt.main:
            return None
        probs = np.concatenate([r["probs"] for r in results])
        y = np.concatenate([r["labels"] for r in results])
        pids = [p for r in results for p in r["ids"]]
        metrics = compute_metrics(y, probs, cfg.classes)
        if len(results) > 1:
            for key in METRIC_KEYS:
                vals = [r["metrics"][key] for r in results]
                metrics[f"{key}_mean"] = float(np.nanmean(vals))
                metrics[f"{key}_std"] = float(np.nanstd(vals))
        metrics["per_fold"] = [{k: r["metrics"][k] for k in METRIC_KEYS} for r in results]
        metrics["task"], metrics["modality"] = cfg.task, cfg.modality
        metrics["wall_time_s"] = round(time.time() - t0, 1)
        write_report(Path(cfg.out), y, probs, pids, cfg.classes, metrics,
                     f"{cfg.task} / {cfg.modality} (held-out test)")
        # The first fold's attention PNGs next to the pooled report.
        att = Path(cfg.out) / "attention"
        att.mkdir(parents=True, exist_ok=True)
        for png in (Path(cfg.out) / f"fold{folds[0]}" / "attention").glob("*.png"):
            (att / png.name).write_bytes(png.read_bytes())
        log(rt, "\n" + format_metrics(metrics, f"held-out test metrics ({len(y)} patients, "
                                              f"{len(results)} fold(s)):"))
        log(rt, f"wrote {Path(cfg.out) / 'metrics.json'} (wall time {metrics['wall_time_s']} s)")
        return metrics
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


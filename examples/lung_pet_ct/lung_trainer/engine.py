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
)
from mmscale.models import MMCAFNet

from .config import TrainConfig, resume_changes
from .data import (
    Encoded,
    Split,
    cache_root,
    lesion_boxes_in_crop,
    load_data,
    make_splits,
    phantom_root,
    table_rows,
    task_patients,
)
from .metrics import METRIC_KEYS, compute_metrics, format_metrics
from .reporting import (
    attention_box_stats,
    attention_gates,
    pick_both_classes,
    plot_attention,
    write_report,
)
from .rundir import RunError, RunLock, check_writable, claim_run_folder, write_output
from .runtime import Runtime, barrier, log, setup_runtime

__all__ = ["build_criterion", "build_model", "forward", "load_checkpoint", "lr_lambda", "modality_dropout",
           "nonfinite_input", "output_logits", "predict_probs", "probabilities", "rng_state", "run",
           "save_checkpoint", "set_rng_state", "train_fold"]


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


def save_checkpoint(path: Path, state: dict) -> Path:
    """``torch.save`` through a temp file + ``os.replace`` (never a half-written file).

    Raises:
        RunError: the write failed (out of space, read-only); the previous file is intact.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    return write_output(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on the CPU, with one clear error for a bad file.

    Raises:
        ValueError: the file is missing, damaged, not a checkpoint of this trainer, or
            holds objects ``weights_only`` refuses.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint: {str(path)!r} does not exist")
    try:
        # On the CPU: RNG states must stay CPU tensors; the loaders move the rest.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many types; all mean "unreadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint: {str(path)!r} cannot be read ({type(err).__name__}: "
                         f"{first[:200]}); it is damaged or not a checkpoint of this trainer") from None
    if not isinstance(state, dict) or "train_config" not in state or "split" not in state:
        raise ValueError(f"checkpoint: {str(path)!r} was not written by this trainer")
    return state


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio`` (per optimizer step)."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return fn


def output_logits(cfg: TrainConfig) -> int:
    """Logits of the head: one for the focal loss, one per class for cross-entropy."""
    return 1 if cfg.loss == "focal" else len(cfg.classes)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``[B, C]`` from ``[B, C]`` logits, or from one logit ``[B, 1]``
    (the probability of the second class, a sigmoid) as ``[B, 2]``."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return logits.softmax(-1)


def build_criterion(cfg: TrainConfig, labels: np.ndarray, rt: Runtime):
    """The loss: ``(logits, labels) -> scalar``; class weights for cross-entropy only."""
    if cfg.loss == "focal":
        from mmscale.models import BinaryFocalLoss

        focal = BinaryFocalLoss(alpha=0.25, gamma=2.0)
        if cfg.class_weights:
            log(rt, "--loss focal: classes are weighted by the focal loss's alpha (0.25 for the "
                    "positive class), not by inverse frequency")
        return lambda logits, y: focal(logits[:, 0], y.float())
    counts = np.bincount(labels, minlength=len(cfg.classes)).astype(np.float64)
    weight = (counts.sum() / (len(counts) * np.maximum(counts, 1))) if cfg.class_weights else None
    return torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weight, dtype=torch.float32, device=rt.device) if weight is not None else None)


def build_model(cfg: TrainConfig, schema: TableSchema, in_channels: int) -> MMCAFNet:
    """The preset with the table dimensions of ``schema`` and the head the loss needs.

    Raises:
        ValueError: ``model_overrides`` sets a ``num_classes`` that the loss cannot use.
    """
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("in_channels", in_channels)
    if overrides.get("num_classes", output_logits(cfg)) != output_logits(cfg):
        raise ValueError(f"model_overrides: num_classes={overrides['num_classes']} does not fit --loss "
                         f"{cfg.loss} on {len(cfg.classes)} classes (it needs {output_logits(cfg)})")
    overrides["num_classes"] = output_logits(cfg)
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
        outs.append(probabilities(logits).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(cfg.classes)), np.float32)


def _score(metrics: dict) -> float:
    return metrics["auroc"] if np.isfinite(metrics["auroc"]) else -1.0


def nonfinite_input(batch: dict, modality: str) -> str | None:
    """What in a batch is not finite, or ``None``.

    The volume must be finite; table values may be NaN (a missing value) but never
    infinite.
    """
    if modality != "table" and not bool(torch.isfinite(batch["volume"]).all()):
        return "volume"
    if modality != "image" and bool(torch.isinf(batch["numerical"]).any()):
        return "table value"
    return None


def _any_rank(flag: bool, rt: Runtime) -> bool:
    """``flag`` OR-ed over all processes (so that every rank takes the same branch)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([float(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _resume_fold(cfg: TrainConfig, rt: Runtime, state: dict, fold: int, ckpt_path: Path,
                 total_steps: int) -> tuple[int, float, int, list, bool]:
    """Counters of a resumed fold, after checking that ``--epochs`` can be honoured."""
    start, best, bad = state["epoch"], state["best"], state["bad_epochs"]
    history = list(state["history"])
    if start > cfg.epochs:
        raise ValueError(f"epochs: fold {fold} has trained {start} epochs already ({ckpt_path}); "
                         f"--epochs {cfg.epochs} cannot shorten it")
    saved_epochs = state["train_config"].get("epochs", cfg.epochs)
    early = bad >= cfg.patience
    finished = early or start >= cfg.epochs
    if cfg.epochs != saved_epochs and start < cfg.epochs:
        if early:
            log(rt, f"fold {fold}: not continued to epoch {cfg.epochs}: it stopped early at epoch "
                    f"{start} (no validation AUROC gain for {bad} epochs, --patience {cfg.patience}); "
                    f"raise --patience to train it further")
        else:
            log(rt, f"fold {fold}: --epochs {saved_epochs} -> {cfg.epochs}: the cosine learning-rate "
                    f"schedule now ends after {total_steps} steps, so from epoch {start + 1} on the "
                    f"run differs from an uninterrupted {saved_epochs}-epoch run")
    return start, best, bad, history, finished


def train_fold(cfg: TrainConfig, rt: Runtime, data: PreparedData, split: Split, fold: int,
               written: list[Path] | None = None) -> dict:
    """Train one fold to the end (or to ``stop_after``); returns its test metrics and preds.

    Writes ``out/fold<k>/checkpoint.pt`` every epoch, ``best.pt`` on each validation
    AUROC improvement, and on completion ``metrics.json``, ``predictions.csv``, ROC and
    confusion PNGs and attention PNGs; each written path is appended to ``written``.

    Raises:
        ValueError: the checkpoint to resume from belongs to another split or cannot
            honour ``--epochs``.
        RunError: a non-finite batch with ``on_nonfinite="stop"``, a whole epoch of
            non-finite batches, or a failed write.
    """
    from tqdm.auto import tqdm

    written = [] if written is None else written
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
    criterion = build_criterion(cfg, train_set.labels, rt)

    start, best, bad, history, finished = 0, -math.inf, 0, [], False
    if cfg.resume and rt.main:
        # a run killed while writing a checkpoint leaves its temp file (never a half
        # checkpoint.pt, which is replaced atomically): clear such leftovers
        for stale in fold_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
    if cfg.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["split"] != split.to_dict():
            raise ValueError(f"resume: {ckpt_path} was trained on another split (seed/folds changed?)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best, bad, history, finished = _resume_fold(cfg, rt, state, fold, ckpt_path, total)
        log(rt, f"fold {fold}: resumed from {ckpt_path} at epoch {start}")
    elif cfg.resume:
        log(rt, f"fold {fold}: no checkpoint to resume in {fold_dir}; training from epoch 0")

    sampler = (torch.utils.data.DistributedSampler(ds_train, num_replicas=rt.world, rank=rt.rank,
                                                   shuffle=True, seed=cfg.seed + fold)
               if rt.distributed else None)
    ran = 0
    epoch_bar = tqdm(range(start, cfg.epochs), desc=f"fold {fold}", unit="epoch",
                     initial=start, total=cfg.epochs, disable=not (cfg.progress and rt.main))
    if start < cfg.epochs and not finished:
        log(rt, f"fold {fold}: training; '*' after an epoch marks a new best validation AUROC "
                f"(saved as {best_path.name})")
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
        total_loss, seen, skipped, pending = 0.0, 0, [], 0
        n_batches = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch",
                   disable=not (cfg.progress and rt.main))
        opt.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            last = (step + 1) % cfg.accum_steps == 0 or step + 1 == n_batches
            sync = net.no_sync() if (rt.distributed and not last) else contextlib.nullcontext()
            if cfg.modality == "both":
                batch = modality_dropout(batch, cfg.modality_dropout)
            reason = nonfinite_input(batch, cfg.modality)
            bad = _any_rank(reason is not None, rt)  # every rank takes the same branch
            with sync:
                if not bad:
                    # BatchNorm updates its running statistics in the forward pass: keep a
                    # copy, to put back if this batch's loss turns out non-finite.
                    buffers = [b.detach().clone() for b in model.buffers()]
                    with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32,
                                        enabled=rt.amp_dtype is not None):
                        logits = forward(net, batch, cfg.modality, rt.device)
                        loss = criterion(logits.float(), batch["label"].to(rt.device))
                    if not bool(torch.isfinite(loss)):
                        reason = "loss"
                    bad = _any_rank(reason is not None, rt)
                    if not bad:
                        scaler.scale(loss / cfg.accum_steps).backward()
                        pending += 1
                    else:
                        with torch.no_grad():
                            for b, saved in zip(model.buffers(), buffers, strict=True):
                                b.copy_(saved)
                        if rt.distributed:
                            # every rank ran DDP's forward: a zero backward keeps the
                            # ranks' gradient reductions in step without changing a gradient
                            sum((p * 0).sum() for p in net.parameters() if p.requires_grad).backward()
            if bad:
                ids = [train_set.ids[i] for i in batch["index"].tolist()]
                what = f"a non-finite {reason}" if reason else "a non-finite batch on another process"
                if cfg.on_nonfinite == "stop":
                    raise RunError(f"fold {fold} epoch {epoch + 1}: {what} in the training batch of "
                                   f"patients {', '.join(ids)}; stopped before it reached the weights "
                                   f"(--on-nonfinite skip skips such batches instead)")
                skipped.append(ids)
            else:
                total_loss += float(loss.detach()) * len(batch["label"])
                seen += len(batch["label"])
                bar.set_postfix(loss=f"{total_loss / seen:.4f}")
            if last:
                if pending:
                    scaler.step(opt)
                    scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                pending = 0
        ran += 1
        if skipped:
            log(rt, f"fold {fold} epoch {epoch + 1}: skipped {len(skipped)} of {n_batches} training "
                    f"batch(es) with a non-finite input or loss (patients "
                    f"{', '.join(p for ids in skipped for p in ids)})")
            if len(skipped) == n_batches:
                raise RunError(f"fold {fold} epoch {epoch + 1}: every training batch was non-finite; "
                               f"nothing to learn from")

        stop = torch.zeros(1, device=rt.device)  # nccl broadcasts CUDA tensors only
        if rt.main:
            probs = predict_probs(model, val_set.dataset(crop.crop, False, 0), cfg, rt)
            val = compute_metrics(val_set.labels, probs, cfg.classes, ci=False)
            improved = _score(val) > best + 1e-6
            if improved:
                best, bad = _score(val), 0
                written.append(save_checkpoint(best_path, {
                    **model.checkpoint_state(schema.to_dict()), "train_config": asdict(cfg),
                    "split": split.to_dict(), "epoch": epoch + 1, "classes": list(cfg.classes)}))
            else:
                bad += 1
            history.append({"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
                            "val_auroc": val["auroc"], "val_acc": val["acc"],
                            "lr": float(sched.get_last_lr()[0]), "frozen_encoder": frozen,
                            "skipped_batches": len(skipped)})
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
            written.append(save_checkpoint(ckpt_path, {
                **model.checkpoint_state(schema.to_dict()),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                "best": best, "bad_epochs": bad, "history": history, "finished": finished,
                "train_config": asdict(cfg), "split": split.to_dict(), "classes": list(cfg.classes),
            }))
        barrier(rt)
    if not rt.main:
        return {}

    best_model = (MMCAFNet.from_state(load_checkpoint(best_path)).to(rt.device) if best_path.is_file()
                  else model)
    probs = predict_probs(best_model, test_set.dataset(crop.crop, False, 0), cfg, rt)
    metrics = compute_metrics(test_set.labels, probs, cfg.classes)
    metrics["history"] = history
    pictures = None
    if cfg.modality != "table" and len(val_set.ids):
        # Attention of the best model on every validation patient: statistics for all,
        # pictures for a few of each class.
        ds_val = val_set.dataset(crop.crop, False, 0)
        vols = torch.stack([ds_val[i]["volume"] for i in range(len(ds_val))])
        gates = attention_gates(best_model, vols.to(rt.device), max(cfg.batch_size, 1))
        boxes = lesion_boxes_in_crop(cfg, data, val_set.ids)
        box_list = [boxes[p] for p in val_set.ids]
        metrics["attention"] = {"patients": "validation", **attention_box_stats(
            gates, val_set.labels, box_list, cfg.classes, tuple(vols.shape[2:]))}
        pictures = (ds_val, vols, gates, box_list)
    written += write_report(fold_dir, test_set.labels, probs, test_set.ids, cfg.classes, metrics,
                            f"fold {fold} test")
    if pictures is not None and cfg.attention_patients > 0:
        ds_val, vols, gates, box_list = pictures
        val_probs = predict_probs(best_model, ds_val, cfg, rt)
        picks = pick_both_classes(val_set.labels, cfg.attention_patients)
        written += plot_attention(vols[picks], gates[picks], [val_set.ids[i] for i in picks],
                                  val_set.labels[picks], val_probs[picks], [box_list[i] for i in picks],
                                  cfg.classes, fold_dir / "attention")
    return {"metrics": metrics, "probs": probs, "labels": test_set.labels, "ids": test_set.ids}


def _check_resume(cfg: TrainConfig, rt: Runtime) -> None:
    """Before any work: every fold checkpoint in ``out`` agrees with ``cfg`` (see
    :func:`~.config.resume_changes`); changed location or length fields are logged."""
    ckpts = sorted(Path(cfg.out).glob("fold[0-9]*/checkpoint.pt"))
    if not ckpts:
        log(rt, f"--resume: no checkpoint in {cfg.out}; starting a new run")
        return
    notes: dict[str, None] = {}
    for path in ckpts:
        state = load_checkpoint(path)
        for line in resume_changes(state["train_config"], cfg, str(path)):
            notes[line] = None
        if state["epoch"] > cfg.epochs:
            raise ValueError(f"epochs: {path} has trained {state['epoch']} epochs already; "
                             f"--epochs {cfg.epochs} cannot shorten it")
    for line in notes:
        log(rt, f"--resume with a changed setting: {line}")


def _print_written(rt: Runtime, written: list[Path]) -> None:
    paths = list(dict.fromkeys(str(p) for p in written))
    log(rt, f"files written ({len(paths)}):\n" + "\n".join(f"  {p}" for p in paths))


def run(cfg: TrainConfig) -> dict | None:
    """Prepare data, train every fold, print and write the pooled test metrics.

    Before any training, on the process that writes: ``out`` and the cache root must
    be writable, ``out`` is locked against a second run (:class:`~.rundir.RunLock`), a
    finished run in ``out`` is refused unless ``resume`` or ``overwrite`` is set, and a
    resumed run's settings are compared with its checkpoints'. The end of the run
    prints every file it wrote.

    Returns:
        The metrics dict on rank 0 (``None`` on other ranks or when stopped early by
        ``stop_after``).

    Raises:
        ValueError: a bad config, unusable data, an unwritable folder, a run folder
            that is taken, or a resume that would change the run.
        RunError: another run holds ``out``, a non-finite batch (see
            ``on_nonfinite``) or a failed write.
    """
    cfg.validate()
    rt = setup_runtime(cfg)
    lock = None
    written: list[Path] = []
    try:
        t0 = time.time()
        if rt.main:
            out = check_writable(cfg.out, "out")
            check_writable(Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root(cfg),
                           "cache_dir" if cfg.cache_dir else "cache_root")
            if cfg.data_dir is None and not (phantom_root(cfg) / ".complete").is_file():
                check_writable(phantom_root(cfg).parent, "phantom_dir" if cfg.phantom_dir else "cache_root")
            lock = RunLock(out).acquire()
            removed = claim_run_folder(out, resume=cfg.resume, overwrite=cfg.overwrite)
            if removed:
                log(rt, f"--overwrite: removed the earlier run's {', '.join(p.name for p in removed)} "
                        f"from {out}")
            if cfg.resume:
                _check_resume(cfg, rt)
        barrier(rt)
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
            res = train_fold(cfg, rt, data, split, k, written)
            if res.get("interrupted"):
                _print_written(rt, written)
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
        metrics["histories"] = {f"fold {k}": r["metrics"]["history"] for k, r in zip(folds, results, strict=True)}
        if "attention" in results[0]["metrics"]:
            metrics["attention"] = {"fold": folds[0], **results[0]["metrics"]["attention"]}
        metrics["task"], metrics["modality"] = cfg.task, cfg.modality
        metrics["wall_time_s"] = round(time.time() - t0, 1)
        written += write_report(Path(cfg.out), y, probs, pids, cfg.classes, metrics,
                                f"{cfg.task} / {cfg.modality} (held-out test)")
        # The first fold's attention PNGs next to the pooled report.
        for png in sorted((Path(cfg.out) / f"fold{folds[0]}" / "attention").glob("*.png")):
            written.append(write_output(Path(cfg.out) / "attention" / png.name, png.read_bytes()))
        log(rt, "\n" + format_metrics(metrics, f"held-out test metrics ({len(y)} patients, "
                                              f"{len(results)} fold(s)):"))
        log(rt, f"wall time {metrics['wall_time_s']} s")
        _print_written(rt, written)
        return metrics
    finally:
        if lock is not None:
            lock.release()
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()

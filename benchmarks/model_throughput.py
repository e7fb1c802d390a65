"""Training and inference throughput (volumes/s) of MMCAFNet presets.

For each preset it builds the model with random weights, then times
* inference: eval mode, ``torch.inference_mode``, one forward per step;
* training: train mode, forward + cross-entropy + backward + AdamW step;
and reports the median step time and volumes/s (batch / median step).

    python benchmarks/model_throughput.py                  # tiny and paper presets
    python benchmarks/model_throughput.py --quick          # tiny only, CI smoke (seconds)
    python benchmarks/model_throughput.py --presets paper --batch 4 --dtype bfloat16 --json out.json

Shapes: tiny [B, 1, 16, 64, 64], paper [B, 1, 12, 192, 192] (the paper's crop).
On CUDA steps are timed with CUDA events after warm-up and the peak memory of a
training step is recorded; ``--dtype bfloat16`` runs under autocast. CPU numbers on
small shared machines are noisy: use several ``--iters`` and quote medians.

``--baseline`` times the image path alone (backbone, neck and the projection to
the fusion width) against a plain reference composition holding the same weights:
a copy of the model in which every fast E3D-MSCA block and upsampling block is
replaced by its plain counterpart (separate ``nn.Conv3d``, ``nn.BatchNorm3d`` and
elementwise ops in contiguous NCDHW, :mod:`benchmarks.naive`), fed a contiguous
NCDHW volume; the backbone and the gated fusion are plain modules in both. The
two run interleaved, each round with the same random seed (so stochastic depth and
dropout make the same draws), and each ratio is the median of per-round ratios
with its interquartile range. ``--profile`` adds one profiled eval forward and
training step of mmscale's image path: time per stage and the top operators.

    python benchmarks/model_throughput.py --presets paper --baseline --iters 3
    python benchmarks/model_throughput.py --presets paper --baseline --profile --iters 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_machine, ratio_stats, spread_warning, versions, write_json  # noqa: E402
from benchmarks.naive import NaiveMultiScaleConvAttention3d, NaiveUpConv3d  # noqa: E402
from mmscale import MMCAFNet, MultiScaleConvAttention3d, UpConv3d, binary_focal_loss  # noqa: E402
from mmscale.layers.backbone import GroupedBottleneck3d  # noqa: E402

SHAPES = {"tiny": (1, 16, 64, 64), "paper": (1, 12, 192, 192)}
QUICK_SHAPE = (1, 8, 32, 32)


def time_steps(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def make_batch(batch: int, shape: tuple[int, ...], config, device: torch.device):
    """Random volumes and a clinical table with a few missing values."""
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(batch, *shape, generator=g)
    num = torch.randn(batch, config.num_numerical, generator=g)
    if num.numel():
        num[0, 0] = float("nan")
    cat = torch.stack(
        [torch.randint(0, k, (batch,), generator=g) for k in config.categorical_cardinalities], dim=1
    ) if config.categorical_cardinalities else torch.zeros(batch, 0, dtype=torch.long)
    labels = torch.randint(0, max(config.num_classes, 2), (batch,), generator=g)  # 1 logit: binary labels
    return [t.to(device) for t in (vol, num, cat, labels)]


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Time one preset; returns a result row."""
    shape = QUICK_SHAPE if args.quick else SHAPES[name]
    torch.manual_seed(0)
    model = MMCAFNet.from_preset(name).to(device)
    vol, num, cat, labels = make_batch(args.batch, shape, model.config, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer() -> None:
        with torch.inference_mode(), autocast:
            model(vol, num, cat)

    def train() -> None:
        with autocast:
            logits = model(vol, num, cat).float()
            # The paper preset has one logit (the published binary focal loss).
            loss = binary_focal_loss(logits, labels) if logits.shape[1] == 1 else F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.eval()
    t_inf = time_steps(infer, args.warmup, args.iters, device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_train = time_steps(train, args.warmup, args.iters, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    inf_med, train_med = statistics.median(t_inf), statistics.median(t_train)
    return {
        "preset": name,
        "params": sum(p.numel() for p in model.parameters()),
        "input": [args.batch, *shape],
        "dtype": args.dtype,
        "inference_ms": inf_med * 1e3,
        "inference_volumes_per_s": args.batch / inf_med,
        "train_ms": train_med * 1e3,
        "train_volumes_per_s": args.batch / train_med,
        "inference_ms_all": [t * 1e3 for t in t_inf],
        "train_ms_all": [t * 1e3 for t in t_train],
        "train_peak_mib": peak,
    }


def _plain_attention(layer: MultiScaleConvAttention3d) -> NaiveMultiScaleConvAttention3d:
    """The plain composition with ``layer``'s shape and weights (a strict load: every tensor moves)."""
    c = layer.channels
    kernel_sizes = [tuple(b.conv.weight.shape[2:]) for b in layer.mscb.dwconv.branches]
    expansion = layer.mscb.expand.weight.shape[0] // c
    reduction = c // layer.ca.fc1.weight.shape[0]
    plain = NaiveMultiScaleConvAttention3d(c, kernel_sizes, expansion, reduction, tuple(layer.sa.conv.weight.shape[2:]))
    plain.load_state_dict(layer.state_dict(), strict=True)
    return plain


def _plain_up(layer: UpConv3d) -> NaiveUpConv3d:
    plain = NaiveUpConv3d(layer.in_channels, layer.out_channels, tuple(layer.dwconv.weight.shape[2:]))
    plain.load_state_dict(layer.state_dict(), strict=True)
    return plain


class PlainConv3d(torch.nn.Conv3d):
    """An ``nn.Conv3d`` the backbone calls as a module, so autograd runs ATen's own backward.

    ``GroupedBottleneck3d`` computes a plain ``nn.Conv3d`` through
    :func:`mmscale.ops.grouped_conv3d` (the same forward, a cheaper CPU backward); any
    other conv type it calls as a module.
    """


def _plain_conv(conv: torch.nn.Conv3d) -> PlainConv3d:
    plain = PlainConv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    plain.load_state_dict(conv.state_dict(), strict=True)
    return plain


def plain_reference(model: MMCAFNet) -> MMCAFNet:
    """A copy of ``model`` whose fast layers are the plain reference composition.

    Every ``MultiScaleConvAttention3d`` and ``UpConv3d`` (wherever it sits) becomes
    its plain counterpart from :mod:`benchmarks.naive` holding the same weights and
    BatchNorm statistics, and every backbone bottleneck's grouped conv a
    :class:`PlainConv3d`; everything else is copied as it is, so the copy follows
    the model's configuration. A spatial-attention conv shared by several levels
    becomes one copy per level (same values; the work is the same).

    Args:
        model (MMCAFNet): the model to mirror (left unchanged).

    Returns:
        MMCAFNet: the copy, in the same train/eval mode.
    """
    plain = copy.deepcopy(model)

    def swap(parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, MultiScaleConvAttention3d):
                new = _plain_attention(child)
            elif isinstance(child, UpConv3d):
                new = _plain_up(child)
            elif isinstance(parent, GroupedBottleneck3d) and name == "conv2":
                new = _plain_conv(child)
            else:
                swap(child)
                continue
            new.train(child.training)
            setattr(parent, name, new)

    swap(plain)
    return plain


def image_path(model: MMCAFNet, volume: torch.Tensor) -> torch.Tensor:
    """Backbone, neck and projection: the image vector [B, d] the fusion receives.

    Without a projection (token fusion) it returns the global max pool of every
    fused level, concatenated.
    """
    feats = model.encode_volume(volume)
    if getattr(model, "image_proj", None) is not None and model.single:
        return model.image_proj(feats[-1].amax(dim=(2, 3, 4)))
    return torch.cat([f.amax(dim=(2, 3, 4)) for f in feats], dim=1)


def bench_baseline(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """mmscale's image path against the plain reference composition, interleaved, same weights."""
    shape = QUICK_SHAPE if args.quick else SHAPES[name]
    torch.manual_seed(0)
    model = MMCAFNet.from_preset(name).to(device)
    plain = plain_reference(model)
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(args.batch, *shape, generator=g).to(device)
    variants = {"plain": plain, "mmscale": model}
    # the same input and seed through both: eval outputs and a train-mode output must agree
    diffs = {}
    for mode in (False, True):
        outs = []
        for m in variants.values():
            m.train(mode)
            torch.manual_seed(123)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs.append(image_path(m, vol).float())
        diffs["train" if mode else "eval"] = ((outs[1] - outs[0]).abs().max() / outs[0].abs().max().clamp_min(1e-12)).item()
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-6) for n, m in variants.items()}

    def infer(m):
        def step():
            with torch.inference_mode():
                image_path(m, vol)
        return step

    def train(n, m):
        def step():
            loss = image_path(m, vol).float().square().mean()
            opts[n].zero_grad(set_to_none=True)
            loss.backward()
            opts[n].step()
        return step

    row = {"preset": name, "input": [args.batch, *shape], "max_rel_diff": diffs}
    for mode, make in (("eval", lambda n, m: infer(m)), ("train", train)):
        for m in variants.values():
            m.train(mode == "train")
        steps = {n: make(n, m) for n, m in variants.items()}
        times: dict[str, list[float]] = {n: [] for n in steps}
        for r in range(args.warmup + args.iters):
            for n, step in steps.items():
                torch.manual_seed(1000 + r)  # both variants make the same stochastic-depth draws
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if r >= args.warmup:
                    times[n].append((time.perf_counter() - t0) * 1e3)
        stats = ratio_stats(times["plain"], times["mmscale"])
        row[mode] = {"ms": {n: statistics.median(ts) for n, ts in times.items()}, "ms_all": times,
                     "speedup": stats["median"], "speedup_iqr": [stats["q1"], stats["q3"]],
                     "warning": spread_warning(f"{name} image path {mode}: mmscale vs plain", stats)}
    return row


def profile_image_path(name: str, args: argparse.Namespace, device: torch.device, top: int = 15) -> dict:
    """One profiled eval forward and one training step of mmscale's image path.

    Returns per-stage forward times (backbone, neck norms, pyramid, projection), the
    backward as one figure, and the operators with the most self time.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    shape = QUICK_SHAPE if args.quick else SHAPES[name]
    torch.manual_seed(0)
    model = MMCAFNet.from_preset(name).to(device)
    vol = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)

    def staged(m):
        with record_function("stage: backbone"):
            feats = m.backbone(vol)
        with record_function("stage: neck norms"):
            feats = [norm(f) for norm, f in zip(m.neck_norm, feats, strict=False)]
        with record_function("stage: pyramid (E3D-MSCA, up, gated fusion)"):
            feats = m.pyramid(feats)
        with record_function("stage: pool + projection"):
            if getattr(m, "image_proj", None) is not None and m.single:
                return m.image_proj(feats[-1].amax(dim=(2, 3, 4)))
            return torch.cat([f.amax(dim=(2, 3, 4)) for f in feats], dim=1)

    out = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for mode in ("eval", "train"):
        model.train(mode == "train")
        torch.manual_seed(7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with profile(activities=activities) as prof:
                if mode == "eval":
                    with torch.inference_mode():
                        staged(model)
                else:
                    y = staged(model)
                    with record_function("stage: backward"):
                        y.float().square().mean().backward()
        events = prof.key_averages()
        stages = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("stage: ")}
        ops = sorted((e for e in events if not e.key.startswith("stage: ")),
                     key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e3
        out[mode] = {"stages_ms": stages, "total_self_ms": total,
                     "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
                                 for e in ops[:top]]}
    return out


def print_baseline(row: dict) -> None:
    shape = "x".join(map(str, row["input"]))
    for mode in ("eval", "train"):
        r = row[mode]
        q1, q3 = r["speedup_iqr"]
        print(f"{row['preset']:<7} {shape:<18} {mode:<6} plain {r['ms']['plain']:>10.1f} ms  "
              f"mmscale {r['ms']['mmscale']:>10.1f} ms  {r['speedup']:.2f}x [IQR {q1:.2f}-{q3:.2f}]  "
              f"max rel diff {row['max_rel_diff'][mode]:.1e}", flush=True)
        if r["warning"]:
            print("  " + r["warning"], flush=True)


def print_profile(name: str, prof: dict) -> None:
    for mode, p in prof.items():
        print(f"profile {name} {mode}: {p['total_self_ms']:.0f} ms of operator self time")
        for stage, ms in p["stages_ms"].items():
            print(f"  {stage:<48} {ms:>10.1f} ms")
        for op in p["top_ops"]:
            share = op["self_ms"] / p["total_self_ms"] if p["total_self_ms"] else 0.0
            print(f"    {op['op']:<46} {op['self_ms']:>10.1f} ms {share:>6.1%}  x{op['calls']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper", help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 = autocast")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke run: tiny preset at [B, 1, 8, 32, 32], 1 timed step")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the image path against the plain reference composition (same weights)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one eval forward and one training step of the image path")
    parser.add_argument("--no-throughput", action="store_true",
                        help="skip the whole-model throughput table (with --baseline or --profile)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.warmup, args.iters = "tiny", 1, 1
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    presets = [p for p in args.presets.split(",") if p]
    for p in presets:
        if p not in SHAPES:
            parser.error(f"--presets: unknown preset {p!r} (choose from {sorted(SHAPES)})")

    info = versions(device)
    print("device:", info["device"], "| torch", info["torch"],
          "| triton", info["triton"], "| threads", info["threads"])
    print_machine(info, device)
    report = {"versions": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": [],
              "baseline": [], "profile": {}}
    if args.baseline:
        print("image path (backbone, neck, projection): plain reference composition vs mmscale, same weights")
        for p in presets:
            report["baseline"].append(bench_baseline(p, args, device))
            print_baseline(report["baseline"][-1])
            write_json(args.json, report)
    if args.profile:
        for p in presets:
            report["profile"][p] = profile_image_path(p, args, device)
            print_profile(p, report["profile"][p])
            write_json(args.json, report)
    rows = [] if args.no_throughput else [bench_preset(p, args, device) for p in presets]
    report["results"] = rows

    header = f"{'preset':<7} {'params':>12} {'input':<22} {'dtype':<9} {'infer ms':>10} {'infer vol/s':>12} {'train ms':>10} {'train vol/s':>12}"
    if rows:
        print(header)
        print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:<7} {r['params']:>12,} {'x'.join(map(str, r['input'])):<22} {r['dtype']:<9} "
              f"{r['inference_ms']:>10.1f} {r['inference_volumes_per_s']:>12.2f} "
              f"{r['train_ms']:>10.1f} {r['train_volumes_per_s']:>12.2f}")
        if r["train_peak_mib"] is not None:
            print(f"{'':<7} train peak memory {r['train_peak_mib']:.0f} MiB")
    if args.json is not None:
        write_json(args.json, report)
        print("wrote", args.json)
    return report


if __name__ == "__main__":
    main()

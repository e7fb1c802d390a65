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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import versions, write_json  # noqa: E402
from mmscale import MMCAFNet  # noqa: E402

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
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)
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
            loss = F.cross_entropy(model(vol, num, cat).float(), labels)
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
    rows = [bench_preset(p, args, device) for p in presets]

    header = f"{'preset':<7} {'params':>12} {'input':<22} {'dtype':<9} {'infer ms':>10} {'infer vol/s':>12} {'train ms':>10} {'train vol/s':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['preset']:<7} {r['params']:>12,} {'x'.join(map(str, r['input'])):<22} {r['dtype']:<9} "
              f"{r['inference_ms']:>10.1f} {r['inference_volumes_per_s']:>12.2f} "
              f"{r['train_ms']:>10.1f} {r['train_volumes_per_s']:>12.2f}")
        if r["train_peak_mib"] is not None:
            print(f"{'':<7} train peak memory {r['train_peak_mib']:.0f} MiB")
    report = {"versions": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": rows}
    if args.json is not None:
        write_json(args.json, report)
        print("wrote", args.json)
    return report


if __name__ == "__main__":
    main()

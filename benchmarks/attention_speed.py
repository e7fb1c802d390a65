"""Speed of E3D-MSCA: naive eager vs torch.compile vs mmscale's backends.

Runs every variant on the same weights (the naive composition's state dict loaded
into mmscale's layer), checks that the outputs agree, then times forward (eval,
no grad) and forward+backward (train) with interleaved runs (A B C A B C ...) and
reports medians and ratios against naive eager and against ``torch.compile``.

    python benchmarks/attention_speed.py                 # reference shapes
    python benchmarks/attention_speed.py --quick         # tiny shapes (CI smoke run)
    python benchmarks/attention_speed.py --json out.json --backends naive,torch

Every ratio is computed per round (round i of the baseline against round i of the
variant, timed back to back) and reported as the median with its interquartile
range; a warning is printed when that range exceeds 10% of the median. The header
names the CPU model, its vector ISA and the kernels torch dispatches to.

Peak memory of one training step (fwd+bwd) per variant: on CUDA the allocator's
peak above what was live before; on CPU the growth of the resident set of a fresh
child process (one per shape) whose freed memory goes straight back to the system
(glibc's mmap threshold fixed at 64 KiB), measured after one warm-up step.

On CUDA it times with CUDA events after warm-up (``triton.testing.do_bench`` when
Triton is present) and adds the larger GPU shape and bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    TRACKING_MALLOC_ENV,
    peak_memory_mib,
    peak_rss_mib,
    print_machine,
    ratio_stats,
    spread_warning,
    summarize,
    versions,
    write_json,
)
from benchmarks.naive import NaiveMultiScaleConvAttention3d  # noqa: E402
from mmscale import MultiScaleConvAttention3d  # noqa: E402

REFERENCE_SHAPES = [(2, 256, 6, 48, 48), (2, 512, 3, 24, 24), (2, 1024, 2, 12, 12)]
GPU_SHAPES = [(8, 128, 32, 96, 96)]
QUICK_SHAPES = [(2, 16, 3, 12, 12), (1, 24, 2, 7, 11)]


def randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so that folding them is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def build_variants(channels: int, backends: list[str], device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    naive = NaiveMultiScaleConvAttention3d(channels)
    randomise_bn(naive)
    naive = naive.to(device=device, dtype=dtype)
    variants: dict[str, torch.nn.Module] = {}
    for name in backends:
        if name == "naive":
            variants[name] = naive
        elif name == "compile":
            variants[name] = torch.compile(naive)
        elif name in ("torch", "triton"):
            layer = MultiScaleConvAttention3d(channels, backend=name)
            layer.load_state_dict(naive.state_dict())
            variants[name] = layer.to(device=device, dtype=dtype)
        else:
            raise ValueError(f"--backends: unknown variant {name!r} (naive, compile, torch, triton)")
    return variants


def make_step(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, train: bool):
    if train:
        x = x.detach().requires_grad_()

        def step():
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x).backward(grad)

    else:

        def step():
            with torch.no_grad():
                module(x)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per round for each variant, running the variants in turn each round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def time_cuda(steps: dict) -> dict[str, list[float]]:
    """Milliseconds per variant on CUDA: ``do_bench``'s median (one value), else 20 timed rounds."""
    try:
        from triton.testing import do_bench
    except Exception:
        do_bench = None
    out = {}
    for name, step in steps.items():
        if do_bench is not None:
            out[name] = [float(do_bench(step, warmup=25, rep=100))]
        else:
            out[name] = time_interleaved({name: step}, 20, torch.device("cuda"))[name]
    return out


def cpu_peak_memory(shape: tuple[int, ...], dtype: torch.dtype, backends: list[str]) -> dict[str, float | None]:
    """Peak memory (MiB) of one training step per variant, measured in a fresh child process.

    See :func:`benchmarks._common.peak_rss_mib` for what is counted. Returns None per
    variant when the child fails (its error is printed).
    """
    request = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "backends": backends,
               "threads": torch.get_num_threads()}
    root = str(Path(__file__).resolve().parents[1])
    code = f"import sys; sys.path.insert(0, {root!r}); from benchmarks.attention_speed import memory_child; memory_child()"
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(request), capture_output=True, text=True,
                          env={**os.environ, **TRACKING_MALLOC_ENV}, cwd=root)
    if proc.returncode != 0:
        print(f"WARNING: peak-memory child failed (exit {proc.returncode}); no memory figures for this shape:\n"
              + proc.stderr[-2000:], flush=True)
        return dict.fromkeys(backends)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_child() -> None:
    """Child side of :func:`cpu_peak_memory`: reads the request on stdin, prints one JSON line."""
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(request["threads"])
    shape, dtype = tuple(request["shape"]), getattr(torch, request["dtype"])
    variants = build_variants(shape[1], request["backends"], torch.device("cpu"), dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    out = {}
    for name, module in variants.items():
        module.train(True)
        step = make_step(module, x, grad, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step()  # warm-up (and compilation), so only the step itself is counted
            out[name] = peak_rss_mib(step)
        module.zero_grad(set_to_none=True)
    print(json.dumps(out), flush=True)


def check_agreement(variants: dict, x: torch.Tensor) -> float:
    """Largest relative difference of any variant's eval output from naive eager's."""
    outs = {}
    with torch.no_grad():
        for name, m in variants.items():
            m.eval()
            outs[name] = m(x).float()
    ref = outs.get("naive", next(iter(outs.values())))
    scale = ref.abs().max().item() or 1.0
    return max((o - ref).abs().max().item() / scale for o in outs.values())


def summarize_row(times: dict[str, list[float]]) -> dict:
    """Median and spread of each variant's time and of its ratios against naive and compile."""
    row = {"ms": {n: summarize(ts)["median"] for n, ts in times.items()},
           "ms_iqr": {n: summarize(ts)["iqr"] for n, ts in times.items()}}
    warnings_out = []
    for base in ("naive", "compile"):
        ratios, spreads = {}, {}
        if base in times:
            for name, ts in times.items():
                stats = ratio_stats(times[base], ts)
                ratios[name], spreads[name] = stats["median"], [stats["q1"], stats["q3"]]
                if name != base:
                    msg = spread_warning(f"{name} vs {base}", stats)
                    if msg:
                        warnings_out.append(msg)
        row[f"speedup_vs_{base}"] = ratios
        row[f"speedup_vs_{base}_iqr"] = spreads
    row["warnings"] = warnings_out
    return row


def run(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    backends = args.backends.split(",") if args.backends else None
    if backends is None:
        backends = ["naive", "torch"] if args.quick else ["naive", "compile", "torch"]
        if device.type == "cuda":
            backends.append("triton")
    shapes = QUICK_SHAPES if args.quick else REFERENCE_SHAPES + (GPU_SHAPES if device.type == "cuda" else [])
    if args.shape:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape]
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" and not args.quick else [])
    if args.dtypes:
        dtypes = [_dtype(d) for d in args.dtypes.split(",")]
    rounds = args.rounds or (3 if args.quick else 5)
    info = versions(device)
    print(f"mmscale {info['mmscale']}  torch {info['torch']}  triton {info['triton']}  "
          f"device {info['device']}  threads {info['threads']}")
    print_machine(info, device)
    results = []
    report = {"versions": info, "device": str(device), "rounds": rounds, "results": results}
    for shape in shapes:
        for dtype in dtypes:
            variants = build_variants(shape[1], backends, device, dtype)
            gen = torch.Generator(device="cpu").manual_seed(1)
            x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                err = check_agreement(variants, x)
            for train in (False, True):
                for m in variants.values():
                    m.train(train)
                steps = {n: make_step(m, x, grad, train) for n, m in variants.items()}
                for step in steps.values():  # warm-up (and compilation)
                    step()
                if device.type == "cuda":
                    times = time_cuda(steps)
                else:
                    times = time_interleaved(steps, rounds, device)
                mem: dict = {}
                if train and device.type == "cuda":
                    mem = {n: peak_memory_mib(s, device) for n, s in steps.items()}
                elif train and not args.no_memory:
                    mem = cpu_peak_memory(shape, dtype, list(variants))
                row = {
                    "shape": list(shape),
                    "dtype": str(dtype).replace("torch.", ""),
                    "pass": "fwd+bwd" if train else "fwd",
                    **summarize_row(times),
                    "ms_all": times,
                    "peak_mem_mb": mem,
                    "peak_mem_method": ("cuda allocator peak" if device.type == "cuda"
                                        else "child-process resident-set growth") if mem else None,
                    "max_rel_diff": err,
                }
                results.append(row)
                print_row(row)
                write_json(args.json, report)  # after every row: a time limit keeps what was measured
    return report


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.strip(), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SystemExit(f"--dtypes: {name!r} is not a floating-point torch dtype (float32, bfloat16, float16)")
    return dtype


def print_row(row: dict) -> None:
    shape = "x".join(map(str, row["shape"]))
    parts = []
    for name, ms in row["ms"].items():
        part = f"{name} {ms:9.2f} ms"
        if name != "naive" and name in row["speedup_vs_naive"]:
            q1, q3 = row["speedup_vs_naive_iqr"][name]
            part += f" ({row['speedup_vs_naive'][name]:4.2f}x naive [IQR {q1:.2f}-{q3:.2f}]"
            if row["speedup_vs_compile"] and name != "compile":
                q1, q3 = row["speedup_vs_compile_iqr"][name]
                part += f", {row['speedup_vs_compile'][name]:4.2f}x compile [IQR {q1:.2f}-{q3:.2f}]"
            part += ")"
        if row["peak_mem_mb"].get(name) is not None:
            part += f" peak {row['peak_mem_mb'][name]:.1f} MiB"
        parts.append(part)
    print(f"{shape:>18} {row['dtype']:>8} {row['pass']:>7} | " + " | ".join(parts)
          + f" | max rel diff {row['max_rel_diff']:.1e}", flush=True)
    for msg in row["warnings"]:
        print("  " + msg, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds (CI smoke run)")
    parser.add_argument("--backends", default=None, help="comma list of naive,compile,torch,triton")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per measurement")
    parser.add_argument("--shape", action="append", default=None,
                        help="B,C,D,H,W to run instead of the default shapes (repeatable)")
    parser.add_argument("--dtypes", default=None,
                        help="comma list of dtypes (default: float32, plus bfloat16 on CUDA)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file (after every row)")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is present")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the CPU peak-memory measurement (a child process per shape)")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    worst = max(r["max_rel_diff"] for r in report["results"])
    tol = 1e-2 if any(r["dtype"] != "float32" for r in report["results"]) else 1e-4
    if worst > tol:
        print(f"ERROR: variants disagree (max relative difference {worst:.2e} > {tol:.0e})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

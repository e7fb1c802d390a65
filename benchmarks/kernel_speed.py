"""Speed of mmscale's Triton kernels on a GPU, against PyTorch and the copy roofline.

For every reference shape (the paper's pyramid at batch 2 and a larger GPU shape),
dtype (float32, bfloat16) and pass (``fwd``: eval forward; ``train``: training
forward + backward) it reports, per op:

* median milliseconds (``triton.testing.do_bench``, L2 flushed between runs) of the
  Triton path and of mmscale's PyTorch path on the same tensors;
* GB/s of compulsory traffic (each input read once, each output written once) and
  its fraction of the measured device copy bandwidth (``torch.empty_like(x).copy_(x)``);
* for the multi-scale depthwise convolution, the stencil's FLOP rate (2 FLOP per tap
  per output element: forward; forward + input gradient + filter gradient: train);
* peak memory of one training step of that op, Triton vs the reference.

    python benchmarks/kernel_speed.py --json out.json
    python benchmarks/kernel_speed.py --quick            # one small shape (smoke run)
    python benchmarks/kernel_speed.py --copy-only --json copy.json
    python benchmarks/kernel_speed.py --smoke-cpu        # code paths via the interpreter

On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_memory_mib, write_json  # noqa: E402
from benchmarks._common import versions as common_versions  # noqa: E402

# block inputs [B, C, D, H, W]; the depthwise stage sees E = 2 C channels (expansion 2)
REFERENCE_SHAPES = [(2, 256, 6, 48, 48), (2, 512, 3, 24, 24), (2, 1024, 2, 12, 12), (8, 128, 32, 96, 96)]
QUICK_SHAPES = [(2, 64, 4, 24, 24)]
KERNEL_SIZES = (1, 3, 5)
EXPANSION = 2
# "cuda" for real runs; "cpu" only for --smoke-cpu (Triton's interpreter, code-path check, no numbers)
DEVICE = "cuda"


def versions() -> dict:
    info = common_versions(DEVICE)
    if DEVICE == "cpu":
        info["device"] = "cpu (interpreter smoke run)"
    return info


def bench(fn) -> float:
    """Median milliseconds of ``fn`` (warm-up included, L2 flushed by do_bench)."""
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def copy_bandwidth(nbytes: int = 1 << 30) -> dict:
    """Device-to-device copy bandwidth in GB/s (read + write counted)."""
    nbytes = nbytes if DEVICE == "cuda" else 1 << 20
    x = torch.empty(nbytes // 4, device=DEVICE, dtype=torch.float32)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return {"bytes": nbytes, "ms": ms, "gb_per_s": 2 * nbytes / ms / 1e6}


def _msdc_inputs(shape, dtype, seed=0):
    b, c, d, h, w = shape
    e = c * EXPANSION
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(b, e, d, h, w, device=DEVICE, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    ks = [(k, k, k) for k in KERNEL_SIZES]
    weights = [(torch.randn(e, 1, *k, device=DEVICE, generator=gen) / k[0] ** 1.5).to(dtype) for k in ks]
    # every parameter in the input dtype, as after ``module.to(dtype)``
    gammas = [(torch.rand(e, device=DEVICE, generator=gen) + 0.5).to(dtype) for _ in ks]
    betas = [torch.rand(e, device=DEVICE, generator=gen).to(dtype) for _ in ks]
    means = [torch.zeros(e, device=DEVICE, dtype=dtype) for _ in ks]
    varis = [torch.ones(e, device=DEVICE, dtype=dtype) for _ in ks]
    return x, weights, gammas, betas, means, varis


def _msdc_step(fn, h, ws, gs, bs, means, varis, train: bool, dy, **kw):
    """One call of an msdc implementation (plus its backward when training)."""

    from mmscale.ops.batch_norm import BatchNormState

    states = [BatchNormState(g, b, m, v, None, train, 0.1, 1e-5)
              for g, b, m, v in zip(gs, bs, means, varis, strict=True)]

    def step():
        y = fn(h, ws, states, **kw)
        if train:
            y.backward(dy)

    return step


def _gating_step(call, x, backend: str, train: bool):
    def step():
        out = call(x, backend)
        if train:
            out.backward()

    return step


def measure_msdc(shape, dtype, copy_gbs: float) -> list[dict]:
    from mmscale.ops.msdc import multiscale_depthwise_conv3d, multiscale_depthwise_conv3d_reference

    x, weights, gammas, betas, means, varis = _msdc_inputs(shape, dtype)
    n_out = x.numel()
    taps = sum(k**3 for k in KERNEL_SIZES)
    elt = x.element_size()
    rows = []
    for pss in ("fwd", "train"):
        train = pss == "train"
        leaves = [t.detach().requires_grad_(train) for t in (x, *weights, *gammas, *betas)]
        xx, ws = leaves[0], leaves[1:1 + len(weights)]
        gs = leaves[1 + len(weights):1 + 2 * len(weights)]
        bs = leaves[1 + 2 * len(weights):]
        dy = torch.randn_like(x)
        args = (xx, ws, gs, bs, means, varis, train, dy)

        def run(fn, _args=args, **kw):
            return _msdc_step(fn, *_args, **kw)

        row = {"op": "msdc", "shape": list(x.shape), "dtype": str(dtype).split(".")[-1], "pass": pss}
        variants = {
            "triton": run(multiscale_depthwise_conv3d, backend="triton"),
            "torch": run(multiscale_depthwise_conv3d, backend="torch"),
        }
        for name, step in variants.items():
            row[f"{name}_ms"] = bench(step)
        # compulsory traffic: forward reads h, writes y; backward also reads dy, writes dh
        nbytes = (2 if not train else 4) * n_out * elt
        flops = 2 * taps * n_out * (1 if not train else 3)
        row["gb_per_s"] = nbytes / row["triton_ms"] / 1e6
        row["pct_copy_bw"] = 100 * row["gb_per_s"] / copy_gbs
        row["tflop_per_s"] = flops / row["triton_ms"] / 1e9
        row["speedup_vs_torch"] = row["torch_ms"] / row["triton_ms"]
        if train:
            row["peak_mib_triton"] = peak_memory_mib(variants["triton"], DEVICE)
            row["peak_mib_reference"] = peak_memory_mib(run(multiscale_depthwise_conv3d_reference), DEVICE)
        rows.append(row)
    return rows


def measure_gating(shape, dtype, copy_gbs: float) -> list[dict]:
    from mmscale.ops.gating import apply_gates, channel_pool, spatial_pool

    b, c, d, h, w = shape
    x = torch.randn(shape, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    gc = torch.rand(b, c, 1, 1, 1, device=DEVICE, dtype=dtype)
    gs = torch.rand(b, 1, d, h, w, device=DEVICE, dtype=dtype)
    elt = x.element_size()
    n, s = x.numel(), b * d * h * w
    ops = {
        # name: (call, forward bytes, train bytes)
        "channel_pool": (lambda xx, be: sum(t.float().sum() for t in channel_pool(xx, backend=be)),
                         n * elt, 3 * n * elt),
        "spatial_pool": (lambda xx, be: spatial_pool(xx, gc, backend=be).float().sum(),
                         (n + 2 * s) * elt, (3 * n + 2 * s) * elt),
        "apply_gates": (lambda xx, be: apply_gates(xx, gc, gs, backend=be).float().sum(),
                        2 * n * elt, 4 * n * elt),
    }
    rows = []
    for name, (call, fwd_bytes, train_bytes) in ops.items():
        for pss in ("fwd", "train"):
            xx = x.detach().requires_grad_(pss == "train")
            row = {"op": name, "shape": list(shape), "dtype": str(dtype).split(".")[-1], "pass": pss}
            for be in ("triton", "torch"):
                row[f"{be}_ms"] = bench(_gating_step(call, xx, be, pss == "train"))
            nbytes = fwd_bytes if pss == "fwd" else train_bytes
            row["gb_per_s"] = nbytes / row["triton_ms"] / 1e6
            row["pct_copy_bw"] = 100 * row["gb_per_s"] / copy_gbs
            row["speedup_vs_torch"] = row["torch_ms"] / row["triton_ms"]
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'op':<13}{'shape':<24}{'dtype':<9}{'pass':<6}{'triton ms':>10}{'torch ms':>10}{'x':>7}" \
           f"{'GB/s':>8}{'%copy':>7}{'TFLOP/s':>9}{'peak MiB tri/ref':>18}"
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = f"{r['peak_mib_triton']:.0f}/{r['peak_mib_reference']:.0f}" if r.get("peak_mib_triton") is not None else ""
        tf = f"{r['tflop_per_s']:.2f}" if "tflop_per_s" in r else ""
        print(f"{r['op']:<13}{'x'.join(map(str, r['shape'])):<24}{r['dtype']:<9}{r['pass']:<6}"
              f"{r['triton_ms']:>10.3f}{r['torch_ms']:>10.3f}{r['speedup_vs_torch']:>7.2f}"
              f"{r['gb_per_s']:>8.0f}{r['pct_copy_bw']:>7.1f}{tf:>9}{peak:>18}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument("--copy-only", action="store_true", help="only the copy bandwidth")
    parser.add_argument("--shape", action="append", default=None, help="B,C,D,H,W (repeatable)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--ops", default="msdc,gating")
    parser.add_argument("--json", default=None, help="write results to this JSON file")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="run every code path once on CPU through Triton's interpreter (tiny shape, no numbers)")
    args = parser.parse_args(argv)
    if args.smoke_cpu:
        global DEVICE
        DEVICE = "cpu"
        os.environ["TRITON_INTERPRET"] = "1"
        args.shape, args.dtypes = ["1,2,2,5,4"], "float32"
    elif not torch.cuda.is_available():
        print("kernel_speed.py needs a CUDA device (the Triton kernels are timed on a GPU); nothing to do.")
        return 0
    os.environ.setdefault("TRITON_INTERPRET", "0")
    copy = copy_bandwidth()
    print(f"device copy bandwidth: {copy['gb_per_s']:.0f} GB/s", flush=True)
    result = {"versions": versions(), "copy_bandwidth": copy, "rows": []}
    if not args.copy_only:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape else (
            QUICK_SHAPES if args.quick else REFERENCE_SHAPES)
        for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
            for shape in shapes:
                rows = []
                try:
                    if "msdc" in args.ops:
                        rows += measure_msdc(shape, dtype, copy["gb_per_s"])
                    if "gating" in args.ops:
                        rows += measure_gating(shape, dtype, copy["gb_per_s"])
                except torch.cuda.OutOfMemoryError as exc:
                    print(f"skipped {shape} {dtype}: out of memory ({exc})", flush=True)
                    if DEVICE == "cuda":
                        torch.cuda.empty_cache()
                print_table(rows)
                result["rows"] += rows
                _write(args.json, result)  # after every shape: a time limit keeps what was measured
    _write(args.json, result)
    return 0


def _write(path: str | None, result: dict) -> None:
    if result["rows"]:
        for key in ("speedup_vs_torch", "pct_copy_bw"):
            result[f"median_{key}"] = statistics.median(r[key] for r in result["rows"])
    write_json(path, result)


if __name__ == "__main__":
    sys.exit(main())

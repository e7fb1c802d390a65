"""Registers, spills and access widths of every Triton kernel mmscale launches, for sm_90.

Needs no GPU. It runs mmscale's real Triton launchers (forward and backward of every
op, train and eval) on CPU tensors with Triton's launch step replaced by a recorder,
so each kernel is specialised exactly as a launch with those tensors would specialise
it (integers equal to 1 become constants, multiples of 16 and 16-byte aligned
pointers are marked divisible). It then compiles each distinct launch for Hopper
with the ``ptxas`` Triton ships and reads the cubin with Triton's ``cuobjdump``:

* ``regs``: registers per thread; ``stack``: stack-frame bytes (spilled registers,
  but also, e.g., a few bytes where the compiler repacks a boolean vector);
* ``ldl`` / ``stl``: local-memory loads and stores in the machine code (spills);
* ``calls``: subroutine calls (a 64-bit integer division is one, and slow);
* ``ldg``: global loads by width (``128`` = 16-byte vector loads).

``--check`` exits non-zero when a kernel fails to compile, or spills or calls a
subroutine at a launch configuration of the reference shapes (the paper's pyramid
at batch 2, ``REFERENCE`` below); the awkward shapes (odd channel counts, batch 1,
one channel, concatenated branches, 64-bit strides) must compile, and their spills
are reported only.

    python benchmarks/kernel_resources.py                 # table
    python benchmarks/kernel_resources.py --check --json out.json

Uses Triton internals (the argument binder), so it follows the pinned Triton.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before the kernel modules are imported: compiled kernels
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, stated (it warns otherwise)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_json  # noqa: E402
from mmscale.ops.batch_norm import BatchNormStep  # noqa: E402
from mmscale.ops.gating import triton as gating  # noqa: E402
from mmscale.ops.msdc import triton as msdc  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
KERNEL_SIZES = ((1, 1, 1), (3, 3, 3), (5, 5, 5))
EXPANSION = 2
# (block input [B, C, D, H, W], dtype, kernel sizes, combine, reference?): the depthwise stage sees
# C * EXPANSION channels; the reference shapes are the paper's pyramid for a 1x12x192x192 crop at batch 2
CASES = [
    ((2, 256, 6, 48, 48), torch.float32, KERNEL_SIZES, "add", True),
    ((2, 256, 6, 48, 48), torch.bfloat16, KERNEL_SIZES, "add", True),
    ((2, 512, 3, 24, 24), torch.float32, KERNEL_SIZES, "add", True),
    ((2, 1024, 2, 12, 12), torch.float16, KERNEL_SIZES, "add", True),
    # awkward: odd channels and spatial sizes, batch 1, one channel, anisotropic windows, concat
    ((1, 7, 1, 5, 3), torch.float32, ((1, 1, 1), (3, 3, 3), (1, 3, 5), (3, 1, 1)), "add", False),
    ((2, 1, 3, 5, 7), torch.float16, ((3, 3, 3),), "add", False),
    ((1, 16, 4, 9, 9), torch.float32, ((3, 3, 3), (7, 7, 7)), "concat", False),
    ((1, 1, 2, 3, 4), torch.float32, ((1, 1, 1), (3, 3, 3)), "concat", False),
]
QUICK_CASES = [CASES[0], CASES[4]]


class _Recorder:
    """Stands in for ``JITFunction.run``: remembers every launch instead of running it."""

    def __init__(self):
        self.launches: list[tuple[JITFunction, tuple, dict]] = []

    def __call__(self, fn, *args, grid, warmup, **kwargs):
        self.launches.append((fn, args, kwargs))
        return None


def _record(case) -> list[tuple[JITFunction, tuple, dict]]:
    """Every kernel launch of one training step (forward + backward) and one eval forward."""
    shape, dtype, ks, combine, _ = case
    b, c, d, h, w = shape
    e = c * EXPANSION if c > 1 else 1
    cl = torch.channels_last_3d
    recorder = _Recorder()
    original = JITFunction.run
    JITFunction.run = lambda self, *a, **k: recorder(self, *a, **k)
    try:
        for train in (True, False):
            x = torch.randn(b, e, d, h, w, dtype=dtype).contiguous(memory_format=cl).requires_grad_(train)
            weights = [torch.randn(e, 1, *k, dtype=dtype, requires_grad=train) for k in ks]
            gammas = [torch.ones(e, dtype=dtype, requires_grad=train) for _ in ks]
            betas = [torch.zeros(e, dtype=dtype, requires_grad=train) for _ in ks]
            means = [torch.zeros(e, dtype=dtype) for _ in ks]
            varis = [torch.ones(e, dtype=dtype) for _ in ks]
            steps = [BatchNormStep(*p, train, 0.1, 1e-5) for p in zip(gammas, betas, means, varis, strict=True)]
            y = msdc.multiscale_depthwise_conv3d_triton(x, weights, steps, combine)
            v = torch.randn(b, c, d, h, w, dtype=dtype).contiguous(memory_format=cl).requires_grad_(train)
            avg, mx = gating.channel_pool_triton(v)
            gc = torch.sigmoid(avg + mx).reshape(b, c, 1, 1, 1).detach().requires_grad_(train)
            pooled = gating.spatial_pool_triton(v, gc)
            gs = torch.sigmoid(pooled[:, :1]).detach().requires_grad_(train)
            out = gating.apply_gates_triton(v, gc, gs)
            if train:
                torch.autograd.backward([y, avg, mx, pooled, out],
                                        [torch.randn_like(t) for t in (y, avg, mx, pooled, out)])
    finally:
        JITFunction.run = original
    return recorder.launches


def _wide_strides(args: tuple, fn: JITFunction) -> tuple:
    """The same launch with every stride past 2**31 (a tensor of more than 2**31 elements)."""
    names = [p.name for p in fn.params]
    return tuple(a * 2**27 if n.startswith("stride_") and isinstance(a, int) and a > 1 else a
                 for n, a in zip(names, args, strict=False))


def _specialise(fn: JITFunction, args: tuple, kwargs: dict):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` would build them."""
    from triton.compiler import make_backend

    backend = make_backend(TARGET)
    kwargs = dict(kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def _inspect(cubin: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([BIN / "cuobjdump", "-res-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([BIN / "cuobjdump", "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    res = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    widths = Counter({"LDG.E.128": "128", "LDG.E.64": "64"}.get(m, "32") for m in re.findall(r"LDG\.E[.\w]*", sass))
    return {
        "regs": int(res.get("REG", 0)),
        "stack": int(res.get("STACK", 0)),
        "ldl": len(re.findall(r"\bLDL\b", sass)),
        "stl": len(re.findall(r"\bSTL\b", sass)),
        "ldg": dict(sorted(widths.items())),
        "calls": len(re.findall(r"\bCALL\.", sass)),
    }


def _label(fn: JITFunction, constexprs: dict, options) -> str:
    named = {fn.params[p[0]].name: v for p, v in constexprs.items() if len(p) == 1}
    keys = ("MODE", "CONCAT", "NB", "KDM", "KHM", "KWM", "BLOCK_S", "BLOCK_C")
    parts = [f"{k}={named[k]}" for k in keys if k in named]
    declared = {p.name for p in fn.params if p.is_constexpr}
    ones = sorted(k for k, v in named.items() if v == 1 and k not in declared)
    if ones:
        parts.append("1:" + ",".join(ones))
    return f"{fn.__name__.strip('_')} {' '.join(parts)} warps={options.num_warps}"


def run(cases, check: bool) -> tuple[list[dict], list[str]]:
    rows, problems, seen = [], [], set()
    for case in cases:
        shape, dtype, _, _, reference = case
        launches = _record(case)
        variants = [(fn, args, kw, "") for fn, args, kw in launches]
        if reference and dtype is torch.bfloat16:
            variants += [(fn, _wide_strides(args, fn), kw, " i64") for fn, args, kw in launches]
        for fn, args, kwargs, tag in variants:
            signature, constexprs, attrs, options = _specialise(fn, args, kwargs)
            key = (fn.__name__, str(signature), str(constexprs), str(attrs), options.num_warps, reference)
            if key in seen:
                continue
            seen.add(key)
            label = _label(fn, constexprs, options) + tag
            t0 = time.perf_counter()
            try:
                src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
                compiled = triton.compile(src, target=TARGET, options=options.__dict__)
            except Exception as exc:  # a kernel that does not build for sm_90 is the finding
                problems.append(f"{label}: does not compile for sm_90: {type(exc).__name__}: {exc}")
                continue
            row = {"kernel": label, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                   "reference": reference, **_inspect(compiled.asm["cubin"]),
                   "compile_s": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            spills = row["ldl"] + row["stl"]
            print(f"{row['kernel']:<64} {row['dtype']:<9} regs {row['regs']:>3} stack {row['stack']:>4} "
                  f"ldl/stl {row['ldl']:>3}/{row['stl']:<3} calls {row['calls']:>2} ldg {row['ldg']}"
                  + ("  SPILLS" if spills else ""),
                  flush=True)
            if check and reference and spills:
                problems.append(f"{label} ({row['dtype']}, {shape}): spills ({row['ldl']} local loads)")
            if check and reference and row["calls"]:
                problems.append(f"{label} ({row['dtype']}, {shape}): {row['calls']} subroutine calls")
    return rows, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail on a compile error or a spill")
    parser.add_argument("--quick", action="store_true", help="one reference and one awkward case")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows, problems = run(QUICK_CASES if args.quick else CASES, args.check)
    if args.json:
        write_json(args.json, {"triton": triton.__version__, "target": "sm_90", "rows": rows})
    for p in problems:
        print("FAIL", p)
    print(f"{len(rows)} kernel specialisations compiled for sm_90, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

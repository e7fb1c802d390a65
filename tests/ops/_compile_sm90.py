"""Compile every mmscale Triton kernel for Hopper (sm_90) without a GPU.

Run as a script in a fresh process with ``TRITON_INTERPRET=0`` (the interpreter
would replace the kernels): ``python tests/ops/_compile_sm90.py``. Triton's bundled
``ptxas`` produces a cubin, so this catches constructs that only the interpreter
accepts. Prints one line per kernel and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from mmscale.ops.gating import triton as gk  # noqa: E402
from mmscale.ops.msdc import triton as mk  # noqa: E402

INT_PTRS = {"pcnt_ptr", "cnt_ptr", "tap_ptr"}


def _signature(fn, constexprs: dict, ptr_dtype: str, int_dtype: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in INT_PTRS else ptr_dtype
        else:
            sig[name] = int_dtype
    return sig


def compile_one(label: str, fn, constexprs: dict, ptr_dtype: str = "*fp32", int_dtype: str = "i32") -> None:
    src = triton.compiler.ASTSource(fn=fn, signature=_signature(fn, constexprs, ptr_dtype, int_dtype),
                                    constexprs=constexprs)
    t0 = time.perf_counter()
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    print(f"ok {label}: cubin {len(out.asm['cubin'])} bytes, {time.perf_counter() - t0:.1f} s", flush=True)


def main() -> int:
    blocks = {"BLOCK_S": 64, "BLOCK_C": 32}
    for fn in (gk._channel_pool_fwd_kernel, gk._channel_pool_bwd_kernel, gk._spatial_pool_fwd_kernel,
               gk._spatial_pool_bwd_kernel, gk._apply_gates_fwd_kernel, gk._apply_gates_bwd_kernel):
        compile_one(fn.__name__, fn, blocks)
    compile_one("_apply_gates_fwd_kernel bf16 i64", gk._apply_gates_fwd_kernel, blocks, "*bf16", "i64")
    def branches(ks):
        out = {}
        for i in range(4):
            k = ks[i] if i < len(ks) else (1, 1, 1)
            out.update({f"K{i}D": k[0], f"K{i}H": k[1], f"K{i}W": k[2], f"OFF{i}": 0})
        kmax = [max(k[j] for k in ks) for j in range(3)]
        return dict(out, NB=len(ks), KDM=kmax[0], KHM=kmax[1], KWM=kmax[2], **blocks)

    two = branches([(1, 1, 1), (3, 3, 3)])
    four = branches([(1, 1, 1), (3, 3, 3), (1, 1, 3), (3, 1, 1)])
    for mode in range(4):
        compile_one(f"_msdc_fwd_kernel mode={mode} (1,3)", mk._msdc_fwd_kernel, dict(two, MODE=mode, CONCAT=False))
    compile_one("_msdc_fwd_kernel mode=3 4 branches concat", mk._msdc_fwd_kernel, dict(four, MODE=3, CONCAT=True))
    compile_one("_msdc_fwd_kernel mode=1 bf16 i64", mk._msdc_fwd_kernel, dict(two, MODE=1, CONCAT=False),
                "*bf16", "i64")
    iso135 = branches([(1, 1, 1), (3, 3, 3), (5, 5, 5)])
    compile_one("_msdc_fwd_kernel mode=1 (1,3,5)", mk._msdc_fwd_kernel, dict(iso135, MODE=1, CONCAT=False))
    compile_one("_msdc_bwd_dx_kernel 4 branches", mk._msdc_bwd_dx_kernel, dict(four, ACCUMULATE=True))
    compile_one("_msdc_bwd_dw_kernel", mk._msdc_bwd_dw_kernel, blocks)
    # Triton specialises integer arguments equal to 1 into constexprs (batch 1, one
    # channel, unit strides): the kernels must compile that way too
    ones = {"B": 1, "E": 1, "C": 1, "stride_hc": 1, "stride_yc": 1, "stride_xc": 1, "stride_xw": 1}
    for label, fn, extra in [
        ("_msdc_fwd_kernel mode=3", mk._msdc_fwd_kernel, dict(two, MODE=3, CONCAT=True)),
        ("_msdc_bwd_dx_kernel", mk._msdc_bwd_dx_kernel, dict(two, ACCUMULATE=False)),
        ("_msdc_bwd_dw_kernel", mk._msdc_bwd_dw_kernel, blocks),
        ("_channel_pool_fwd_kernel", gk._channel_pool_fwd_kernel, blocks),
        ("_spatial_pool_bwd_kernel", gk._spatial_pool_bwd_kernel, blocks),
        ("_apply_gates_bwd_kernel", gk._apply_gates_bwd_kernel, blocks),
    ]:
        spec = {k: v for k, v in ones.items() if k in fn.arg_names}
        compile_one(f"{label} with 1-specialised {sorted(spec)}", fn, dict(extra, **spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The custom ops' fake implementations describe their real outputs exactly.

Under ``torch.compile`` the Triton ops are ``torch.library`` custom ops, and the
compiler plans the code around them from their fake implementations alone: Inductor
indexes an output through the strides the fake declared. A fake whose strides differ
from the real output's gives wrong numbers, silently, only in compiled code on a GPU
(the ``aot_eager`` tests on CPU generate no such code). So here every op, forward
and backward, runs for real (through the interpreter) and under ``FakeTensorMode``
on inputs of several layouts and dtypes, and each output's shape, dtype and strides
must agree.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

CL = torch.channels_last_3d


def _layouts():
    base = torch.randn(2, 3, 2, 4, 10)
    return {
        "channels_last": base.contiguous(memory_format=CL),
        "contiguous": base.contiguous(),
        "strided": base[..., ::2],  # not dense: every other voxel along W
        "float16": base.half().contiguous(memory_format=CL),
    }


def _check(op, args):
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_args = pytree.tree_map_only(torch.Tensor, mode.from_tensor, args)
        fake = op(*fake_args)
    real, fake = pytree.tree_leaves(real), pytree.tree_leaves(fake)
    assert len(real) == len(fake)
    for i, (r, f) in enumerate(zip(real, fake, strict=True)):
        assert (f.shape, f.dtype) == (r.shape, r.dtype), f"{op}: output {i}"
        # strides matter only along axes longer than 1
        r_strides = [s for s, n in zip(r.stride(), r.shape, strict=True) if n > 1]
        f_strides = [s for s, n in zip(f.stride(), f.shape, strict=True) if n > 1]
        assert f_strides == r_strides, f"{op}: output {i} strides {f.stride()} (fake) vs {r.stride()} (real)"
    return real


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided", "float16"])
def test_gating_fakes_match_real_outputs(kernels_for, layout):
    kernels_for("cpu", "gating")
    ops = torch.ops.mmscale
    x = _layouts()[layout]
    B, C, D, H, W = x.shape
    avg, mx_out, mx, cnt = _check(ops.channel_pool.default, (x,))
    _check(ops.channel_pool_bwd.default, (x, mx, cnt, torch.randn(B, C).to(x.dtype), torch.randn(B, C).to(x.dtype)))
    gc = torch.rand(B, C, 1, 1, 1)
    pooled, smx, scnt = _check(ops.spatial_pool.default, (x, gc))
    _check(ops.spatial_pool_bwd.default, (x, gc, smx, scnt, torch.randn_like(pooled)))
    gs = torch.rand(B, 1, D, H, W)
    y = _check(ops.apply_gates.default, (x, gc, gs))[0]
    _check(ops.apply_gates_bwd.default, (x, gc, gs, torch.randn_like(y)))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided", "float16"])
@pytest.mark.parametrize("train,concat", [(True, False), (False, True)], ids=["train-add", "eval-concat"])
def test_msdc_fakes_match_real_outputs(kernels_for, layout, train, concat):
    kernels_for("cpu", "msdc")
    ops = torch.ops.mmscale
    h = _layouts()[layout]
    E = h.shape[1]
    ks = [(1, 1, 1), (3, 3, 3)]
    ws = [torch.randn(E, 1, *k).to(h.dtype) for k in ks]
    gammas = [torch.rand(E) + 0.5 for _ in ks]
    betas = [torch.rand(E) for _ in ks]
    means = [] if train else [torch.zeros(E) for _ in ks]
    varis = [] if train else [torch.ones(E) for _ in ks]
    y, prm, wpack, _, _ = _check(ops.msdc_fwd.default, (h, ws, gammas, betas, means, varis, train, 1e-5, concat))
    flat = [k for size in ks for k in size]
    _check(ops.msdc_bwd.default, (torch.randn_like(y), h, flat, wpack, prm, train, concat))

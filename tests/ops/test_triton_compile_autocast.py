"""The Triton ops under ``torch.compile`` and ``torch.autocast``.

``torch.compile``: under Dynamo the Triton entry points call ops registered with
``torch.library.custom_op`` (fake and autograd implementations included), so a whole
block compiles with ``fullgraph=True``; outputs, gradients and BN running statistics
must equal eager mode. (The ``aot_eager`` backend is used so no C++ toolchain is
needed on CPU; on a GPU the tests use Inductor.)

``torch.autocast``: the multi-scale depthwise op casts its input to the autocast
dtype (as ``F.conv3d`` would) and returns that dtype; the gating ops are elementwise
and follow PyTorch's type promotion of their inputs.
"""

from __future__ import annotations

import pytest
import torch

from mmscale.ops.batch_norm import BatchNormState
from mmscale.ops.gating import apply_gates, channel_pool, spatial_pool
from mmscale.ops.msdc import multiscale_depthwise_conv3d, multiscale_depthwise_conv3d_reference
from tests.ops.conftest import DEVICES


def _msdc_args(e=3, ks=(1, 3), seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def leaf(t):
        return t.to(device).requires_grad_()

    w = [leaf(torch.randn(e, 1, k, k, k, generator=gen).div_(k ** 1.5)) for k in ks]
    g = [leaf(torch.rand(e, generator=gen) + 0.5) for _ in ks]
    b = [leaf(torch.rand(e, generator=gen) + 0.5) for _ in ks]
    rm = [(0.1 * torch.randn(e, generator=gen)).to(device) for _ in ks]
    rv = [(torch.rand(e, generator=gen) + 0.5).to(device) for _ in ks]
    return w, g, b, rm, rv


def _states(g, b, rm, rv, train):
    return [BatchNormState(*p, None, train, 0.1, 1e-5) for p in zip(g, b, rm, rv, strict=True)]


def _block(x, w, g, b, rm, rv, backend, train=False):
    """A small attention-like composition of all four ops, with torch code in between."""
    avg, mx = channel_pool(x, backend=backend)
    gc = torch.sigmoid(avg + mx)[:, :, None, None, None]
    pooled = spatial_pool(x, gc, backend=backend)
    gs = torch.sigmoid(pooled.sum(1, keepdim=True))
    y = apply_gates(x, gc, gs, backend=backend)
    return multiscale_depthwise_conv3d(y, w, _states(g, b, rm, rv, train), backend=backend) * 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_fullgraph_matches_eager(kernels_for, train, device):
    kernels_for(device, "msdc")
    kernels_for(device, "gating")
    torch._dynamo.reset()
    w, g, b, rm, rv = _msdc_args(device=device)
    rm_c, rv_c = [t.clone() for t in rm], [t.clone() for t in rv]
    x = torch.randn(2, 3, 2, 4, 5, device=device).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    eager = _block(x, w, g, b, rm, rv, "triton", train)
    grads_eager = torch.autograd.grad(eager.sum(), [x, *w, *g, *b])
    compiled_fn = torch.compile(_block, backend="inductor" if device == "cuda" else "aot_eager", fullgraph=True)
    compiled = compiled_fn(x, w, g, b, rm_c, rv_c, "triton", train)
    grads_compiled = torch.autograd.grad(compiled.sum(), [x, *w, *g, *b])
    # Inductor may fuse the torch code in between differently: rounding-level differences
    tol = {"atol": 1e-5, "rtol": 1e-5} if device == "cuda" else {}
    torch.testing.assert_close(compiled, eager, **tol)
    for a, c in zip(grads_eager, grads_compiled, strict=True):
        torch.testing.assert_close(c, a, **tol)
    for a, c in zip(rm + rv, rm_c + rv_c, strict=True):
        torch.testing.assert_close(c, a)
    if not train:
        torch.testing.assert_close(compiled, _block(x, w, g, b, rm, rv, "torch"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_casts_msdc_input_like_conv3d(kernels_for, device, low):
    kernels_for(device, "msdc")
    w, g, b, rm, rv = _msdc_args(device=device)
    h = torch.randn(1, 3, 2, 5, 4, device=device)
    with torch.autocast(device, dtype=low):
        y = multiscale_depthwise_conv3d(h, w, _states(g, b, rm, rv, False), backend="triton")
        y.float().sum().backward()
    assert y.dtype == low
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in (*w, *g, *b))
    ref = multiscale_depthwise_conv3d_reference(h.to(low).float(), w, _states(g, b, rm, rv, False))
    tol = {"atol": 2e-2, "rtol": 1e-2} if low == torch.float16 else {"atol": 5e-2, "rtol": 2e-2}
    torch.testing.assert_close(y.float(), ref, **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_gating_promotes_like_pytorch(kernels_for, device):
    kernels_for(device, "gating")
    for dtype in (torch.float16, torch.bfloat16):
        _check_gating_promotion(dtype, device)


def _check_gating_promotion(dtype, device):
    x = torch.randn(1, 3, 2, 3, 3, dtype=dtype, device=device)
    gc, gs = torch.rand(1, 3, 1, 1, 1, device=device), torch.rand(1, 1, 2, 3, 3, device=device)
    assert apply_gates(x, gc, gs, backend="triton").dtype == (x * gc * gs).dtype
    assert spatial_pool(x, gc, backend="triton").dtype == (x * gc).dtype

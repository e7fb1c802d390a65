"""The Triton ops under ``torch.compile`` and ``torch.autocast``.

``torch.compile``: under Dynamo the Triton entry points call ops registered with
``torch.library.custom_op`` (fake and autograd implementations included), so a whole
block compiles with ``fullgraph=True``; outputs, gradients and BN running statistics
must equal eager mode. (The ``aot_eager`` backend is used so no C++ toolchain is
needed on CPU.)

``torch.autocast``: the multi-scale depthwise op casts its input to the autocast
dtype (as ``F.conv3d`` would) and returns that dtype; the gating ops are elementwise
and follow PyTorch's type promotion of their inputs.
"""

from __future__ import annotations

import pytest
import torch

from mmscale.ops.gating import apply_gates, channel_pool, spatial_pool
from mmscale.ops.msdc import multiscale_depthwise_conv3d, multiscale_depthwise_conv3d_reference


def _msdc_args(e=3, ks=(1, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = [torch.randn(e, 1, k, k, k, generator=gen).div_(k ** 1.5).requires_grad_() for k in ks]
    g = [(torch.rand(e, generator=gen) + 0.5).requires_grad_() for _ in ks]
    b = [(torch.rand(e, generator=gen) + 0.5).requires_grad_() for _ in ks]
    rm = [0.1 * torch.randn(e, generator=gen) for _ in ks]
    rv = [torch.rand(e, generator=gen) + 0.5 for _ in ks]
    return w, g, b, rm, rv


def _block(x, w, g, b, rm, rv, backend, train=False):
    """A small attention-like composition of all four ops, with torch code in between."""
    avg, mx = channel_pool(x, backend=backend)
    gc = torch.sigmoid(avg + mx)[:, :, None, None, None]
    pooled = spatial_pool(x, gc, backend=backend)
    gs = torch.sigmoid(pooled.sum(1, keepdim=True))
    y = apply_gates(x, gc, gs, backend=backend)
    return multiscale_depthwise_conv3d(y, w, g, b, rm, rv, train, 0.1, 1e-5, backend=backend) * 0.5


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_fullgraph_matches_eager(kernels_for, train):
    kernels_for("cpu", "msdc")
    kernels_for("cpu", "gating")
    from mmscale.ops._triton_utils import has_custom_op

    if not has_custom_op():
        pytest.skip("torch.library.custom_op needs torch >= 2.4")
    torch._dynamo.reset()
    w, g, b, rm, rv = _msdc_args()
    rm_c, rv_c = [t.clone() for t in rm], [t.clone() for t in rv]
    x = torch.randn(2, 3, 2, 4, 5).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    eager = _block(x, w, g, b, rm, rv, "triton", train)
    grads_eager = torch.autograd.grad(eager.sum(), [x, *w, *g, *b])
    compiled_fn = torch.compile(_block, backend="aot_eager", fullgraph=True)
    compiled = compiled_fn(x, w, g, b, rm_c, rv_c, "triton", train)
    grads_compiled = torch.autograd.grad(compiled.sum(), [x, *w, *g, *b])
    torch.testing.assert_close(compiled, eager)
    for a, c in zip(grads_eager, grads_compiled, strict=True):
        torch.testing.assert_close(c, a)
    for a, c in zip(rm + rv, rm_c + rv_c, strict=True):
        torch.testing.assert_close(c, a)
    if not train:
        torch.testing.assert_close(compiled, _block(x, w, g, b, rm, rv, "torch"), atol=1e-5, rtol=1e-5)


def test_autocast_casts_msdc_input_like_conv3d(kernels_for):
    kernels_for("cpu", "msdc")
    w, g, b, rm, rv = _msdc_args()
    h = torch.randn(1, 3, 2, 5, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        y = multiscale_depthwise_conv3d(h, w, g, b, rm, rv, False, 0.1, 1e-5, backend="triton")
        y.float().sum().backward()
    assert y.dtype == torch.float16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in (*w, *g, *b))
    ref = multiscale_depthwise_conv3d_reference(h.half().float(), w, g, b, rm, rv, False, 0.1, 1e-5)
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16])
def test_gating_promotes_like_pytorch(kernels_for, dtype):
    kernels_for("cpu", "gating")
    x = torch.randn(1, 3, 2, 3, 3, dtype=dtype)
    gc, gs = torch.rand(1, 3, 1, 1, 1), torch.rand(1, 1, 2, 3, 3)
    assert apply_gates(x, gc, gs, backend="triton").dtype == (x * gc * gs).dtype
    assert spatial_pool(x, gc, backend="triton").dtype == (x * gc).dtype

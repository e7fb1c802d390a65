"""The E3D-MSCA layer runs its ops through the Triton kernels and matches its torch backend.

The layer (mmscale/layers/attention.py) calls the dispatching ops with its
``backend``; this checks that the kernels plug in there: same module state, backend
"torch" vs "triton", training step (output, input and every parameter gradient,
BN running statistics) with no fallback warning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mmscale import MultiScaleConvAttention3d
from tests.ops.conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
def test_attention_block_triton_backend_matches_torch_backend(kernels_for, monkeypatch, device):
    kernels_for(device, "msdc")
    kernels_for(device, "gating")
    if device == "cuda":  # a float32 reference, not TF32
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    ref = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3), reduction=2, spatial_kernel=3, backend="torch")
    ref = ref.to(device).train()
    fast = copy.deepcopy(ref)
    # on CUDA "auto" must pick the kernels; on the CPU only an explicit "triton" runs them
    for module in fast.modules():
        if hasattr(module, "backend"):
            module.backend = "auto" if device == "cuda" else "triton"
    x = torch.randn(2, 4, 2, 5, 3, device=device).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    calls = []
    for op, entry in [("msdc", "multiscale_depthwise_conv3d_triton"), ("gating", "channel_pool_triton"),
                      ("gating", "spatial_pool_triton"), ("gating", "apply_gates_triton")]:
        module = kernels_for(device, op)
        original = getattr(module, entry)
        monkeypatch.setattr(module, entry,
                            lambda *a, _entry=entry, _original=original, **k: calls.append(_entry) or _original(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        y = fast(x)
        grads = torch.autograd.grad(y.sum(), [x, *fast.parameters()])
    # every op ran in Triton ("auto" falls back silently, so count the calls)
    assert set(calls) == {"multiscale_depthwise_conv3d_triton", "channel_pool_triton", "spatial_pool_triton",
                          "apply_gates_triton"}, calls
    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    for b, r in zip(fast.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, r)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_the_tensors_device_not_the_current_one(kernels_for):
    kernels_for("cuda", "msdc")
    gating = kernels_for("cuda", "gating")
    torch.manual_seed(0)
    ref = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3), reduction=2, spatial_kernel=3, backend="torch").train()
    fast = copy.deepcopy(ref).to("cuda:1")
    for module in fast.modules():
        if hasattr(module, "backend"):
            module.backend = "triton"
    x = torch.randn(2, 4, 2, 5, 3).contiguous(memory_format=torch.channels_last_3d)
    x1 = x.to("cuda:1").requires_grad_()
    with torch.cuda.device(0):  # the current device is not the tensors' device
        y = fast(x1)
        (dx,) = torch.autograd.grad(y.sum(), [x1])
        # autograd runs backward on the tensors' device by itself: call backward launchers directly too
        gc, gs = torch.rand(2, 4, 1, 1, 1, device="cuda:1"), torch.rand(2, 1, 2, 5, 3, device="cuda:1")
        dy = torch.randn(2, 4, 2, 5, 3, device="cuda:1")
        dxg, _, _ = gating._apply_gates_bwd(x1.detach(), gc, gs, dy)
    assert y.device == torch.device("cuda:1")
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    (dx_ref,) = torch.autograd.grad(y_ref.sum(), [xr])
    torch.testing.assert_close(y.cpu(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.cpu(), dx_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dxg.cpu(), (dy * gc * gs).cpu(), atol=1e-6, rtol=1e-6)

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
    msdc_kernels = kernels_for(device, "msdc")
    original = msdc_kernels.multiscale_depthwise_conv3d_triton
    monkeypatch.setattr(msdc_kernels, "multiscale_depthwise_conv3d_triton",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        y = fast(x)
        grads = torch.autograd.grad(y.sum(), [x, *fast.parameters()])
    assert calls, "the layer did not run the Triton kernels"
    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    for b, r in zip(fast.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, r)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_the_tensors_device_not_the_current_one(kernels_for, monkeypatch):
    kernels_for("cuda", "msdc")
    kernels_for("cuda", "gating")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # a float32 comparison, not TF32
    torch.manual_seed(0)
    ref = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3), reduction=2, spatial_kernel=3, backend="torch").train()
    fast = copy.deepcopy(ref).to("cuda:1")
    for module in fast.modules():
        if hasattr(module, "backend"):
            module.backend = "triton"
    x = torch.randn(2, 4, 2, 5, 3).contiguous(memory_format=torch.channels_last_3d)
    with torch.cuda.device(0):  # the current device is not the tensors' device
        y = fast(x.to("cuda:1"))
        y.sum().backward()
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y.cpu(), ref(x), atol=1e-5, rtol=1e-5)

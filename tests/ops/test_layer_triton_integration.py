"""The E3D-MSCA layer runs its ops through the Triton kernels and matches its torch backend.

The layer (mmscale/layers/attention.py) calls the dispatching ops with its
``backend``; this checks that the kernels plug in there: same module state, backend
"torch" vs "triton", training step (output, input and every parameter gradient,
BN running statistics) with no fallback warning.
"""

from __future__ import annotations

import copy
import warnings

import torch

from mmscale import MultiScaleConvAttention3d


def test_attention_block_triton_backend_matches_torch_backend(kernels_for):
    kernels_for("cpu", "msdc")
    kernels_for("cpu", "gating")
    torch.manual_seed(0)
    ref = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3), reduction=2, spatial_kernel=3, backend="torch").train()
    fast = copy.deepcopy(ref)
    for module in fast.modules():
        if hasattr(module, "backend"):
            module.backend = "triton"
    x = torch.randn(2, 4, 2, 5, 3).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        y = fast(x)
        grads = torch.autograd.grad(y.sum(), [x, *fast.parameters()])
    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    for b, r in zip(fast.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, r)

"""Dense 3D convolution (stride 1, "same" padding, one group) with a faster CPU weight gradient.

The gated fusion of the pyramid convolves ``C -> C`` channels with a ``3 x 3 x 3``
window on small volumes (``[2, 1024, 2, 12, 12]``, ``[2, 512, 3, 24, 24]``). ATen's
CPU weight gradient there took 2.3x and 1.5x the forward; one matrix product per
tap, ``dW[:, :, i, j, k] = G^T X_ijk`` with ``G`` the output gradient as rows
[N, C_out] and ``X_ijk`` the zero-padded input shifted by the tap, copied into one
reused buffer as rows [N, C_in], took 411 ms against 586 ms and 391 ms against
452 ms (AMD EPYC, AVX2). The forward and the input gradient stay ATen's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmscale.ops._double_backward import conv3d_grads_with_graph
from mmscale.ops.gating.gate_conv import gate_conv3d_supported

__all__ = ["dense_conv3d", "dense_conv3d_weight_grad"]


def dense_conv3d_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size: tuple[int, int, int]) -> torch.Tensor:
    """Weight gradient of a stride-1, ``k // 2``-padded, one-group 3D convolution.

    Args:
        x (torch.Tensor): the convolution's input [B, C_in, D, H, W].
        grad (torch.Tensor): gradient of its output [B, C_out, D, H, W].
        kernel_size (tuple[int, int, int]): odd (kd, kh, kw).

    Returns:
        torch.Tensor: [C_out, C_in, kd, kh, kw].

    Example:
        >>> tuple(dense_conv3d_weight_grad(torch.randn(1, 3, 2, 4, 4), torch.randn(1, 5, 2, 4, 4), (3, 3, 3)).shape)
        (5, 3, 3, 3, 3)
    """
    b, c_in, d, h, w = x.shape
    c_out = grad.shape[1]
    kd, kh, kw = kernel_size
    pd, ph, pw = kd // 2, kh // 2, kw // 2
    xp = F.pad(x.permute(0, 2, 3, 4, 1), (0, 0, pw, pw, ph, ph, pd, pd))  # [B, D+2pd, H+2ph, W+2pw, C_in]
    g_t = grad.permute(0, 2, 3, 4, 1).reshape(-1, c_out).t()  # [C_out, N]
    n = g_t.shape[1]
    shifted = x.new_empty(b, d, h, w, c_in)
    out = x.new_empty(kd, kh, kw, c_out, c_in)
    for i in range(kd):
        for j in range(kh):
            for k in range(kw):
                shifted.copy_(xp[:, i : i + d, j : j + h, k : k + w])
                torch.mm(g_t, shifted.view(n, c_in), out=out[i, j, k])
    return out.permute(3, 4, 0, 1, 2)


class _DenseConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        ctx.has_bias = bias is not None
        return F.conv3d(x, weight, bias, 1, tuple(k // 2 for k in weight.shape[2:]))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        padding = tuple(k // 2 for k in weight.shape[2:])
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            return conv3d_grads_with_graph(x, weight, bias, grad, (1, 1, 1), padding, 1, ctx.needs_input_grad)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, (1, 1, 1), padding, (1, 1, 1), False, (0, 0, 0), 1, (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = dense_conv3d_weight_grad(x, grad, tuple(weight.shape[2:]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b


def dense_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=k // 2)`` (stride 1, one group), cheaper CPU weight gradient.

    On CPU (float32/float64, outside autocast and tracing, odd window sizes) an
    autograd function with :func:`dense_conv3d_weight_grad` computes it; elsewhere
    it is ``F.conv3d``.

    Args:
        x (torch.Tensor): input [B, C_in, D, H, W].
        weight (torch.Tensor): filters [C_out, C_in, kd, kh, kw].
        bias (torch.Tensor | None): bias [C_out].

    Returns:
        torch.Tensor: [B, C_out, D, H, W].

    Example:
        >>> tuple(dense_conv3d(torch.randn(2, 4, 3, 5, 5), torch.randn(6, 4, 3, 3, 3)).shape)
        (2, 6, 3, 5, 5)
    """
    if gate_conv3d_supported(x, weight) and torch.is_grad_enabled() and weight.requires_grad:
        return _DenseConv3d.apply(x, weight, bias)
    return F.conv3d(x, weight, bias, 1, tuple(k // 2 for k in weight.shape[2:]))

"""``x * g_c`` written in channels_last_3d in one pass, differentiable.

The block's PyTorch path needs the channel-gated volume in channels_last_3d (the
spatial pooling reads it, the multi-scale block takes it as rows). For an NCDHW
input, ``(x * g_c).contiguous(memory_format=torch.channels_last_3d)`` writes two
full-size tensors forward and two more backward (the product, then the copy); this
function writes one each way.
"""

from __future__ import annotations

import torch

from mmscale.ops._dispatch import tracing

__all__ = ["scale_channels_last"]

_CL = torch.channels_last_3d


class _ScaleChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate):
        ctx.save_for_backward(x, gate)
        return torch.mul(x, gate, out=torch.empty_like(x, memory_format=_CL))

    @staticmethod
    def backward(ctx, grad):
        x, gate = ctx.saved_tensors
        grad_x = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * gate
        if ctx.needs_input_grad[1]:
            grad_gate = (grad * x).sum((2, 3, 4), keepdim=True)
        return grad_x, grad_gate


def scale_channels_last(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate`` in channels_last_3d memory format.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W], any memory format.
        gate (torch.Tensor): per-channel gate [B, C, 1, 1, 1].

    Returns:
        torch.Tensor: [B, C, D, H, W], channels_last_3d.

    Example:
        >>> y = scale_channels_last(torch.ones(1, 2, 2, 3, 3), torch.full((1, 2, 1, 1, 1), 0.5))
        >>> y.is_contiguous(memory_format=torch.channels_last_3d), y.max().item()
        (True, 0.5)
    """
    if tracing():  # torch.compile / torch.export see plain ops
        return (x * gate).contiguous(memory_format=_CL)
    if torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad):
        return _ScaleChannelsLast.apply(x, gate)
    return torch.mul(x, gate, out=torch.empty_like(x, memory_format=_CL))

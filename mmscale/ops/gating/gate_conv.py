"""Gate convolutions (few output channels) with a faster CPU backward.

``SpatialAttention3d`` convolves its two pooled maps ``[B, 2, D, H, W]`` into one
gate map with a ``7 x 7 x 7`` window. oneDNN runs that forward well, but ATen's
backward of a convolution with so few channels is slow on CPU: on an AMD EPYC
(AVX2) at ``[2, 2, 6, 48, 48]`` it took about 235 ms of CPU time against 16 ms for
the forward. Both gradients are convolutions that run as fast as the forward:

* input gradient (stride 1): the output gradient convolved with the filters
  flipped in space and with input and output channels swapped (24 ms);
* weight gradient (stride 1, one group): for input channel ``i`` and output
  channel ``o`` it is the cross-correlation of ``x[:, i]`` with ``grad[:, o]`` summed
  over the batch, i.e. one convolution with the batch as its channel axis: input
  ``x`` with batch and channels swapped, ``[C_in, B, D, H, W]``, "filters" the output
  gradient swapped the same way, ``[C_out, B, D', H', W']``, and output the window
  ``[C_in, C_out, kd, kh, kw]`` (21 ms).

The gated fusion of the pyramid has the same kind of convolution (``2 C -> 2`` maps,
``3 x 3 x 3``): at ``[2, 1024, 3, 24, 24]`` ATen's weight gradient took 211 ms and
the convolution above 21 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmscale.ops._dispatch import cpu_autograd_path, tracing
from mmscale.ops._double_backward import conv3d_grads_with_graph

__all__ = ["gate_conv3d", "gate_conv3d_supported"]


def gate_conv3d_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`gate_conv3d` runs its own backward for these arguments.

    On CPU, float32/float64, outside autocast and outside ``torch.compile`` tracing,
    with odd window sizes (the convolution keeps the spatial size).

    Args:
        x (torch.Tensor): input [B, C_in, D, H, W].
        weight (torch.Tensor): filters [C_out, C_in, kd, kh, kw].

    Returns:
        bool: True when the faster backward applies.

    Example:
        >>> gate_conv3d_supported(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 3, 3))
        True
    """
    return (
        cpu_autograd_path(x)
        and all(k % 2 == 1 for k in weight.shape[2:])
        and not tracing()
    )


class _GateConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        padding = tuple(k // 2 for k in weight.shape[2:])
        ctx.save_for_backward(x, weight, bias)
        ctx.padding = padding
        return F.conv3d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        padding = ctx.padding
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            return conv3d_grads_with_graph(x, weight, bias, grad, (1, 1, 1), padding, 1, ctx.needs_input_grad)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip((2, 3, 4)).transpose(0, 1)  # [C_in, C_out, kd, kh, kw]
            grad_x = F.conv3d(grad, flipped, None, 1, padding)
        if ctx.needs_input_grad[1]:
            # batch as the channel axis: [C_in, B, ...] correlated with [C_out, B, ...]
            grad_w = F.conv3d(x.transpose(0, 1), grad.transpose(0, 1), None, 1, padding).transpose(0, 1)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b


def gate_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=k // 2)`` (stride 1, one group), faster backward on CPU.

    Meant for convolutions with few output channels (gate maps): their weight
    gradient is then a convolution as cheap as the forward.

    Args:
        x (torch.Tensor): input [B, C_in, D, H, W].
        weight (torch.Tensor): filters [C_out, C_in, kd, kh, kw], odd sizes.
        bias (torch.Tensor | None): bias [C_out].

    Returns:
        torch.Tensor: [B, C_out, D, H, W].

    Example:
        >>> tuple(gate_conv3d(torch.randn(2, 2, 3, 5, 5), torch.randn(1, 2, 3, 3, 3)).shape)
        (2, 1, 3, 5, 5)
    """
    if gate_conv3d_supported(x, weight):
        return _GateConv3d.apply(x, weight, bias)
    return F.conv3d(x, weight, bias, 1, tuple(k // 2 for k in weight.shape[2:]))

"""Grouped 3D convolution: reference (``F.conv3d``) and a faster CPU autograd path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmscale.ops._dispatch import cpu_autograd_path
from mmscale.ops.grouped_conv3d.cpu import (
    LARGE_INPUT,
    grouped_conv3d_cpu,
    grouped_input_grad,
    grouped_weight_grad,
)
from mmscale.ops.grouped_conv3d.reference import grouped_conv3d_reference

__all__ = [
    "LARGE_INPUT",
    "grouped_conv3d",
    "grouped_conv3d_cpu",
    "grouped_conv3d_reference",
    "grouped_input_grad",
    "grouped_weight_grad",
]


def grouped_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Grouped 3D convolution (no bias), the fastest PyTorch path for the device.

    Returns the same as ``F.conv3d(x, weight, None, stride, padding, 1, groups)``. On
    CPU (float32/float64, outside autocast) the autograd function of
    :mod:`mmscale.ops.grouped_conv3d.cpu` computes it, with ATen's forward and a
    cheaper backward; elsewhere it is ``F.conv3d``.

    Args:
        x (torch.Tensor): input [B, C_in, D, H, W].
        weight (torch.Tensor): filters [C_out, C_in / groups, kd, kh, kw].
        stride (int | tuple[int, int, int]): stride per spatial axis.
        padding (int | tuple[int, int, int]): zero padding per spatial axis.
        groups (int): number of channel groups.

    Returns:
        torch.Tensor: output [B, C_out, D', H', W'].

    Example:
        >>> y = grouped_conv3d(torch.randn(1, 8, 3, 5, 5), torch.randn(8, 4, 3, 3, 3),
        ...                    stride=2, padding=1, groups=2)
        >>> tuple(y.shape)
        (1, 8, 2, 3, 3)
    """
    if cpu_autograd_path(x) and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return grouped_conv3d_cpu(x, weight, stride, padding, groups)
    return F.conv3d(x, weight, None, stride, padding, 1, groups)

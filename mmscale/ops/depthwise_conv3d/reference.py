"""Plain PyTorch depthwise 3D convolution: the oracle for the faster paths."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv3d_reference"]


def depthwise_conv3d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """Depthwise 3D convolution through ``F.conv3d(groups=C)``.

    Args:
        x (torch.Tensor): input of shape [B, C, D, H, W].
        weight (torch.Tensor): filters of shape [C, 1, kd, kh, kw].
        bias (torch.Tensor | None): optional bias of shape [C].
        stride (tuple[int, int, int]): stride per spatial axis.
        padding (tuple[int, int, int]): zero padding per spatial axis.

    Returns:
        torch.Tensor: output of shape [B, C, D', H', W'].

    Example:
        >>> y = depthwise_conv3d_reference(torch.randn(1, 4, 3, 5, 5), torch.randn(4, 1, 3, 3, 3),
        ...                                padding=(1, 1, 1))
        >>> tuple(y.shape)
        (1, 4, 3, 5, 5)
    """
    return F.conv3d(x, weight, bias, stride, padding, 1, x.shape[1])

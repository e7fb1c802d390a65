"""Plain PyTorch grouped 3D convolution: the oracle for the faster CPU path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["grouped_conv3d_reference"]


def grouped_conv3d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Grouped 3D convolution (no bias) through ``F.conv3d``: the oracle of
    :func:`mmscale.ops.grouped_conv3d.grouped_conv3d`, with its arguments and output
    (input [B, C_in, D, H, W], filters [C_out, C_in / groups, kd, kh, kw], output
    [B, C_out, D', H', W']).

    Example:
        >>> y = grouped_conv3d_reference(torch.randn(1, 8, 3, 5, 5), torch.randn(8, 4, 3, 3, 3),
        ...                              padding=1, groups=2)
        >>> tuple(y.shape)
        (1, 8, 3, 5, 5)
    """
    return F.conv3d(x, weight, None, stride, padding, 1, groups)

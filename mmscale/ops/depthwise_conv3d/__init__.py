"""Depthwise 3D convolution: reference (``F.conv3d``) and a faster CPU autograd path."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmscale.ops._dispatch import cpu_autograd_path
from mmscale.ops.depthwise_conv3d.cpu import depthwise_weight_grad, multi_depthwise_conv3d_cpu
from mmscale.ops.depthwise_conv3d.reference import depthwise_conv3d_reference

__all__ = [
    "depthwise_conv3d",
    "depthwise_conv3d_reference",
    "depthwise_weight_grad",
    "multi_depthwise_conv3d",
    "multi_depthwise_conv3d_cpu",
]


def multi_depthwise_conv3d(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    stride: tuple[int, int, int] = (1, 1, 1),
    paddings: Sequence[tuple[int, int, int]] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Depthwise 3D convolutions of one input with several filters (no bias).

    On CPU (float32/float64, outside autocast) one autograd function computes all of
    them with a cheaper backward (:mod:`mmscale.ops.depthwise_conv3d.cpu`); elsewhere
    each is ``F.conv3d``. A ``1x1x1`` filter is computed as a per-channel scale.

    Args:
        x (torch.Tensor): input [B, C, D, H, W].
        weights (Sequence[torch.Tensor]): filters, each [C, 1, kd, kh, kw].
        stride (tuple[int, int, int]): stride of every convolution.
        paddings (Sequence[tuple[int, int, int]] | None): zero padding per filter
            (default ``k // 2`` per axis).

    Returns:
        tuple[torch.Tensor, ...]: one output [B, C, D', H', W'] per filter.

    Example:
        >>> ys = multi_depthwise_conv3d(torch.randn(1, 4, 3, 5, 5), [torch.randn(4, 1, 3, 3, 3)])
        >>> tuple(ys[0].shape)
        (1, 4, 3, 5, 5)
    """
    if paddings is None:
        paddings = [tuple(k // 2 for k in w.shape[2:]) for w in weights]
    if cpu_autograd_path(x):
        return multi_depthwise_conv3d_cpu(x, weights, stride, paddings)
    outs = []
    for w, p in zip(weights, paddings, strict=True):
        if w.shape[2:] == (1, 1, 1) and tuple(stride) == (1, 1, 1):
            outs.append(x * w.view(1, -1, 1, 1, 1))
        else:
            outs.append(depthwise_conv3d_reference(x, w, None, stride, p))
    return tuple(outs)


def depthwise_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """Depthwise 3D convolution (no bias), the fastest PyTorch path for the device.

    Args:
        x (torch.Tensor): input [B, C, D, H, W].
        weight (torch.Tensor): filters [C, 1, kd, kh, kw].
        stride (tuple[int, int, int]): stride per spatial axis.
        padding (tuple[int, int, int]): zero padding per spatial axis.

    Returns:
        torch.Tensor: output [B, C, D', H', W'].

    Example:
        >>> y = depthwise_conv3d(torch.randn(1, 4, 3, 5, 5), torch.randn(4, 1, 3, 3, 3),
        ...                      padding=(1, 1, 1))
        >>> tuple(y.shape)
        (1, 4, 3, 5, 5)
    """
    return multi_depthwise_conv3d(x, [weight], stride, [padding])[0]

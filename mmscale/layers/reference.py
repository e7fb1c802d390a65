"""The E3D-MSCA math as plain module calls: the oracle, the baseline and the hook fallback.

Separate ``nn.Conv3d``s, ``nn.BatchNorm3d``s and elementwise ops on NCDHW tensors,
with an explicit channel shuffle, written as a user would from the paper. One copy
serves three purposes:

* the ``Naive*`` classes are the oracle of the tests and the baseline of the
  benchmarks; attribute names and parameter shapes match
  :mod:`mmscale.layers.attention` and :mod:`mmscale.layers.multiscale_conv`, so
  ``load_state_dict`` moves the same weights between the two;
* the ``*_forward`` functions take any module with those attributes, so the fast
  layers run exactly this composition when a forward hook or ``SyncBatchNorm`` must
  see its submodule being called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "DepthwiseBranch3d",
    "NaiveChannelAttention3d",
    "NaiveMultiScaleConvAttention3d",
    "NaiveMultiScaleConvBlock3d",
    "NaiveMultiScaleDepthwiseConv3d",
    "NaiveSpatialAttention3d",
    "NaiveUpConv3d",
    "channel_attention_forward",
    "channel_gate",
    "channel_shuffle",
    "multiscale_conv_block_forward",
    "multiscale_depthwise_forward",
    "spatial_attention_forward",
    "up_conv_forward",
]

KernelSize = int | tuple[int, int, int]


def _triple(k: KernelSize) -> tuple[int, int, int]:
    return (k,) * 3 if isinstance(k, int) else tuple(k)


def _same_padding(k: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(i // 2 for i in k)


# ------------------------------------------------------------------ compositions
def channel_gate(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(fc2(relu(fc1(avg x))) + fc2(relu(fc1(max x))))`` [B, C, 1, 1, 1] for x [B, C, D, H, W]."""
    avg = F.adaptive_avg_pool3d(x, 1)
    mx = F.adaptive_max_pool3d(x, 1)
    return torch.sigmoid(layer.fc2(F.relu(layer.fc1(avg))) + layer.fc2(F.relu(layer.fc1(mx))))


def channel_attention_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x * channel_gate(layer, x)`` for x [B, C, D, H, W]."""
    return x * channel_gate(layer, x)


def spatial_attention_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(conv(cat[mean_C x, max_C x]))`` for x [B, C, D, H, W]."""
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    return x * torch.sigmoid(layer.conv(pooled))


def multiscale_depthwise_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every branch ``ReLU6(BN(DWConv(x)))`` of ``layer.branches``, summed or concatenated."""
    outs = [branch(x) for branch in layer.branches]
    if layer.combine == "concat":
        return torch.cat(outs, dim=1)
    out = outs[0]
    for o in outs[1:]:
        out = out + o
    return out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """View [B, g, n/g, D, H, W], swap the two channel axes, flatten back to [B, n, D, H, W]."""
    return rearrange(x, "b (g c) d h w -> b (c g) d h w", g=groups)


def multiscale_conv_block_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MSCB: expand, depthwise branches, shuffle, project, residual, for x [B, C_in, D, H, W]."""
    h = F.relu6(layer.expand_bn(layer.expand(x)))
    z = channel_shuffle(layer.dwconv(h), layer.shuffle_groups)
    y = layer.project_bn(layer.project(z))
    if layer.residual:
        y = y + (x if layer.shortcut is None else layer.shortcut(x))
    return y


def up_conv_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Trilinear x2 (align_corners=True), then ``pointwise(relu(bn(dwconv(.))))``."""
    x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
    return layer.pointwise(F.relu(layer.bn(layer.dwconv(x))))


# ----------------------------------------------------------------------- modules
class DepthwiseBranch3d(nn.Module):
    """One multi-scale branch: a depthwise ``Conv3d`` (no bias, padding k // 2) and its ``BatchNorm3d``.

    The fast layers hold their branch parameters in this module too (they read its
    weights; the plain composition calls it).
    """

    def __init__(self, channels: int, kernel_size: KernelSize, stride: KernelSize = 1) -> None:
        super().__init__()
        k = _triple(kernel_size)
        self.conv = nn.Conv3d(channels, channels, k, stride=stride, padding=_same_padding(k),
                              groups=channels, bias=False)
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class NaiveChannelAttention3d(nn.Module):
    """Plain channel attention (oracle of ``ChannelAttention3d``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // min(reduction, channels)
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_attention_forward(self, x)


class NaiveSpatialAttention3d(nn.Module):
    """Plain spatial attention (oracle of ``SpatialAttention3d``)."""

    def __init__(self, kernel_size: KernelSize = 7) -> None:
        super().__init__()
        k = _triple(kernel_size)
        self.conv = nn.Conv3d(2, 1, k, padding=_same_padding(k), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_attention_forward(self, x)


class NaiveMultiScaleDepthwiseConv3d(nn.Module):
    """Plain multi-scale depthwise convolution (oracle of ``MultiScaleDepthwiseConv3d``)."""

    def __init__(self, channels: int, kernel_sizes: Sequence[KernelSize] = (1, 3, 5), stride: KernelSize = 1,
                 combine: str = "add") -> None:
        super().__init__()
        self.combine = combine
        self.branches = nn.ModuleList(DepthwiseBranch3d(channels, k, stride) for k in kernel_sizes)
        self.out_channels = channels * (len(kernel_sizes) if combine == "concat" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multiscale_depthwise_forward(self, x)


class NaiveMultiScaleConvBlock3d(nn.Module):
    """Plain multi-scale convolution block (oracle of ``MultiScaleConvBlock3d``)."""

    def __init__(self, in_channels: int, out_channels: int | None = None,
                 kernel_sizes: Sequence[KernelSize] = (1, 3, 5), expansion: int = 2, stride: KernelSize = 1,
                 combine: str = "add") -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        hidden = in_channels * expansion
        self.expand = nn.Conv3d(in_channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm3d(hidden)
        self.dwconv = NaiveMultiScaleDepthwiseConv3d(hidden, kernel_sizes, stride, combine)
        combined = self.dwconv.out_channels
        self.shuffle_groups = math.gcd(combined, out_channels)
        self.project = nn.Conv3d(combined, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm3d(out_channels)
        self.residual = _triple(stride) == (1, 1, 1)
        self.shortcut = (nn.Conv3d(in_channels, out_channels, 1, bias=False)
                         if self.residual and in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multiscale_conv_block_forward(self, x)


class NaiveMultiScaleConvAttention3d(nn.Module):
    """Plain E3D-MSCA ``MSCB(SA(CA(x)))`` (oracle of ``MultiScaleConvAttention3d``)."""

    def __init__(self, channels: int, kernel_sizes: Sequence[KernelSize] = (1, 3, 5), expansion: int = 2,
                 reduction: int = 16, spatial_kernel: KernelSize = 7) -> None:
        super().__init__()
        self.ca = NaiveChannelAttention3d(channels, reduction)
        self.sa = NaiveSpatialAttention3d(spatial_kernel)
        self.mscb = NaiveMultiScaleConvBlock3d(channels, channels, kernel_sizes, expansion, 1, "add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mscb(self.sa(self.ca(x)))


class NaiveUpConv3d(nn.Module):
    """Plain upsampling block (oracle of ``UpConv3d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: KernelSize = 3) -> None:
        super().__init__()
        k = _triple(kernel_size)
        self.dwconv = nn.Conv3d(in_channels, in_channels, k, padding=_same_padding(k), groups=in_channels,
                                bias=False)
        self.bn = nn.BatchNorm3d(in_channels)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return up_conv_forward(self, x)


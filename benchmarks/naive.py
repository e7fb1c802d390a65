"""The E3D-MSCA math written as a user would from the paper: the baseline.

Separate ``nn.Conv3d``s, ``nn.BatchNorm3d``s and elementwise ops on contiguous
NCDHW tensors, with an explicit channel shuffle. Attribute names and parameter
shapes match :mod:`mmscale.layers.attention`, so ``load_state_dict`` moves the same
weights between the two; the tests use this module as the oracle for the layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _triple(k):
    return (k,) * 3 if isinstance(k, int) else tuple(k)


class NaiveChannelAttention3d(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // min(reduction, channels)
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=False)

    def forward(self, x):
        avg = F.adaptive_avg_pool3d(x, 1)
        mx = F.adaptive_max_pool3d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(avg))) + self.fc2(F.relu(self.fc1(mx))))
        return x * gate


class NaiveSpatialAttention3d(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        k = _triple(kernel_size)
        self.conv = nn.Conv3d(2, 1, k, padding=tuple(i // 2 for i in k), bias=False)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class NaiveBranch(nn.Module):
    def __init__(self, channels, kernel_size, stride):
        super().__init__()
        k = _triple(kernel_size)
        self.conv = nn.Conv3d(channels, channels, k, stride=stride, padding=tuple(i // 2 for i in k),
                              groups=channels, bias=False)
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x):
        return F.relu6(self.bn(self.conv(x)))


class NaiveMultiScaleDepthwiseConv3d(nn.Module):
    def __init__(self, channels, kernel_sizes=(1, 3, 5), stride=1, combine="add"):
        super().__init__()
        self.combine = combine
        self.branches = nn.ModuleList(NaiveBranch(channels, k, stride) for k in kernel_sizes)
        self.out_channels = channels * (len(kernel_sizes) if combine == "concat" else 1)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        if self.combine == "concat":
            return torch.cat(outs, dim=1)
        out = outs[0]
        for o in outs[1:]:
            out = out + o
        return out


def channel_shuffle(x, groups):
    b, c, d, h, w = x.shape
    x = x.view(b, groups, c // groups, d, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, d, h, w)


class NaiveMultiScaleConvBlock3d(nn.Module):
    def __init__(self, in_channels, out_channels=None, kernel_sizes=(1, 3, 5), expansion=2, stride=1,
                 combine="add"):
        super().__init__()
        out_channels = out_channels or in_channels
        hidden = in_channels * expansion
        self.expand = nn.Conv3d(in_channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm3d(hidden)
        self.dwconv = NaiveMultiScaleDepthwiseConv3d(hidden, kernel_sizes, stride, combine)
        combined = self.dwconv.out_channels
        self.groups = math.gcd(combined, out_channels)
        self.project = nn.Conv3d(combined, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm3d(out_channels)
        stride_one = _triple(stride) == (1, 1, 1)
        self.residual = stride_one
        self.shortcut = (nn.Conv3d(in_channels, out_channels, 1, bias=False)
                         if stride_one and in_channels != out_channels else None)

    def forward(self, x):
        h = F.relu6(self.expand_bn(self.expand(x)))
        z = channel_shuffle(self.dwconv(h), self.groups)
        y = self.project_bn(self.project(z))
        if self.residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y


class NaiveMultiScaleConvAttention3d(nn.Module):
    def __init__(self, channels, kernel_sizes=(1, 3, 5), expansion=2, reduction=16, spatial_kernel=7):
        super().__init__()
        self.ca = NaiveChannelAttention3d(channels, reduction)
        self.sa = NaiveSpatialAttention3d(spatial_kernel)
        self.mscb = NaiveMultiScaleConvBlock3d(channels, channels, kernel_sizes, expansion, 1, "add")

    def forward(self, x):
        return self.mscb(self.sa(self.ca(x)))


class NaiveUpConv3d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3):
        super().__init__()
        k = _triple(kernel_size)
        self.dwconv = nn.Conv3d(in_channels, in_channels, k, padding=tuple(i // 2 for i in k),
                                groups=in_channels, bias=False)
        self.bn = nn.BatchNorm3d(in_channels)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=True)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        return self.pointwise(F.relu(self.bn(self.dwconv(x))))

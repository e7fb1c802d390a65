"""Bidirectional feature pyramid with 3D multi-scale convolutional attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmscale._validation import positive_ints
from mmscale.layers.attention import MultiScaleConvAttention3d, SpatialAttention3d
from mmscale.layers.multiscale_conv import UpConv3d
from mmscale.ops.dense_conv3d import dense_conv3d
from mmscale.ops.gating.gate_conv import gate_conv3d

__all__ = ["GatedMapFusion3d", "BidirectionalPyramid3d"]


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Trilinear resize to ``size`` (D, H, W); a no-op when the size already matches."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=align_corners)


class GatedMapFusion3d(nn.Module):
    """Bottom-up gated fusion of a coarse map ``x`` with a finer map ``y``.

    ``y`` is resized to ``x`` (trilinear) and projected to ``channels`` (Conv1x1), then
    ``a = sigmoid(Conv3(x) * Conv3(y))``; ``[gx0, gx1] = Conv3(cat[x, x * a])``,
    ``x' = x * gx0 + x * a * gx1``; the same for ``y`` with its own conv; the output is
    ``x' + y'``. All convs have a bias; the 3x3x3 gate convs produce two maps.

    Args:
        channels (int): channels of ``x`` (and of the output).
        fine_channels (int): channels of ``y``.
        align_corners (bool): ``align_corners`` of the trilinear resize (the published
            MMCAF-Net uses True).
        always_project (bool): apply the 1x1 projection even when ``y`` already has
            ``x``'s spatial size. False is the published code's behaviour (resize and
            project only when the sizes differ; then ``y`` must already have
            ``channels`` channels); in a strided pyramid the sizes always differ, so
            both settings compute the same function there.

    Shapes:
        x: [B, channels, D, H, W], y: [B, fine_channels, D', H', W'] -> [B, channels, D, H, W]

    Raises:
        ValueError: a channel count is < 1; in ``forward``, ``x`` or ``y`` has the
            wrong channels (or, with ``always_project=False``, ``y`` has ``x``'s size
            but not ``channels`` channels).

    Example:
        >>> gf = GatedMapFusion3d(16, 8)
        >>> gf(torch.randn(1, 16, 2, 4, 4), torch.randn(1, 8, 4, 8, 8)).shape
        torch.Size([1, 16, 2, 4, 4])
    """

    def __init__(
        self, channels: int, fine_channels: int, align_corners: bool = False, always_project: bool = True
    ) -> None:
        super().__init__()
        if channels < 1 or fine_channels < 1:
            raise ValueError(
                f"channels and fine_channels must be >= 1, got {channels}, {fine_channels}"
            )
        self.channels = channels
        self.fine_channels = fine_channels
        self.align_corners = bool(align_corners)
        self.always_project = bool(always_project)
        self.project = nn.Conv3d(fine_channels, channels, 1)
        self.conv_x = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv_y = nn.Conv3d(channels, channels, 3, padding=1)
        self.gate_x = nn.Conv3d(2 * channels, 2, 3, padding=1)
        self.gate_y = nn.Conv3d(2 * channels, 2, 3, padding=1)

    @staticmethod
    def _plain_call(conv: nn.Conv3d) -> bool:
        # the module call when hooks or a replaced module must see it
        return type(conv) is not nn.Conv3d or bool(conv._forward_hooks or conv._forward_pre_hooks
                                                    or conv._backward_hooks)

    def _gate(self, conv: nn.Conv3d, z: torch.Tensor) -> torch.Tensor:
        # two output maps: gate_conv3d's backward is as cheap as the forward on CPU
        return conv(z) if self._plain_call(conv) else gate_conv3d(z, conv.weight, conv.bias)

    def _dense(self, conv: nn.Conv3d, z: torch.Tensor) -> torch.Tensor:
        # C -> C maps: dense_conv3d's weight gradient is one GEMM per tap on CPU
        return conv(z) if self._plain_call(conv) else dense_conv3d(z, conv.weight, conv.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fuse ``y`` into ``x``.

        Args:
            x (torch.Tensor): coarse map [B, channels, D, H, W].
            y (torch.Tensor): finer map [B, fine_channels, D', H', W'].

        Returns:
            torch.Tensor: [B, channels, D, H, W].

        Raises:
            ValueError: ``x`` or ``y`` does not match the layer's channels.
        """
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape [B, {self.channels}, D, H, W], got {list(x.shape)}")
        if y.dim() != 5 or y.shape[1] != self.fine_channels or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must have shape [{x.shape[0]}, {self.fine_channels}, D', H', W'], got {list(y.shape)}"
            )
        if self.always_project or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            y = self.project(_resize(y, x.shape[2:], self.align_corners))
        elif self.fine_channels != self.channels:
            raise ValueError(
                f"y has x's spatial size, so with always_project=False it is not projected and must have "
                f"{self.channels} channels, got {self.fine_channels}"
            )
        a = torch.sigmoid(self._dense(self.conv_x, x) * self._dense(self.conv_y, y))
        xa, ya = x * a, y * a
        gx = self._gate(self.gate_x, torch.cat([x, xa], dim=1))
        gy = self._gate(self.gate_y, torch.cat([y, ya], dim=1))
        x_out = x * gx[:, 0:1] + xa * gx[:, 1:2]
        y_out = y * gy[:, 0:1] + ya * gy[:, 1:2]
        return x_out + y_out


class BidirectionalPyramid3d(nn.Module):
    """Top-down E3D-MSCA pyramid followed by bottom-up gated fusion.

    Top-down: ``p_L = MSCA_L(x_L)`` on the deepest level; then for each finer level
    ``p_l = MSCA_l(x_l + resize(UpConv3d(p_{l+1})))``. Bottom-up: ``q_1 = p_1`` and
    ``q_{l+1} = GatedMapFusion3d(p_{l+1}, q_l)``. One :class:`SpatialAttention3d` can be
    shared by every level's MSCA (the paper shares it).

    Args:
        channels (Sequence[int]): channels per level, finest first (paper: 256, 512, 1024).
        kernel_sizes (Sequence): depthwise kernel sizes of each MSCA.
        expansion (int): MSCA expansion factor.
        reduction (int): MSCA channel-attention reduction.
        spatial_kernel (int): spatial-attention kernel size.
        share_spatial_attention (bool): one spatial-attention conv for all levels.
        backend (str): MSCA backend (``"auto"``, ``"torch"``, ``"triton"``).
        align_corners (bool): ``align_corners`` of every trilinear resize in the neck
            (the top-down merge after :class:`UpConv3d` and the gated fusion's resize;
            the published MMCAF-Net uses True).
        always_project (bool): :class:`GatedMapFusion3d`'s ``always_project``.

    Shapes:
        features: list of [B, channels[l], D_l, H_l, W_l], finest first -> list of the
        same shapes: ``[q_1, ..., q_L]`` (``q_L`` is the fully fused deepest map).

    Raises:
        ValueError: fewer than two levels, or inputs that do not match ``channels``.

    Example:
        >>> pyr = BidirectionalPyramid3d((8, 16, 32))
        >>> feats = [torch.randn(1, 8, 4, 8, 8), torch.randn(1, 16, 2, 4, 4),
        ...          torch.randn(1, 32, 1, 2, 2)]
        >>> [tuple(o.shape[1:]) for o in pyr(feats)]
        [(8, 4, 8, 8), (16, 2, 4, 4), (32, 1, 2, 2)]
    """

    def __init__(
        self,
        channels: Sequence[int] = (256, 512, 1024),
        kernel_sizes: Sequence = (1, 3, 5),
        expansion: int = 2,
        reduction: int = 16,
        spatial_kernel: int = 7,
        share_spatial_attention: bool = True,
        backend: str = "auto",
        align_corners: bool = False,
        always_project: bool = True,
    ) -> None:
        super().__init__()
        channels = positive_ints(tuple(channels), "channels")
        if len(channels) < 2:
            raise ValueError(f"channels must list at least two levels, got {channels!r}")
        self.channels = channels
        self.align_corners = bool(align_corners)
        shared = SpatialAttention3d(spatial_kernel) if share_spatial_attention else None
        self.attention = nn.ModuleList(
            MultiScaleConvAttention3d(
                c,
                kernel_sizes=tuple(kernel_sizes),
                expansion=expansion,
                reduction=reduction,
                spatial_kernel=spatial_kernel,
                backend=backend,
                spatial_attention=shared,
            )
            for c in channels
        )
        # up[i] brings level i + 1 to level i.
        self.up = nn.ModuleList(UpConv3d(channels[i + 1], channels[i]) for i in range(len(channels) - 1))
        # fuse[i] fuses level i (finer) into level i + 1.
        self.fuse = nn.ModuleList(
            GatedMapFusion3d(channels[i + 1], channels[i], align_corners, always_project)
            for i in range(len(channels) - 1)
        )

    def _check(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(features)
        if len(feats) != len(self.channels):
            raise ValueError(f"features must hold {len(self.channels)} levels, got {len(feats)}")
        for i, (f, c) in enumerate(zip(feats, self.channels, strict=False)):
            if f.dim() != 5 or f.shape[1] != c:
                raise ValueError(f"features[{i}] must have shape [B, {c}, D, H, W], got {list(f.shape)}")
        return feats

    def top_down(
        self, features: Sequence[torch.Tensor], return_gates: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the top-down E3D-MSCA path.

        Args:
            features (Sequence[torch.Tensor]): levels, finest first.
            return_gates (bool): also return each level's spatial-attention gate
                [B, 1, D_l, H_l, W_l] (finest first).

        Returns:
            list[torch.Tensor] | tuple[list, list]: ``[p_1, ..., p_L]`` (and the gates).

        Raises:
            ValueError: ``features`` does not match ``channels``.
        """
        feats = self._check(features)
        n = len(feats)
        outs: list[torch.Tensor] = [feats[0]] * n
        gates: list[torch.Tensor] = [feats[0]] * n
        x = feats[-1]
        for i in range(n - 1, -1, -1):
            if i < n - 1:
                x = feats[i] + _resize(self.up[i](outs[i + 1]), feats[i].shape[2:], self.align_corners)
            if return_gates:
                gates[i] = self.attention[i].spatial_gate(x)
            outs[i] = self.attention[i](x)
        return (outs, gates) if return_gates else outs

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run both paths.

        Args:
            features (Sequence[torch.Tensor]): levels [B, channels[l], D_l, H_l, W_l], finest first.

        Returns:
            list[torch.Tensor]: fused levels, finest first, same shapes as the inputs.

        Raises:
            ValueError: ``features`` does not match ``channels``.
        """
        outs = self.top_down(features)
        fused = [outs[0]]
        for i in range(len(outs) - 1):
            fused.append(self.fuse[i](outs[i + 1], fused[i]))
        return fused

"""3D ResNeXt-style feature-pyramid encoder (the PENet encoder the paper used)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmscale._validation import int_at_least, positive_int, positive_ints
from mmscale.layers.drop_path import DROP_PATH_MODES, DropPath
from mmscale.layers.squeeze_excitation import SE_ACTIVATIONS, SqueezeExcitation3d
from mmscale.ops.grouped_conv3d import grouped_conv3d

__all__ = ["GroupedBottleneck3d", "PyramidBackbone3d", "DROP_PATH_SCHEDULES"]

DROP_PATH_SCHEDULES = ("linear", "penet")
"""How the stochastic-depth drop probability grows over the ``n`` blocks (block ``i``
counted from 0): ``"linear"`` reaches ``drop_path_rate`` at the last block
(``rate * i / (n - 1)``); ``"penet"`` is PENet's ``rate * i / n`` (so the last block
of 13 survives with probability 7/13 for a rate of 0.5)."""


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm with C/16 groups (16 channels per group), at least one group.
    return nn.GroupNorm(max(channels // 16, 1), channels)


class GroupedBottleneck3d(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3x3 (strided) -> 1x1, SE, stochastic depth.

    Every conv is followed by GroupNorm(C/16); LeakyReLU after the first two and after
    the residual add. The shortcut is a strided 1x1 conv + GroupNorm when the shape
    changes, the identity otherwise.

    Args:
        in_channels (int): input channels.
        mid_channels (int): width of the grouped conv (divisible by ``cardinality``).
        out_channels (int): output channels.
        cardinality (int): groups of the 3x3x3 conv.
        stride (int): stride of the 3x3x3 conv and of the shortcut.
        se_reduction (int): squeeze-excitation ratio (0 disables SE).
        drop_path (float): stochastic-depth drop probability of the residual branch.
        negative_slope (float): LeakyReLU slope.
        se_activation (str): activation inside the SE block (``"relu"`` or PENet's
            ``"leaky_relu"``, slope ``negative_slope``).
        drop_path_mode (str): ``"sample"`` (per-sample :class:`DropPath`, kept
            branches rescaled, the output activation always applied) or ``"batch"``
            (PENet: one draw per call for the whole batch, no rescaling, and a dropped
            block returns ``shortcut(x)`` without the output LeakyReLU).

    Shapes:
        x: [B, in_channels, D, H, W] -> [B, out_channels, ceil(D/s), ceil(H/s), ceil(W/s)]

    Raises:
        ValueError: ``cardinality`` does not divide ``mid_channels``, or an unknown
            ``se_activation`` / ``drop_path_mode``.

    Example:
        >>> blk = GroupedBottleneck3d(16, 16, 32, cardinality=4, stride=2)
        >>> blk(torch.randn(1, 16, 4, 8, 8)).shape
        torch.Size([1, 32, 2, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        cardinality: int = 32,
        stride: int = 1,
        se_reduction: int = 16,
        drop_path: float = 0.0,
        negative_slope: float = 0.01,
        se_activation: str = "relu",
        drop_path_mode: str = "sample",
    ) -> None:
        super().__init__()
        if se_activation not in SE_ACTIVATIONS:
            raise ValueError(f"se_activation must be one of {SE_ACTIVATIONS}, got {se_activation!r}")
        if drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"drop_path_mode must be one of {DROP_PATH_MODES}, got {drop_path_mode!r}")
        if mid_channels % cardinality:
            raise ValueError(f"cardinality={cardinality} must divide mid_channels={mid_channels}")
        self.conv1 = nn.Conv3d(in_channels, mid_channels, 1, bias=False)
        self.norm1 = _group_norm(mid_channels)
        self.conv2 = nn.Conv3d(
            mid_channels, mid_channels, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.norm2 = _group_norm(mid_channels)
        self.conv3 = nn.Conv3d(mid_channels, out_channels, 1, bias=False)
        self.norm3 = _group_norm(out_channels)
        self.se = (
            SqueezeExcitation3d(out_channels, se_reduction, se_activation, negative_slope)
            if se_reduction
            else nn.Identity()
        )
        self.drop_path = DropPath(drop_path, mode=drop_path_mode)
        self.act = nn.LeakyReLU(negative_slope)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                _group_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def _grouped_conv(self, h: torch.Tensor) -> torch.Tensor:
        # conv2 through grouped_conv3d (same output, cheaper CPU backward); the module
        # call when hooks or a replaced/reconfigured module must see it
        conv = self.conv2
        if (
            type(conv) is not nn.Conv3d
            or conv._forward_hooks
            or conv._forward_pre_hooks
            or conv._backward_hooks
            or conv.bias is not None
            or conv.padding_mode != "zeros"
            or conv.dilation != (1, 1, 1)
            or isinstance(conv.padding, str)
        ):
            return conv(h)
        return grouped_conv3d(h, conv.weight, conv.stride, conv.padding, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` [B, C_in, D, H, W]."""
        if self.drop_path.mode == "batch" and not self.drop_path.keep_branch():
            # PENet's stochastic depth: the whole batch skips the branch, and the
            # block's output activation with it.
            return self.shortcut(x)
        h = self.act(self.norm1(self.conv1(x)))
        h = self.act(self.norm2(self._grouped_conv(h)))
        h = self.se(self.norm3(self.conv3(h)))
        if self.drop_path.mode == "sample":
            h = self.drop_path(h)
        return self.act(self.shortcut(x) + h)


class PyramidBackbone3d(nn.Module):
    """3D ResNeXt encoder returning the last stages as a feature pyramid.

    Stem: Conv3d(k=7, stride (1, 2, 2), padding 3, no bias) + GroupNorm(C/16) +
    LeakyReLU + MaxPool3d(3, stride 2, padding 1); then one stage of
    :class:`GroupedBottleneck3d` per entry of ``widths`` (the first block of every
    stage after the first has stride 2). Stochastic-depth drop probability rises
    linearly over all blocks from 0 (``drop_path_schedule``: to ``drop_path_rate`` at
    the last block, or PENet's ``rate * i / n`` for block ``i`` of ``n``). When ``stem_in_channels > in_channels`` the input
    channels are repeated cyclically to fill the stem (a 1-channel CT fed to PENet's
    3-channel stem; CT + PET -> CT, PET, CT).

    Args:
        in_channels (int): channels of the input volume.
        widths (Sequence[int]): output channels per stage (paper: 256, 512, 1024).
        depths (Sequence[int]): blocks per stage (paper: 3, 4, 6).
        mid_widths (Sequence[int] | None): grouped-conv width per stage (default: half
            of ``widths``).
        stem_channels (int): stem output channels (paper: 64).
        stem_in_channels (int | None): stem input channels (paper: 3), at least
            ``in_channels``. Default ``in_channels``.
        cardinality (int): groups of the 3x3x3 convs.
        se_reduction (int): squeeze-excitation ratio (0 disables SE).
        drop_path_rate (float): drop probability of the last block (``"linear"``).
        num_outputs (int | None): how many of the last stages to return (default:
            ``min(3, len(widths))``).
        se_activation (str): SE activation, ``"relu"`` or PENet's ``"leaky_relu"``.
        drop_path_mode (str): ``"sample"`` (per-sample, rescaled) or PENet's
            ``"batch"`` (see :class:`GroupedBottleneck3d`).
        drop_path_schedule (str): ``"linear"`` (block ``i`` of ``n`` drops with
            ``rate * i / (n - 1)``) or ``"penet"`` (``rate * i / n``).

    Shapes:
        x: [B, in_channels, D, H, W] -> list of ``num_outputs`` maps, finest first; for
        the paper's [B, 1, 12, 192, 192]: [B, 256, 6, 48, 48], [B, 512, 3, 24, 24],
        [B, 1024, 2, 12, 12].

    Raises:
        ValueError: inconsistent widths/depths or an input of the wrong shape.

    Example:
        >>> net = PyramidBackbone3d(widths=(32, 64, 128), depths=(1, 1, 1), stem_channels=16,
        ...                         cardinality=8)
        >>> [f.shape[1] for f in net(torch.randn(1, 1, 8, 32, 32))]
        [32, 64, 128]
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (256, 512, 1024),
        depths: Sequence[int] = (3, 4, 6),
        mid_widths: Sequence[int] | None = None,
        stem_channels: int = 64,
        stem_in_channels: int | None = None,
        cardinality: int = 32,
        se_reduction: int = 16,
        drop_path_rate: float = 0.5,
        num_outputs: int | None = None,
        se_activation: str = "relu",
        drop_path_mode: str = "sample",
        drop_path_schedule: str = "linear",
    ) -> None:
        super().__init__()
        widths, depths = tuple(widths), tuple(depths)
        if not widths or len(widths) != len(depths):
            raise ValueError(f"widths and depths must be non-empty and equally long, got {widths}, {depths}")
        widths, depths = positive_ints(widths, "widths"), positive_ints(depths, "depths")
        mid_widths = tuple(w // 2 for w in widths) if mid_widths is None else tuple(mid_widths)
        if len(mid_widths) != len(widths):
            raise ValueError(f"mid_widths must have {len(widths)} entries, got {mid_widths}")
        for m in mid_widths:
            if m < cardinality or m % cardinality:
                raise ValueError(f"cardinality={cardinality} must divide every mid width, got {mid_widths}")
        in_channels = positive_int(in_channels, "in_channels")
        stem_in_channels = in_channels if stem_in_channels is None else stem_in_channels
        if int_at_least(stem_in_channels, "stem_in_channels", 1) < in_channels:
            raise ValueError(
                f"stem_in_channels={stem_in_channels} must be >= in_channels={in_channels}"
            )
        num_outputs = min(3, len(widths)) if num_outputs is None else num_outputs
        if not 1 <= num_outputs <= len(widths):
            raise ValueError(f"num_outputs must be in [1, {len(widths)}], got {num_outputs}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        if drop_path_schedule not in DROP_PATH_SCHEDULES:
            raise ValueError(
                f"drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, got {drop_path_schedule!r}"
            )
        self.in_channels = in_channels
        self.stem_in_channels = stem_in_channels
        self.widths = widths
        self.num_outputs = num_outputs

        self.stem = nn.Sequential(
            nn.Conv3d(stem_in_channels, stem_channels, 7, stride=(1, 2, 2), padding=3, bias=False),
            _group_norm(stem_channels),
            nn.LeakyReLU(0.01),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        total = sum(depths)
        index = 0
        stages = []
        channels = stem_channels
        for i, (width, mid, depth) in enumerate(zip(widths, mid_widths, depths, strict=False)):
            blocks = []
            for j in range(depth):
                steps = max(total - 1, 1) if drop_path_schedule == "linear" else total
                rate = drop_path_rate * index / steps
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    GroupedBottleneck3d(
                        channels,
                        mid,
                        width,
                        cardinality,
                        stride,
                        se_reduction,
                        rate,
                        se_activation=se_activation,
                        drop_path_mode=drop_path_mode,
                    )
                )
                channels = width
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the returned maps, finest first."""
        return self.widths[-self.num_outputs :]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode a volume batch.

        Args:
            x (torch.Tensor): [B, in_channels, D, H, W].

        Returns:
            list[torch.Tensor]: the last ``num_outputs`` stage outputs, finest first.

        Raises:
            ValueError: ``x`` is not 5-D with ``in_channels`` channels.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape [B, {self.in_channels}, D, H, W], got {list(x.shape)}"
            )
        if self.stem_in_channels != self.in_channels:
            # Cycle the input channels to fill the stem (1 -> 3: CT, CT, CT; 2 -> 3:
            # CT, PET, CT); slices + cat keep this trivially exportable.
            c = self.in_channels
            x = torch.cat([x[:, i % c : i % c + 1] for i in range(self.stem_in_channels)], dim=1)
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[-self.num_outputs :]

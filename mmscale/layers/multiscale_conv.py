"""Multi-scale depthwise convolutions of E3D-MSCA (MSDC, MSCB) and the upsampling block.

Every layer keeps the parameter layout of the plain composition
(:mod:`mmscale.layers.reference`), so a state dict moves one-to-one between them,
while ``forward`` computes the same function faster:

* channels_last_3d throughout, so 1x1 convolutions are plain matrix products over
  ``[B*D*H*W, C]`` rows and depthwise convolutions take oneDNN's fast path;
* in eval mode every BatchNorm is folded into the preceding convolution;
* the channel shuffle is folded into the projection weight (a column permutation)
  instead of moving memory;
* the depthwise stage is one op (:func:`mmscale.ops.multiscale_depthwise_conv3d`),
  fused Triton kernels where available, a cheaper CPU backward elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmscale._validation import check_dtype, check_volume, odd_triple, positive_int, triple
from mmscale.layers import reference
from mmscale.layers._fused import (
    CL,
    check_batch_stats,
    like_input,
    linear_bn,
    needs_submodule_calls,
    rows,
    volume,
    wants_channels_last,
)
from mmscale.ops import check_backend, depthwise_conv3d, mscb, msdc, multiscale_depthwise_conv3d
from mmscale.ops._dispatch import select_backend
from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm

__all__ = ["MultiScaleConvBlock3d", "MultiScaleDepthwiseConv3d", "UpConv3d"]

KernelSize = int | tuple[int, int, int]


class MultiScaleDepthwiseConv3d(nn.Module):
    """Parallel depthwise convolutions at several kernel sizes, each ``ReLU6(BN(DWConv))``.

    Branches are summed (``combine="add"``, output C channels) or concatenated
    (``"concat"``, output C * n channels). Kernel sizes may be anisotropic, e.g.
    ``((1, 3, 3), (3, 5, 5))`` for thick CT slices.

    Args:
        channels (int): channels C (each branch is depthwise over them).
        kernel_sizes (Sequence[int | tuple[int, int, int]]): one odd size per branch.
        stride (int | tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` or ``"concat"``.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Shape:
        x: [B, C, D, H, W] -> [B, C or C * n, D', H', W'] with ``D' = (D - 1) // s + 1``.

    Raises:
        ValueError: for an empty or even ``kernel_sizes``, a bad ``stride`` or
            ``combine``, an unknown ``backend``, or an input of the wrong shape.

    Example:
        >>> msdc = MultiScaleDepthwiseConv3d(8, kernel_sizes=((1, 3, 3), 3, 5))
        >>> tuple(msdc(torch.randn(2, 8, 3, 10, 10)).shape)
        (2, 8, 3, 10, 10)
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[KernelSize] = (1, 3, 5),
        stride: int | tuple[int, int, int] = 1,
        combine: str = "add",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.channels = positive_int(channels, "channels")
        if isinstance(kernel_sizes, (int, str)) or not isinstance(kernel_sizes, Sequence) or not kernel_sizes:
            raise ValueError(f"kernel_sizes must be a non-empty sequence of odd sizes, got {kernel_sizes!r}")
        self.kernel_sizes = tuple(odd_triple(k, "kernel_sizes") for k in kernel_sizes)
        self.stride = triple(stride, "stride")
        if combine not in ("add", "concat"):
            raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
        self.combine = combine
        self.backend = check_backend(backend)
        self.branches = nn.ModuleList(
            reference.DepthwiseBranch3d(self.channels, k, self.stride) for k in self.kernel_sizes
        )

    @property
    def out_channels(self) -> int:
        """Channels after combining the branches."""
        return self.channels * (len(self.branches) if self.combine == "concat" else 1)

    def resolve_backend(self, x: torch.Tensor) -> str:
        """The backend this layer's op runs with for ``x``: ``"torch"`` or ``"triton"``.

        ``x`` only lends its device, dtype and spatial size (the expanded input of an
        MSCB has the same). An explicit ``"triton"`` that cannot run warns here, once.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            str: ``"torch"`` or ``"triton"``.
        """
        weights = [b.conv.weight for b in self.branches]
        reason = lambda: msdc.supports(x, weights, self.stride, self.combine)  # noqa: E731
        return select_backend(self.backend, x, "multiscale_depthwise_conv3d", reason)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run every branch and combine them.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: [B, out_channels, D', H', W'].

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not [B, C, D, H, W] with C = ``channels``.
        """
        check_volume(x, self.channels)
        check_dtype(x, self.branches[0].conv.weight)
        if needs_submodule_calls(self):
            return like_input(reference.multiscale_depthwise_forward(self, x), x)
        return like_input(self.run(x, self.resolve_backend(x)), x)

    def run(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        """The fused path on a checked input with a resolved ``backend``; channels_last_3d out.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].
            backend (str): ``"torch"`` or ``"triton"`` (from :meth:`resolve_backend`).

        Returns:
            torch.Tensor: [B, out_channels, D', H', W'].
        """
        check_batch_stats(x, [b.bn for b in self.branches])
        return multiscale_depthwise_conv3d(
            x,
            [b.conv.weight for b in self.branches],
            [BatchNormState.of(b.bn) for b in self.branches],
            self.stride,
            self.combine,
            backend=backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_sizes={self.kernel_sizes}, stride={self.stride}, "
            f"combine={self.combine!r}, backend={self.backend!r}"
        )


class MultiScaleConvBlock3d(nn.Module):
    """Multi-scale convolution block (MSCB) of E3D-MSCA.

    ``h = ReLU6(BN(Conv1x1(x)))`` to ``E = C_in * expansion`` channels, a
    :class:`MultiScaleDepthwiseConv3d`, a channel shuffle with
    ``gcd(channels, C_out)`` groups, ``BN(Conv1x1(-> C_out))``, and a residual when
    ``stride == 1`` (through a bias-free 1x1 convolution when ``C_in != C_out``).
    The shuffle is folded into the projection weight.

    Args:
        in_channels (int): C_in.
        out_channels (int | None): C_out (default C_in).
        kernel_sizes (Sequence[int | tuple[int, int, int]]): depthwise kernel sizes.
        expansion (int): expansion factor of the first 1x1 convolution.
        stride (int | tuple[int, int, int]): depthwise stride (no residual unless 1).
        combine (str): ``"add"`` or ``"concat"`` for the depthwise branches.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Shape:
        x: [B, C_in, D, H, W] -> [B, C_out, D', H', W'].

    Raises:
        ValueError: for non-positive channel counts or expansion, bad kernel sizes,
            stride or combine, an unknown ``backend``, or an input of the wrong shape.

    Example:
        >>> block = MultiScaleConvBlock3d(16, 24, kernel_sizes=(1, 3))
        >>> tuple(block(torch.randn(2, 16, 3, 8, 8)).shape)
        (2, 24, 3, 8, 8)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_sizes: Sequence[KernelSize] = (1, 3, 5),
        expansion: int = 2,
        stride: int | tuple[int, int, int] = 1,
        combine: str = "add",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(in_channels if out_channels is None else out_channels, "out_channels")
        self.expansion = positive_int(expansion, "expansion")
        self.backend = check_backend(backend)
        hidden = self.in_channels * self.expansion
        self.expand = nn.Conv3d(self.in_channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm3d(hidden)
        self.dwconv = MultiScaleDepthwiseConv3d(hidden, kernel_sizes, stride, combine, backend)
        combined = self.dwconv.out_channels
        self.shuffle_groups = math.gcd(combined, self.out_channels)
        self.project = nn.Conv3d(combined, self.out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm3d(self.out_channels)
        self.residual = self.dwconv.stride == (1, 1, 1)
        if self.residual and self.in_channels != self.out_channels:
            self.shortcut = nn.Conv3d(self.in_channels, self.out_channels, 1, bias=False)
        else:
            self.shortcut = None

    def _project_weight(self) -> torch.Tensor:
        """The projection weight with the channel shuffle folded in, [C_out, combined]
        (:func:`mmscale.ops.mscb.shuffled`: a column permutation of the weight, no data
        movement on the activations)."""
        return mscb.shuffled(self.project.weight.flatten(1), self.shuffle_groups)  # [C_out, combined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block.

        Args:
            x (torch.Tensor): volume [B, C_in, D, H, W].

        Returns:
            torch.Tensor: [B, C_out, D', H', W'].

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not [B, C_in, D, H, W].
        """
        check_volume(x, self.in_channels)
        check_dtype(x, self.expand.weight)
        if needs_submodule_calls(self):
            return like_input(reference.multiscale_conv_block_forward(self, x), x)
        return like_input(self.run(x, self.dwconv.resolve_backend(x), like=x), x)

    def run(self, x: torch.Tensor, backend: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """The fused path on a checked input, the depthwise stage on a resolved ``backend``.

        Args:
            x (torch.Tensor): volume [B, C_in, D, H, W].
            backend (str): ``"torch"`` or ``"triton"`` for the depthwise stage.
            like (torch.Tensor | None): the tensor whose memory format the result
                should have (see :func:`mmscale.layers._fused.like_input`); None:
                channels_last_3d. Paths that can write that format directly do.

        Returns:
            torch.Tensor: [B, C_out, D', H', W'].
        """
        check_batch_stats(x, [self.expand_bn])
        to_cl = like is None or wants_channels_last(like)
        bns = [self.expand_bn, *(b.bn for b in self.dwconv.branches), self.project_bn]
        states = [BatchNormState.of(bn) for bn in bns]
        op = None
        if backend == "torch" and mscb.supports(x, states, self.dwconv.stride, self.dwconv.combine):
            check_batch_stats(x, bns)
            op = mscb.multiscale_conv_block_train
        elif backend == "torch":
            params = [self.expand.weight, self.project.weight, *(b.conv.weight for b in self.dwconv.branches),
                      *(t for bn in bns for t in (bn.weight, bn.bias) if t is not None)]
            if mscb.inference_supported(x, states, self.dwconv.stride, self.dwconv.combine, *params):
                op = mscb.multiscale_conv_block_inference
        if op is not None:
            return op(
                x,
                self.expand.weight.flatten(1),
                [b.conv.weight for b in self.dwconv.branches],
                self.project.weight.flatten(1),
                None if self.shortcut is None else self.shortcut.weight.flatten(1),
                [begin_batch_norm(s) for s in states],
                out_channels_last=to_cl,
                shuffle_groups=self.shuffle_groups,
            )
        # without autograd, elementwise steps run in place: fresh full-size buffers
        # (page faults on first touch) cost as much as the arithmetic here
        inplace = not (torch.is_grad_enabled() and (x.requires_grad or self.expand.weight.requires_grad))
        x_rows = rows(x)  # [B*D*H*W, C_in]
        h = linear_bn(x_rows, self.expand.weight.flatten(1), self.expand_bn)
        h = F.hardtanh(h, 0.0, 6.0, inplace=inplace)
        z = self.dwconv.run(volume(h, x), backend)  # [B, combined, D', H', W'] channels_last_3d
        y = linear_bn(rows(z), self._project_weight(), self.project_bn)
        if self.residual:
            skip = x_rows if self.shortcut is None else F.linear(x_rows, self.shortcut.weight.flatten(1))
            y = y.add_(skip) if inplace else y + skip
        return volume(y, z)

    def extra_repr(self) -> str:
        return f"shuffle_groups={self.shuffle_groups}, residual={self.residual}"


class UpConv3d(nn.Module):
    """Upsampling block: trilinear x2 (align_corners=True), depthwise Conv3d(k) + BN + ReLU, Conv1x1 with bias.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int | tuple[int, int, int]): odd depthwise kernel size.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Shape:
        x: [B, C_in, D, H, W] -> [B, C_out, 2D, 2H, 2W].

    Raises:
        ValueError: for non-positive channels, an even ``kernel_size``, an unknown
            ``backend``, or an input of the wrong shape.

    Example:
        >>> up = UpConv3d(16, 8)
        >>> tuple(up(torch.randn(1, 16, 2, 6, 6)).shape)
        (1, 8, 4, 12, 12)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: KernelSize = 3, backend: str = "auto"):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = odd_triple(kernel_size, "kernel_size")
        self.backend = check_backend(backend)
        padding = tuple(k // 2 for k in self.kernel_size)
        self.dwconv = nn.Conv3d(self.in_channels, self.in_channels, self.kernel_size, padding=padding,
                                groups=self.in_channels, bias=False)
        self.bn = nn.BatchNorm3d(self.in_channels)
        self.pointwise = nn.Conv3d(self.in_channels, self.out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample by 2 and convolve.

        Args:
            x (torch.Tensor): volume [B, C_in, D, H, W].

        Returns:
            torch.Tensor: [B, C_out, 2D, 2H, 2W].

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not [B, C_in, D, H, W].
        """
        check_volume(x, self.in_channels)
        check_dtype(x, self.dwconv.weight)
        if needs_submodule_calls(self):
            return like_input(reference.up_conv_forward(self, x.contiguous(memory_format=CL)), x)
        up = F.interpolate(x.contiguous(memory_format=CL), scale_factor=2, mode="trilinear", align_corners=True)
        z = depthwise_conv3d(up, self.dwconv.weight, (1, 1, 1), self.dwconv.padding)
        s = begin_batch_norm(BatchNormState.of(self.bn))
        z = F.relu(F.batch_norm(z, s.running_mean, s.running_var, s.weight, s.bias, s.use_batch_stats,
                                s.momentum, s.eps))
        y = F.linear(rows(z), self.pointwise.weight.flatten(1), self.pointwise.bias)
        return like_input(volume(y, z), x)

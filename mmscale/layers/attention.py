"""Attention of E3D-MSCA: channel attention, spatial attention and the whole block.

The math is ``MSCB(SA(CA(x)))``; every layer keeps the parameter layout of the plain
composition (:mod:`mmscale.layers.reference`), so a state dict moves one-to-one
between them. ``MultiScaleConvAttention3d.forward`` decides its fast path once per
call: it resolves the backend of the gating ops and of the depthwise stage
(:func:`mmscale.ops.select_backend` with each op's ``supports``) and passes the
resolved names down; with Triton the pooling and gating passes are fused kernels,
with PyTorch ``x * g_c`` is computed once, in channels_last_3d, and reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmscale._validation import check_dtype, check_volume, odd_triple, positive_int
from mmscale.layers import reference
from mmscale.layers._fused import CL, like_input, needs_submodule_calls
from mmscale.layers.multiscale_conv import (  # noqa: F401 (the last two lived here: still importable)
    MultiScaleConvBlock3d,
    MultiScaleDepthwiseConv3d,
    UpConv3d,
)
from mmscale.ops import apply_gates, channel_pool, check_backend, gating, spatial_pool
from mmscale.ops._dispatch import select_backend
from mmscale.ops.gating.gate_conv import gate_conv3d
from mmscale.ops.gating.scale import scale_channels_last

__all__ = ["ChannelAttention3d", "MultiScaleConvAttention3d", "SpatialAttention3d"]

KernelSize = int | tuple[int, int, int]


class ChannelAttention3d(nn.Module):
    """Channel attention: ``x * sigmoid(M(avg_DHW x) + M(max_DHW x))``.

    ``M = Conv1x1(C -> r) -> ReLU -> Conv1x1(r -> C)``, both without bias, with
    ``r = C // min(reduction, C)``.

    Args:
        channels (int): number of input channels C.
        reduction (int): channel reduction ratio of the bottleneck MLP.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"`` for the pooling pass.

    Shape:
        x: [B, C, D, H, W] -> [B, C, D, H, W].

    Raises:
        ValueError: for a non-positive ``channels`` or ``reduction``, an unknown
            ``backend``, or an input of the wrong shape.

    Example:
        >>> ca = ChannelAttention3d(32)
        >>> tuple(ca(torch.randn(2, 32, 4, 8, 8)).shape)
        (2, 32, 4, 8, 8)
    """

    def __init__(self, channels: int, reduction: int = 16, backend: str = "auto") -> None:
        super().__init__()
        self.channels = positive_int(channels, "channels")
        self.reduction = positive_int(reduction, "reduction")
        self.backend = check_backend(backend)
        hidden = channels // min(reduction, channels)
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=False)

    def gate(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """The channel gate ``g_c`` for ``x``.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].
            backend (str | None): the pooling op's backend, already resolved by the
                caller; None: this layer's own ``backend``.

        Returns:
            torch.Tensor: gate [B, C, 1, 1, 1] in (0, 1).
        """
        if needs_submodule_calls(self):
            return reference.channel_gate(self, x)
        avg, mx = channel_pool(x, backend=backend or self.backend)
        w1 = self.fc1.weight.flatten(1)  # [r, C]
        w2 = self.fc2.weight.flatten(1)  # [C, r]
        z = F.linear(F.relu(F.linear(torch.stack([avg, mx]), w1)), w2)  # [2, B, C]
        return torch.sigmoid(z[0] + z[1])[:, :, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply channel attention.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: ``x * g_c``, [B, C, D, H, W].

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not [B, C, D, H, W] with C = ``channels``.
            RuntimeError: if ``backend="triton"`` cannot run here and
                ``MMSCALE_STRICT=1`` (see :mod:`mmscale.ops`).
        """
        check_volume(x, self.channels)
        check_dtype(x, self.fc1.weight)
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}, backend={self.backend!r}"


class SpatialAttention3d(nn.Module):
    """Spatial attention: ``x * sigmoid(Conv3d(2 -> 1, k)(cat[mean_C x, max_C x]))``.

    Args:
        kernel_size (int | tuple[int, int, int]): odd size of the gate convolution
            (3, 5, 7, ...), or an odd ``(kd, kh, kw)``; padding is ``k // 2``.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Shape:
        x: [B, C, D, H, W] -> [B, C, D, H, W]; the gate is [B, 1, D, H, W].

    Raises:
        ValueError: for an even or non-positive ``kernel_size``, an unknown
            ``backend``, or an input of the wrong shape.

    Example:
        >>> sa = SpatialAttention3d(7)
        >>> tuple(sa(torch.randn(2, 16, 3, 9, 9)).shape)
        (2, 16, 3, 9, 9)
    """

    def __init__(self, kernel_size: KernelSize = 7, backend: str = "auto") -> None:
        super().__init__()
        self.kernel_size = odd_triple(kernel_size, "kernel_size")
        self.backend = check_backend(backend)
        self.conv = nn.Conv3d(
            2, 1, self.kernel_size, padding=tuple(k // 2 for k in self.kernel_size), bias=False
        )

    def gate_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """``sigmoid(conv(pooled))`` for pooled maps [B, 2, D, H, W] -> gate [B, 1, D, H, W]."""
        if needs_submodule_calls(self):
            return torch.sigmoid(self.conv(pooled))
        return torch.sigmoid(gate_conv3d(pooled, self.conv.weight))

    def gate(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """The spatial gate ``g_s`` for ``x``.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].
            backend (str | None): the pooling op's backend, already resolved by the
                caller; None: this layer's own ``backend``.

        Returns:
            torch.Tensor: gate [B, 1, D, H, W] in (0, 1).
        """
        ones = x.new_ones(x.shape[0], x.shape[1], 1, 1, 1)
        return self.gate_from_pooled(spatial_pool(x, ones, backend=backend or self.backend))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply spatial attention.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: ``x * g_s``, [B, C, D, H, W].

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not a non-empty 5-D tensor.
            RuntimeError: if ``backend="triton"`` cannot run here and
                ``MMSCALE_STRICT=1`` (see :mod:`mmscale.ops`).
        """
        check_volume(x, None)
        check_dtype(x, self.conv.weight)
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, backend={self.backend!r}"


class MultiScaleConvAttention3d(nn.Module):
    """E3D-MSCA: ``MSCB(SA(CA(x)))``, the 3D multi-scale convolutional attention block.

    Args:
        channels (int): channels C (input and output).
        kernel_sizes (Sequence[int | tuple[int, int, int]]): depthwise kernel sizes
            of the MSCB (odd ints or odd ``(kd, kh, kw)``).
        expansion (int): MSCB expansion factor.
        reduction (int): channel-attention reduction ratio.
        spatial_kernel (int | tuple[int, int, int]): spatial-attention kernel size.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"`` (see :mod:`mmscale.ops`).
        spatial_attention (SpatialAttention3d | None): an existing spatial-attention
            layer to share (several blocks may use one gate convolution); by default
            a new one with ``spatial_kernel``.

    Shape:
        x: [B, C, D, H, W] -> [B, C, D, H, W].

    Raises:
        ValueError: for bad sizes or backend (see the sub-layers) or an input of the
            wrong shape.
        TypeError: if ``spatial_attention`` is not a ``SpatialAttention3d``.

    Example:
        >>> block = MultiScaleConvAttention3d(32, kernel_sizes=(1, 3, 5))
        >>> tuple(block(torch.randn(2, 32, 3, 12, 12)).shape)
        (2, 32, 3, 12, 12)
    """

    def __init__(
        self,
        channels: int,
        kernel_sizes: Sequence[KernelSize] = (1, 3, 5),
        expansion: int = 2,
        reduction: int = 16,
        spatial_kernel: KernelSize = 7,
        backend: str = "auto",
        spatial_attention: SpatialAttention3d | None = None,
    ) -> None:
        super().__init__()
        self.channels = positive_int(channels, "channels")
        self.backend = check_backend(backend)
        if spatial_attention is not None and not isinstance(spatial_attention, SpatialAttention3d):
            raise TypeError(
                f"spatial_attention must be a SpatialAttention3d, got {type(spatial_attention).__name__}"
            )
        self.ca = ChannelAttention3d(channels, reduction, backend)
        self.sa = spatial_attention if spatial_attention is not None else SpatialAttention3d(spatial_kernel, backend)
        self.mscb = MultiScaleConvBlock3d(channels, channels, kernel_sizes, expansion, 1, "add", backend)

    def _gates(self, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        g_c = self.ca.gate(x, backend)  # [B, C, 1, 1, 1]
        g_s = self.sa.gate_from_pooled(spatial_pool(x, g_c, backend=backend))  # [B, 1, D, H, W]
        return g_c, g_s

    def _gating_backend(self, x: torch.Tensor) -> str:
        return select_backend(self.backend, x, "gating", lambda: gating.supports(x))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial-attention gate applied to ``x`` (after channel attention).

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: gate [B, 1, D, H, W] in (0, 1), for visualisation.

        Raises:
            ValueError: if ``x`` is not [B, C, D, H, W] with C = ``channels``.
        """
        check_volume(x, self.channels)
        return self._gates(x.contiguous(memory_format=CL), self._gating_backend(x))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply channel attention, spatial attention and the multi-scale block.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: [B, C, D, H, W], in the memory format of ``x``.

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if ``x`` is not [B, C, D, H, W] with C = ``channels``.
            RuntimeError: if ``backend="triton"`` cannot run here and
                ``MMSCALE_STRICT=1`` (see :mod:`mmscale.ops`).
        """
        check_volume(x, self.channels)
        check_dtype(x, self.mscb.expand.weight)
        if needs_submodule_calls(self):
            return self.mscb(self.sa(self.ca(x)))
        # the fast path is decided here, once per call; the ops get resolved names
        gating_backend = self._gating_backend(x)
        conv_backend = self.mscb.dwconv.resolve_backend(x)
        if gating_backend == "triton":
            xc = x.contiguous(memory_format=CL)
            g_c, g_s = self._gates(xc, "triton")  # [B, C, 1, 1, 1], [B, 1, D, H, W]
            gated = apply_gates(xc, g_c, g_s, backend="triton")
        else:
            g_c = self.ca.gate(x, "torch")  # [B, C, 1, 1, 1]
            # x * g_c is needed for the spatial pooling anyway: keep it (converted to
            # channels_last_3d in the same pass) and apply the spatial gate to it
            gated = scale_channels_last(x, g_c)
            pooled = torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)
            g_s = self.sa.gate_from_pooled(pooled)  # [B, 1, D, H, W]
            gated = gated.mul_(g_s) if not torch.is_grad_enabled() else gated * g_s
        return like_input(self.mscb.run(gated, conv_backend, like=x), x)

"""3D multi-scale convolutional attention (E3D-MSCA) and its building blocks.

The math is DESIGN.md section 1. Every layer keeps the parameter layout of the
naive composition (``nn.Conv3d`` / ``nn.BatchNorm3d`` submodules, registered in the
order the math runs), so a state dict moves one-to-one between them, while
``forward`` computes the same function faster:

* channels_last_3d throughout, so 1x1 convolutions are plain matrix products over
  ``[B*D*H*W, C]`` rows and depthwise convolutions take oneDNN's fast path;
* in eval mode every BatchNorm is folded into the preceding convolution;
* the channel shuffle is folded into the projection weight (a column permutation)
  instead of moving memory;
* depthwise convolutions use a cheaper backward on CPU
  (:mod:`mmscale.ops.depthwise_conv3d`) and ``1x1x1`` branches are a scale;
* the gating passes and the multi-scale depthwise stage dispatch to fused Triton
  kernels where available (:mod:`mmscale.ops`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmscale.layers._checks import check_dtype, check_volume, odd_triple, positive_int, triple
from mmscale.ops import (
    apply_gates,
    channel_pool,
    check_backend,
    depthwise_conv3d,
    gating,
    multiscale_depthwise_conv3d,
    resolve_backend,
    spatial_pool,
)

KernelSize = int | tuple[int, int, int]

_CL = torch.channels_last_3d


def _like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Give ``out`` the memory format of ``x`` (channels_last_3d stays, else contiguous)."""
    if x.is_contiguous(memory_format=_CL) and not x.is_contiguous():
        return out
    return out.contiguous()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] (channels_last_3d) -> [B*D*H*W, C] view, copying only if needed."""
    x = x.contiguous(memory_format=_CL)
    return rearrange(x, "b c d h w -> (b d h w) c")


def _volume(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B*D*H*W, C] -> [B, C, D, H, W] channels_last_3d view with the spatial shape of ``like``."""
    b, _, d, h, w = like.shape
    return rearrange(rows, "(b d h w) c -> b c d h w", b=b, d=d, h=h, w=w)


def _bn_state(bn: nn.modules.batchnorm._BatchNorm):
    """Mirror ``nn.BatchNorm3d.forward``'s bookkeeping; return the ``F.batch_norm`` arguments.

    Uses the BatchNorm's own ``training`` flag (a frozen BN inside a training model
    keeps its running statistics, as it would when called). Returns ``(weight, bias,
    running_mean, running_var, use_batch_stats, momentum)`` with ``weight``/``bias``
    materialised as ones/zeros when ``affine=False``, and increments
    ``num_batches_tracked`` in training mode with tracked statistics.
    """
    training = bn.training
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = training or (bn.running_mean is None and bn.running_var is None)
    track = not training or bn.track_running_stats
    rm = bn.running_mean if track else None
    rv = bn.running_var if track else None
    weight = bn.weight
    bias = bn.bias
    if weight is None or bias is None:
        like = rm if rm is not None else torch.empty(bn.num_features)
        weight = torch.ones_like(like) if weight is None else weight
        bias = torch.zeros_like(like) if bias is None else bias
    return weight, bias, rm, rv, use_batch_stats, momentum


def _linear_bn(rows: torch.Tensor, weight: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``BN(rows @ weight.T)`` with BN folded into the matrix when running statistics are used."""
    gamma, beta, rm, rv, use_batch_stats, momentum = _bn_state(bn)
    if use_batch_stats:
        return F.batch_norm(F.linear(rows, weight), rm, rv, gamma, beta, True, momentum, bn.eps)
    scale = gamma * torch.rsqrt(rv + bn.eps)
    return F.linear(rows, weight * scale[:, None], beta - rm * scale)


def _needs_submodule_calls(module: nn.Module) -> bool:
    """Whether ``forward`` must call the submodules instead of reading their weights.

    The fused path reads ``.weight`` tensors directly, so it would bypass forward
    (pre-)hooks (pruning, feature extraction, Grad-CAM) and ``SyncBatchNorm``'s
    cross-process statistics. In those cases the layer runs the plain composition.
    """
    for m in module.modules():
        if m is module:
            continue
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or isinstance(m, nn.SyncBatchNorm):
            return True
    return False


def _check_batch_stats(x: torch.Tensor, bns) -> None:
    if x.shape[0] * math.prod(x.shape[2:]) == 1 and any(bn.training for bn in bns):
        raise ValueError(
            f"x has one value per channel (shape {tuple(x.shape)}): BatchNorm in training mode needs "
            "more than one (use a larger batch or volume, or eval mode)"
        )


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

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate ``g_c`` for ``x``.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: gate [B, C, 1, 1, 1] in (0, 1).
        """
        avg, mx = channel_pool(x, backend=self.backend)
        if _needs_submodule_calls(self):
            pooled = torch.cat([avg, mx])[:, :, None, None, None]  # [2B, C, 1, 1, 1]
            avg_z, max_z = self.fc2(F.relu(self.fc1(pooled))).chunk(2)
            return torch.sigmoid(avg_z + max_z)
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
        return torch.sigmoid(self.conv(pooled))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate ``g_s`` for ``x``.

        Args:
            x (torch.Tensor): volume [B, C, D, H, W].

        Returns:
            torch.Tensor: gate [B, 1, D, H, W] in (0, 1).
        """
        ones = x.new_ones(x.shape[0], x.shape[1], 1, 1, 1)
        return self.gate_from_pooled(spatial_pool(x, ones, backend=self.backend))

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


class _DepthwiseBranch(nn.Module):
    """One branch's parameters: a depthwise ``Conv3d`` (no bias) and its ``BatchNorm3d``."""

    def __init__(self, channels: int, kernel_size: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.conv = nn.Conv3d(
            channels, channels, kernel_size, stride=stride,
            padding=tuple(k // 2 for k in kernel_size), groups=channels, bias=False,
        )
        self.bn = nn.BatchNorm3d(channels)


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
        self.branches = nn.ModuleList(_DepthwiseBranch(channels, k, self.stride) for k in self.kernel_sizes)

    @property
    def out_channels(self) -> int:
        """Channels after combining the branches."""
        return self.channels * (len(self.branches) if self.combine == "concat" else 1)

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
        return _like_input(self._run(x), x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_submodule_calls(self):
            outs = [F.relu6(b.bn(b.conv(x))) for b in self.branches]
            return torch.cat(outs, dim=1) if self.combine == "concat" else sum(outs[1:], outs[0])
        _check_batch_stats(x, [b.bn for b in self.branches])
        states = [(*_bn_state(b.bn), b.bn.eps) for b in self.branches]
        if len({(s[4], s[5], s[6]) for s in states}) == 1:
            return self._call_op(x, list(range(len(states))), states, self.combine)
        # branches whose BatchNorms differ in mode, momentum or eps run one at a time
        outs = [self._call_op(x, [i], states, "add") for i in range(len(states))]
        return torch.cat(outs, dim=1) if self.combine == "concat" else sum(outs[1:], outs[0])

    def _call_op(self, x: torch.Tensor, index: list[int], states: list, combine: str) -> torch.Tensor:
        first = states[index[0]]
        return multiscale_depthwise_conv3d(
            x,
            [self.branches[i].conv.weight for i in index],
            [states[i][0] for i in index],
            [states[i][1] for i in index],
            [states[i][2] for i in index],
            [states[i][3] for i in index],
            first[4],
            first[5],
            first[6],
            self.stride,
            combine,
            backend=self.backend,
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
        hidden = in_channels * expansion
        self.expand = nn.Conv3d(in_channels, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm3d(hidden)
        self.dwconv = MultiScaleDepthwiseConv3d(hidden, kernel_sizes, stride, combine, backend)
        combined = self.dwconv.out_channels
        self.shuffle_groups = math.gcd(combined, self.out_channels)
        self.project = nn.Conv3d(combined, self.out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm3d(self.out_channels)
        self.residual = self.dwconv.stride == (1, 1, 1)
        if self.residual and self.in_channels != self.out_channels:
            self.shortcut = nn.Conv3d(in_channels, self.out_channels, 1, bias=False)
        else:
            self.shortcut = None

    def _project_weight(self) -> torch.Tensor:
        """The projection weight with the channel shuffle folded in, [C_out, combined].

        The shuffle sends input channel ``a * (n / g) + b`` to position ``b * g + a``,
        so ``W @ shuffle(z) = W' @ z`` with ``W'[:, a * (n / g) + b] = W[:, b * g + a]``:
        a reshape of ``W``, no data movement on the activations.
        """
        w = self.project.weight.flatten(1)  # [C_out, combined]
        return rearrange(w, "o (b a) -> o (a b)", a=self.shuffle_groups)

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
        return _like_input(self._run(x), x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_submodule_calls(self):
            return self._run_submodules(x)
        _check_batch_stats(x, [self.expand_bn])
        # without autograd, elementwise steps run in place: fresh full-size buffers
        # (page faults on first touch) cost as much as the arithmetic here
        inplace = not (torch.is_grad_enabled() and (x.requires_grad or self.expand.weight.requires_grad))
        x_rows = _rows(x)  # [B*D*H*W, C_in]
        h = _linear_bn(x_rows, self.expand.weight.flatten(1), self.expand_bn)
        h = F.hardtanh(h, 0.0, 6.0, inplace=inplace)
        z = self.dwconv._run(_volume(h, x))  # [B, combined, D', H', W'] channels_last_3d
        y = _linear_bn(_rows(z), self._project_weight(), self.project_bn)
        if self.residual:
            skip = x_rows if self.shortcut is None else F.linear(x_rows, self.shortcut.weight.flatten(1))
            y = y.add_(skip) if inplace else y + skip
        return _volume(y, z)

    def _run_submodules(self, x: torch.Tensor) -> torch.Tensor:
        """The plain composition, calling every submodule (hooks and SyncBatchNorm see their calls)."""
        h = F.relu6(self.expand_bn(self.expand(x)))
        z = self.dwconv._run(h)
        n = z.shape[1]
        z = rearrange(z, "b (g c) d h w -> b (c g) d h w", g=self.shuffle_groups, c=n // self.shuffle_groups)
        y = self.project_bn(self.project(z))
        if self.residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y

    def extra_repr(self) -> str:
        return f"shuffle_groups={self.shuffle_groups}, residual={self.residual}"


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

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_c = self.ca.gate(x)  # [B, C, 1, 1, 1]
        g_s = self.sa.gate_from_pooled(spatial_pool(x, g_c, backend=self.backend))  # [B, 1, D, H, W]
        return g_c, g_s

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
        return self._gates(x.contiguous(memory_format=_CL))[1]

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
        if _needs_submodule_calls(self):
            return self.mscb(self.sa(self.ca(x)))
        has_kernel = gating.HAS_TRITON_KERNEL and x.dtype in gating._KERNEL_DTYPES
        if resolve_backend(self.backend, x, op="gating", has_kernel=has_kernel) == "triton":
            xc = x.contiguous(memory_format=_CL)
            g_c = self.ca.gate(xc)  # [B, C, 1, 1, 1]
            g_s = self.sa.gate_from_pooled(spatial_pool(xc, g_c, backend=self.backend))
            gated = apply_gates(xc, g_c, g_s, backend=self.backend)
        else:
            g_c = self.ca.gate(x)  # [B, C, 1, 1, 1]
            # x * g_c is needed for the spatial pooling anyway: keep it (converted to
            # channels_last_3d in the same pass) and apply the spatial gate to it
            if torch.is_grad_enabled() and (x.requires_grad or g_c.requires_grad):
                gated = (x * g_c).contiguous(memory_format=_CL)
            else:
                gated = torch.mul(x, g_c, out=torch.empty_like(x, memory_format=_CL))
            pooled = torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)
            g_s = self.sa.gate_from_pooled(pooled)  # [B, 1, D, H, W]
            gated = gated.mul_(g_s) if not torch.is_grad_enabled() else gated * g_s
        return _like_input(self.mscb._run(gated), x)


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
        self.dwconv = nn.Conv3d(in_channels, in_channels, self.kernel_size, padding=padding,
                                groups=in_channels, bias=False)
        self.bn = nn.BatchNorm3d(in_channels)
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=True)

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
        up = F.interpolate(x.contiguous(memory_format=_CL), scale_factor=2, mode="trilinear", align_corners=True)
        if _needs_submodule_calls(self):
            return _like_input(self.pointwise(F.relu(self.bn(self.dwconv(up)))), x)
        z = depthwise_conv3d(up, self.dwconv.weight, (1, 1, 1), self.dwconv.padding)
        gamma, beta, rm, rv, use_batch_stats, momentum = _bn_state(self.bn)
        z = F.relu(F.batch_norm(z, rm, rv, gamma, beta, use_batch_stats, momentum, self.bn.eps))
        y = F.linear(_rows(z), self.pointwise.weight.flatten(1), self.pointwise.bias)
        return _like_input(_volume(y, z), x)

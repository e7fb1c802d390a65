"""Multi-scale depthwise convolution, plain PyTorch: the oracle and the CPU path.

One branch per kernel size: ``ReLU6(BN_k(DWConv3d_k(h)))`` with padding ``k // 2``,
then the branches are summed (``combine="add"``) or concatenated (``"concat"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmscale.ops.depthwise_conv3d import depthwise_conv3d_reference, multi_depthwise_conv3d


def _combine(branches: list[torch.Tensor], combine: str) -> torch.Tensor:
    if combine == "add":
        out = branches[0]
        for b in branches[1:]:
            out = out + b
        return out
    return torch.cat(branches, dim=1)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def multiscale_depthwise_conv3d_reference(
    h: torch.Tensor,
    weights: Sequence[torch.Tensor],
    bn_weights: Sequence[torch.Tensor],
    bn_biases: Sequence[torch.Tensor],
    running_means: Sequence[torch.Tensor | None],
    running_vars: Sequence[torch.Tensor | None],
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    stride: tuple[int, int, int] = (1, 1, 1),
    combine: str = "add",
) -> torch.Tensor:
    """Naive multi-scale depthwise convolution: one ``F.conv3d`` + ``F.batch_norm`` per branch.

    Running statistics are updated in place exactly as ``nn.BatchNorm3d`` does when
    ``use_batch_stats`` is True and running buffers are given.

    Args:
        h (torch.Tensor): input [B, E, D, H, W].
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw].
        bn_weights (Sequence[torch.Tensor]): per-branch BN scale [E].
        bn_biases (Sequence[torch.Tensor]): per-branch BN shift [E].
        running_means (Sequence[torch.Tensor | None]): per-branch running mean [E].
        running_vars (Sequence[torch.Tensor | None]): per-branch running variance [E].
        use_batch_stats (bool): normalise with batch statistics (training) instead
            of the running ones.
        momentum (float): running-statistics momentum.
        eps (float): BN epsilon.
        stride (tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` or ``"concat"``.

    Returns:
        torch.Tensor: [B, E, D', H', W'] for ``"add"``, [B, E * n, D', H', W'] for
        ``"concat"``.

    Example:
        >>> e = 4
        >>> w = [torch.randn(e, 1, k, k, k) for k in (1, 3)]
        >>> ones, zeros = [torch.ones(e)] * 2, [torch.zeros(e)] * 2
        >>> y = multiscale_depthwise_conv3d_reference(torch.randn(1, e, 3, 5, 5), w, ones, zeros,
        ...     [None, None], [None, None], True, 0.1, 1e-5)
        >>> tuple(y.shape)
        (1, 4, 3, 5, 5)
    """
    branches = []
    for w, g, b, rm, rv in zip(weights, bn_weights, bn_biases, running_means, running_vars, strict=True):
        padding = tuple(k // 2 for k in w.shape[2:])
        z = depthwise_conv3d_reference(h, w, None, stride, padding)
        z = F.batch_norm(z, rm, rv, g, b, use_batch_stats, momentum, eps)
        branches.append(F.hardtanh(z, 0.0, 6.0))
    return _combine(branches, combine)


def multiscale_depthwise_conv3d_torch(
    h: torch.Tensor,
    weights: Sequence[torch.Tensor],
    bn_weights: Sequence[torch.Tensor],
    bn_biases: Sequence[torch.Tensor],
    running_means: Sequence[torch.Tensor | None],
    running_vars: Sequence[torch.Tensor | None],
    use_batch_stats: bool,
    momentum: float,
    eps: float,
    stride: tuple[int, int, int] = (1, 1, 1),
    combine: str = "add",
) -> torch.Tensor:
    """The fast PyTorch path: same function and arguments as the reference.

    Differences are only in how it computes: the depthwise convolutions use
    :func:`mmscale.ops.depthwise_conv3d.depthwise_conv3d` (channels_last_3d, cheaper
    CPU backward, ``1x1x1`` branches as a scale) and, with running statistics, BN is
    folded into the filters and a bias so each branch is one convolution plus one
    clamp.

    Args:
        h (torch.Tensor): input [B, E, D, H, W].
        weights, bn_weights, bn_biases, running_means, running_vars, use_batch_stats,
            momentum, eps, stride, combine: as in
            :func:`multiscale_depthwise_conv3d_reference`.

    Returns:
        torch.Tensor: as the reference, in channels_last_3d memory format.

    Example:
        >>> e = 4
        >>> w = [torch.randn(e, 1, k, k, k) for k in (1, 3)]
        >>> ones, zeros = [torch.ones(e)] * 2, [torch.zeros(e)] * 2
        >>> y = multiscale_depthwise_conv3d_torch(torch.randn(1, e, 3, 5, 5), w, ones, zeros,
        ...     [None, None], [None, None], True, 0.1, 1e-5)
        >>> tuple(y.shape)
        (1, 4, 3, 5, 5)
    """
    h = h.contiguous(memory_format=torch.channels_last_3d)
    if use_batch_stats:
        convs = multi_depthwise_conv3d(h, weights, stride)
        normed = [
            F.batch_norm(z, rm, rv, g, b, True, momentum, eps)
            for z, g, b, rm, rv in zip(convs, bn_weights, bn_biases, running_means, running_vars, strict=True)
        ]
    elif not _needs_grad(h, *weights, *bn_weights, *bn_biases):
        # inference: BN folded into each filter and its bias, clamps and the sum in place,
        # so the only full-size allocations are one output per branch
        out = None
        for w, g, b, rm, rv in zip(weights, bn_weights, bn_biases, running_means, running_vars, strict=True):
            scale = g * torch.rsqrt(rv + eps)
            shift = b - rm * scale
            if w.shape[2:] == (1, 1, 1) and tuple(stride) == (1, 1, 1):
                # one pass, written straight into h's channels_last_3d layout
                z = torch.addcmul(shift.view(1, -1, 1, 1, 1), h, (w.flatten() * scale).view(1, -1, 1, 1, 1),
                                  out=torch.empty_like(h))
            else:
                padding = tuple(k // 2 for k in w.shape[2:])
                z = F.conv3d(h, w * scale.view(-1, 1, 1, 1, 1), shift, stride, padding, 1, h.shape[1])
            z = F.hardtanh(z, 0.0, 6.0, inplace=True)
            if combine == "concat":
                out = [z] if out is None else [*out, z]
            else:
                out = z if out is None else out.add_(z)
        return torch.cat(out, dim=1) if combine == "concat" else out
    else:
        scales = [g * torch.rsqrt(rv + eps) for g, rv in zip(bn_weights, running_vars, strict=True)]
        folded = [w * s.view(-1, 1, 1, 1, 1) for w, s in zip(weights, scales, strict=True)]
        convs = multi_depthwise_conv3d(h, folded, stride)
        normed = [
            z + (b - rm * s).view(1, -1, 1, 1, 1)
            for z, b, rm, s in zip(convs, bn_biases, running_means, scales, strict=True)
        ]
    return _combine([F.hardtanh(z, 0.0, 6.0) for z in normed], combine)

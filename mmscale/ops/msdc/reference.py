"""Multi-scale depthwise convolution, plain PyTorch: the oracle and the CPU path.

One branch per kernel size: ``ReLU6(BN_k(DWConv3d_k(h)))`` with padding ``k // 2``,
then the branches are summed (``combine="add"``) or concatenated (``"concat"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmscale.ops.batch_norm import BatchNormState, BatchNormStep, begin_batch_norm
from mmscale.ops.depthwise_conv3d import depthwise_conv3d_reference, multi_depthwise_conv3d

__all__ = ["msdc_torch", "multiscale_depthwise_conv3d_reference"]


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
    x: torch.Tensor, weights: Sequence[torch.Tensor], bn_states: Sequence[BatchNormState],
    stride: tuple[int, int, int] = (1, 1, 1), combine: str = "add",
) -> torch.Tensor:
    """Naive multi-scale depthwise convolution: one ``F.conv3d`` + ``F.batch_norm`` per branch.

    The oracle of :func:`mmscale.ops.msdc.multiscale_depthwise_conv3d`: the same
    arguments (less ``backend``), result [B, E or E * n, D', H', W'] and BatchNorm
    bookkeeping, on input [B, E, D, H, W].

    Example:
        >>> bn = torch.nn.BatchNorm3d(4).eval()
        >>> y = multiscale_depthwise_conv3d_reference(torch.randn(1, 4, 3, 5, 5), [torch.randn(4, 1, 3, 3, 3)],
        ...                                           [BatchNormState.of(bn)], combine="concat")
        >>> y.shape
        torch.Size([1, 4, 3, 5, 5])
    """
    branches = []
    for w, state in zip(weights, bn_states, strict=True):
        s = begin_batch_norm(state)
        padding = tuple(k // 2 for k in w.shape[2:])
        z = depthwise_conv3d_reference(x, w, None, stride, padding)
        z = F.batch_norm(z, s.running_mean, s.running_var, s.weight, s.bias, s.use_batch_stats, s.momentum, s.eps)
        branches.append(F.hardtanh(z, 0.0, 6.0))
    return _combine(branches, combine)


def msdc_torch(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    steps: Sequence[BatchNormStep],
    stride: tuple[int, int, int],
    combine: str,
) -> torch.Tensor:
    """The fast PyTorch path of the op, after its BatchNorm bookkeeping (``steps``).

    Same function as the reference; differences are only in how it computes: the
    depthwise convolutions use :func:`mmscale.ops.depthwise_conv3d.multi_depthwise_conv3d`
    (channels_last_3d, cheaper CPU backward, ``1x1x1`` branches as a scale) and, with
    running statistics, BN is folded into the filters and a bias so each branch is
    one convolution plus one clamp. Every step shares one ``use_batch_stats`` and ``eps``.

    Args:
        x (torch.Tensor): input [B, E, D, H, W].
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw].
        steps (Sequence[BatchNormStep]): per-branch BatchNorm after ``begin_batch_norm``.
        stride (tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` or ``"concat"``.

    Returns:
        torch.Tensor: as the reference, in channels_last_3d memory format.

    Example:
        >>> from torch import nn
        >>> steps = [begin_batch_norm(BatchNormState.of(nn.BatchNorm3d(4).eval())) for _ in range(2)]
        >>> w = [torch.randn(4, 1, k, k, k) for k in (1, 3)]
        >>> tuple(msdc_torch(torch.randn(1, 4, 3, 5, 5), w, steps, (1, 1, 1), "add").shape)
        (1, 4, 3, 5, 5)
    """
    h = x.contiguous(memory_format=torch.channels_last_3d)
    if steps[0].use_batch_stats:
        convs = multi_depthwise_conv3d(h, weights, stride)
        normed = [
            F.batch_norm(z, s.running_mean, s.running_var, s.weight, s.bias, True, s.momentum, s.eps)
            for z, s in zip(convs, steps, strict=True)
        ]
    elif not _needs_grad(h, *weights, *(s.weight for s in steps), *(s.bias for s in steps)):
        # inference: BN folded into each filter and its bias, clamps and the sum in place,
        # so the only full-size allocations are one output per branch
        out = None
        for w, s in zip(weights, steps, strict=True):
            scale = s.weight * torch.rsqrt(s.running_var + s.eps)
            shift = s.bias - s.running_mean * scale
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
        scales = [s.weight * torch.rsqrt(s.running_var + s.eps) for s in steps]
        folded = [w * c.view(-1, 1, 1, 1, 1) for w, c in zip(weights, scales, strict=True)]
        convs = multi_depthwise_conv3d(h, folded, stride)
        normed = [
            z + (s.bias - s.running_mean * c).view(1, -1, 1, 1, 1)
            for z, s, c in zip(convs, steps, scales, strict=True)
        ]
    return _combine([F.hardtanh(z, 0.0, 6.0) for z in normed], combine)

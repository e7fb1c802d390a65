"""Helpers of the layers' fused paths: layout views, folded BatchNorm, when to fall back.

The fused paths read ``.weight`` tensors directly instead of calling submodules; they
keep the parameter layout of the plain composition (:mod:`mmscale.layers.reference`)
and run that composition instead whenever a submodule call must be seen
(:func:`needs_submodule_calls`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm

__all__ = [
    "CL", "check_batch_stats", "like_input", "linear_bn", "needs_submodule_calls", "rows", "volume",
    "wants_channels_last",
]

# the memory format of every fused path: channels contiguous, 1x1 convolutions are matrix products
CL = torch.channels_last_3d


def wants_channels_last(x: torch.Tensor) -> bool:
    """Whether a result made to look like ``x`` is channels_last_3d (else contiguous NCDHW)."""
    return x.is_contiguous(memory_format=CL) and not x.is_contiguous()


def like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Give ``out`` the memory format of ``x`` (channels_last_3d stays, else contiguous)."""
    if wants_channels_last(x):
        return out
    return out.contiguous()


def rows(x: torch.Tensor) -> torch.Tensor:
    """[B, C, D, H, W] (channels_last_3d) -> [B*D*H*W, C] view, copying only if needed."""
    x = x.contiguous(memory_format=CL)
    return rearrange(x, "b c d h w -> (b d h w) c")


def volume(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B*D*H*W, C] -> [B, C, D, H, W] channels_last_3d view with the spatial shape of ``like``."""
    b, _, d, h, w = like.shape
    return rearrange(flat, "(b d h w) c -> b c d h w", b=b, d=d, h=h, w=w)


def linear_bn(flat: torch.Tensor, weight: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``BN(flat @ weight.T)`` for rows [N, C_in]; BN folded into the matrix with running statistics."""
    s = begin_batch_norm(BatchNormState.of(bn))
    if s.use_batch_stats:
        return F.batch_norm(F.linear(flat, weight), s.running_mean, s.running_var, s.weight, s.bias, True,
                            s.momentum, s.eps)
    scale = s.weight * torch.rsqrt(s.running_var + s.eps)
    return F.linear(flat, weight * scale[:, None], s.bias - s.running_mean * scale)


def needs_submodule_calls(module: nn.Module) -> bool:
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


def check_batch_stats(x: torch.Tensor, bns: Iterable[nn.Module]) -> None:
    """Raise ``ValueError`` when a training-mode BatchNorm would see one value per channel."""
    if x.shape[0] * math.prod(x.shape[2:]) == 1 and any(bn.training for bn in bns):
        raise ValueError(
            f"x has one value per channel (shape {tuple(x.shape)}): BatchNorm in training mode needs "
            "more than one (use a larger batch or volume, or eval mode)"
        )

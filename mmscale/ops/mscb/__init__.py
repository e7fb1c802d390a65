"""The multi-scale convolution block (MSCB) in training mode as one op, for CPU.

:func:`multiscale_conv_block_train` computes ``BN(W2 @ sum_k ReLU6(BN_k(DWConv_k(
ReLU6(BN(W1 @ x)))))) + residual`` with every BatchNorm normalising with the batch's
statistics, and updates their running statistics as ``nn.BatchNorm3d`` does; its
backward allocates only the buffers it needs (see :mod:`mmscale.ops.mscb.cpu`). The
plain composition (:func:`mmscale.layers.reference.multiscale_conv_block_forward`)
is the oracle; :func:`supports` says when this op applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmscale.ops._dispatch import cpu_autocast_enabled, cpu_autograd_path, tracing
from mmscale.ops.batch_norm import BatchNormState, BatchNormStep
from mmscale.ops.mscb.cpu import MSCBTrainFunction, mscb_inference, shuffled

__all__ = [
    "inference_supported", "multiscale_conv_block_inference", "multiscale_conv_block_train", "shuffled",
    "supports",
]


def _batch_stats_with_affine(s: BatchNormState) -> bool:
    # what begin_batch_norm will decide: batch statistics, and a scale/shift tensor to use
    use_batch_stats = s.training or (s.running_mean is None and s.running_var is None)
    return use_batch_stats and any(t is not None for t in (s.weight, s.bias, s.running_mean, s.running_var))


def _check_steps(steps: Sequence[BatchNormStep], dw_weights: Sequence[torch.Tensor]) -> None:
    if len(steps) != len(dw_weights) + 2:
        raise ValueError(f"steps must hold {len(dw_weights) + 2} BatchNorms (expansion, branches, projection), "
                         f"got {len(steps)}")


def supports(x: torch.Tensor, states: Sequence[BatchNormState], stride: tuple[int, int, int], combine: str) -> bool:
    """Whether :func:`multiscale_conv_block_train` computes this call.

    It does on CPU, for float32/float64 outside autocast and outside
    ``torch.compile``/``torch.export`` tracing (which see the plain ops instead), with
    stride 1, branches added, and every BatchNorm normalising with batch statistics
    and having a scale and shift.

    Args:
        x (torch.Tensor): block input [B, C, D, H, W].
        states (Sequence[BatchNormState]): the expansion's, each branch's and the
            projection's BatchNorm (before the call's bookkeeping).
        stride (tuple[int, int, int]): the depthwise stride.
        combine (str): ``"add"`` or ``"concat"``.

    Returns:
        bool: True when the fused training op applies.

    Example:
        >>> from torch import nn
        >>> states = [BatchNormState.of(nn.BatchNorm3d(4)) for _ in range(3)]
        >>> supports(torch.zeros(1, 4, 2, 3, 3), states, (1, 1, 1), "add")
        True
    """
    return (
        cpu_autograd_path(x)
        and tuple(stride) == (1, 1, 1)
        and combine == "add"
        and all(_batch_stats_with_affine(s) for s in states)
        and not tracing()
    )


def multiscale_conv_block_train(
    x: torch.Tensor,
    w_expand: torch.Tensor,
    dw_weights: Sequence[torch.Tensor],
    w_project: torch.Tensor,
    w_shortcut: torch.Tensor | None,
    steps: Sequence[BatchNormStep],
    out_channels_last: bool,
    shuffle_groups: int = 1,
) -> torch.Tensor:
    """One MSCB forward with batch-statistics BatchNorms, differentiable, stride 1, branches added.

    Args:
        x (torch.Tensor): input [B, C, D, H, W] (converted to channels_last_3d).
        w_expand (torch.Tensor): expansion weight [E, C].
        dw_weights (Sequence[torch.Tensor]): depthwise filters, each [E, 1, kd, kh, kw]
            (odd sizes, padding ``k // 2``).
        w_project (torch.Tensor): projection weight [C_out, E].
        w_shortcut (torch.Tensor | None): residual projection [C_out, C], or None
            for the identity residual (then C_out == C).
        steps (Sequence[BatchNormStep]): BatchNorms of the expansion, of each branch
            and of the projection (``len(dw_weights) + 2``), each with batch statistics.
        out_channels_last (bool): return channels_last_3d (else contiguous NCDHW).
        shuffle_groups (int): groups of the channel shuffle before the projection
            (1: none); it is folded into a temporary copy of ``w_project``, so the
            weight's gradient comes back in its own layout.

    Returns:
        torch.Tensor: [B, C_out, D, H, W].

    Raises:
        ValueError: if ``steps`` does not hold one BatchNorm per stage.

    Example:
        >>> from torch import nn
        >>> from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm
        >>> steps = [begin_batch_norm(BatchNormState.of(nn.BatchNorm3d(n))) for n in (8, 8, 8, 4)]
        >>> y = multiscale_conv_block_train(torch.randn(2, 4, 3, 5, 5), torch.randn(8, 4),
        ...                                 [torch.randn(8, 1, 1, 1, 1), torch.randn(8, 1, 3, 3, 3)],
        ...                                 torch.randn(4, 8), None, steps, out_channels_last=False)
        >>> tuple(y.shape)
        (2, 4, 3, 5, 5)
    """
    _check_steps(steps, dw_weights)
    return MSCBTrainFunction.apply(
        x.contiguous(memory_format=torch.channels_last_3d), w_expand, w_project, w_shortcut,
        (int(shuffle_groups), bool(out_channels_last)),
        tuple(steps), *dw_weights, *(s.weight for s in steps), *(s.bias for s in steps),
    )


def inference_supported(
    x: torch.Tensor, states: Sequence[BatchNormState], stride: tuple[int, int, int], combine: str,
    *params: torch.Tensor,
) -> bool:
    """Whether :func:`multiscale_conv_block_inference` computes this call.

    It does when nothing needs a gradient (``torch.no_grad``, inference mode, or no
    tensor requiring one), every BatchNorm normalises with running statistics,
    the stride is 1 and the branches are added, for floating-point inputs outside autocast.

    Args:
        x (torch.Tensor): block input [B, C, D, H, W].
        states (Sequence[BatchNormState]): the expansion's, each branch's and the
            projection's BatchNorm.
        stride (tuple[int, int, int]): the depthwise stride.
        combine (str): ``"add"`` or ``"concat"``.
        *params (torch.Tensor): the block's parameters (none may need a gradient).

    Returns:
        bool: True when the in-place inference path applies.

    Example:
        >>> from torch import nn
        >>> states = [BatchNormState.of(nn.BatchNorm3d(4).eval()) for _ in range(3)]
        >>> inference_supported(torch.zeros(1, 4, 2, 3, 3), states, (1, 1, 1), "add")
        True
    """
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
    batch_stats = any(s.training or (s.running_mean is None and s.running_var is None) for s in states)
    autocast = cpu_autocast_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()
    return (
        not grad and not batch_stats and not autocast and tuple(stride) == (1, 1, 1) and combine == "add"
        and x.is_floating_point() and not tracing()
    )


def _fold(step: BatchNormStep) -> tuple[torch.Tensor, torch.Tensor]:
    scale = step.weight * torch.rsqrt(step.running_var + step.eps)
    return scale, step.bias - step.running_mean * scale


def _project_weight(w_project: torch.Tensor, groups: int, scale: torch.Tensor | None) -> torch.Tensor:
    """:func:`shuffled` ``w_project`` with its rows times ``scale`` (when given), in one pass."""
    if scale is None or groups == 1:
        w = shuffled(w_project, groups)
        return w if scale is None else w * scale[:, None]
    o, e = w_project.shape
    out = w_project.new_empty(o, groups, e // groups)
    # the shuffle as a view of the weight, written once, scaled on the way
    torch.mul(w_project.view(o, e // groups, groups).transpose(1, 2), scale[:, None, None], out=out)
    return out.view(o, e)


def multiscale_conv_block_inference(
    x: torch.Tensor,
    w_expand: torch.Tensor,
    dw_weights: Sequence[torch.Tensor],
    w_project: torch.Tensor,
    w_shortcut: torch.Tensor | None,
    steps: Sequence[BatchNormStep],
    out_channels_last: bool,
    shuffle_groups: int = 1,
) -> torch.Tensor:
    """One MSCB forward without autograd, every BatchNorm folded, elementwise steps in place.

    Arguments as :func:`multiscale_conv_block_train`, with every BatchNorm using its
    running statistics (see :func:`inference_supported`).

    Returns:
        torch.Tensor: [B, C_out, D, H, W], channels_last_3d or contiguous as asked.

    Example:
        >>> from torch import nn
        >>> from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm
        >>> steps = [begin_batch_norm(BatchNormState.of(nn.BatchNorm3d(n).eval())) for n in (8, 8, 8, 4)]
        >>> with torch.no_grad():
        ...     y = multiscale_conv_block_inference(torch.randn(2, 4, 3, 5, 5), torch.randn(8, 4),
        ...                                         [torch.randn(8, 1, 1, 1, 1), torch.randn(8, 1, 3, 3, 3)],
        ...                                         torch.randn(4, 8), None, steps, out_channels_last=False)
        >>> tuple(y.shape)
        (2, 4, 3, 5, 5)
    """
    _check_steps(steps, dw_weights)
    s1, t1 = _fold(steps[0])
    branch = [_fold(s) for s in steps[1:-1]]
    s2, t2 = _fold(steps[-1])
    # a BatchNorm's scale goes into the 1x1 weight when that is the smaller tensor (a copy
    # per call), else onto the product's columns in place (deep layers: few positions, many channels)
    rows = x.numel() // max(x.shape[1], 1)
    scale_expand_weight = w_expand.shape[1] <= rows
    scale_project_weight = w_project.shape[1] <= rows
    return mscb_inference(
        x.contiguous(memory_format=torch.channels_last_3d),
        w_expand * s1[:, None] if scale_expand_weight else w_expand, t1,
        [w * sc.view(-1, 1, 1, 1, 1) for w, (sc, _) in zip(dw_weights, branch, strict=True)],
        [sh for _, sh in branch],
        _project_weight(w_project, shuffle_groups, s2 if scale_project_weight else None), t2, w_shortcut,
        out_channels_last,
        expand_scale=None if scale_expand_weight else s1,
        project_scale=None if scale_project_weight else s2,
    )

"""Multi-scale depthwise convolution + BatchNorm + ReLU6 + branch combine, with dispatch.

The Triton module is imported lazily, on the first call that resolves to
``"triton"``: Triton decides at decoration time whether ``@triton.jit`` kernels run
compiled or through its CPU interpreter (``TRITON_INTERPRET=1``), so importing the
kernels when mmscale is imported would freeze that choice too early.

Autocast: ``F.conv3d`` runs in the autocast dtype, so under ``torch.autocast`` the
Triton path casts ``x`` to ``torch.get_autocast_dtype(device)`` and returns that
dtype; filters and BN parameters are read in float32 whatever their dtype, and the
gradients come back in each parameter's own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmscale.ops._dispatch import (
    dtype_unsupported,
    kernels_unavailable,
    load_kernels,
    select_backend,
)
from mmscale.ops.batch_norm import BatchNormState, BatchNormStep, begin_batch_norm
from mmscale.ops.msdc.reference import msdc_torch, multiscale_depthwise_conv3d_reference

__all__ = ["multiscale_depthwise_conv3d", "multiscale_depthwise_conv3d_reference", "supports"]

_KERNELS = "mmscale.ops.msdc.triton"
_MAX_BRANCHES = 4  # mirrors mmscale.ops.msdc.triton.MAX_BRANCHES without importing Triton
_OP = "multiscale_depthwise_conv3d"


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "meta":  # autocast knows no meta device (shape-only runs)
        return None
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def supports(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    stride: tuple[int, int, int] = (1, 1, 1),
    combine: str = "add",
) -> str | None:
    """Why the Triton kernels cannot run these arguments, or None when they can.

    Args:
        x (torch.Tensor): input [B, E, D, H, W] (its autocast dtype is what counts).
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw].
        stride (tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` or ``"concat"``.

    Returns:
        str | None: a human-readable reason, or None.

    Example:
        >>> supports(torch.zeros(1, 2, 3, 3, 3), [torch.zeros(2, 1, 3, 3, 3)], stride=(2, 2, 2))
        'stride (2, 2, 2) (the kernels support stride 1 only)'
    """
    if tuple(stride) != (1, 1, 1):
        return f"stride {tuple(stride)} (the kernels support stride 1 only)"
    if not 1 <= len(weights) <= _MAX_BRANCHES:
        return f"{len(weights)} branches (the kernels support 1 to {_MAX_BRANCHES})"
    if any(k % 2 == 0 for w in weights for k in w.shape[2:]):
        return "an even kernel size (the kernels support odd sizes only)"
    if combine not in ("add", "concat"):
        return f"combine={combine!r}"
    return dtype_unsupported(_autocast_dtype(x.device) or x.dtype) or kernels_unavailable(x, _KERNELS)


def multiscale_depthwise_conv3d(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    bn_states: Sequence[BatchNormState],
    stride: tuple[int, int, int] = (1, 1, 1),
    combine: str = "add",
    backend: str = "auto",
) -> torch.Tensor:
    """All depthwise branches ``ReLU6(BN_k(DWConv3d_k(x)))``, combined, dispatched by backend.

    Each branch pads by ``k // 2``. Running statistics and ``num_batches_tracked``
    of every BatchNorm are updated here, as ``nn.BatchNorm3d`` would update them.

    Args:
        x (torch.Tensor): input [B, E, D, H, W].
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw].
        bn_states (Sequence[BatchNormState]): per-branch BatchNorm [E], one per filter
            (:meth:`BatchNormState.of` of an ``nn.BatchNorm3d``).
        stride (tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` (sum) or ``"concat"`` (channels in branch order).
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        torch.Tensor: [B, E, D', H', W'] (``"add"``) or [B, E * n, D', H', W'] (``"concat"``).

    Raises:
        ValueError: for an unknown backend or ``combine``, or a number of
            ``bn_states`` other than of ``weights``.
        RuntimeError: when ``backend="triton"`` cannot run these arguments (stride
            other than 1, more than 4 branches, an even kernel size, float64) and
            ``MMSCALE_STRICT=1``; without strict mode it warns once and falls back.

    Example:
        >>> from torch import nn
        >>> bns = [BatchNormState.of(nn.BatchNorm3d(4)) for _ in range(2)]
        >>> w = [torch.randn(4, 1, k, k, k) for k in (1, 3)]
        >>> tuple(multiscale_depthwise_conv3d(torch.randn(1, 4, 3, 5, 5), w, bns).shape)
        (1, 4, 3, 5, 5)
    """
    if combine not in ("add", "concat"):
        raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
    if len(bn_states) != len(weights):
        raise ValueError(f"bn_states must hold one state per filter ({len(weights)}), got {len(bn_states)}")
    steps = [begin_batch_norm(s) for s in bn_states]
    if len({(s.use_batch_stats, s.eps) for s in steps}) > 1:
        # branches whose BatchNorms differ in mode or eps run one at a time
        outs = [_run(x, [w], [s], stride, "add", backend) for w, s in zip(weights, steps, strict=True)]
        return torch.cat(outs, dim=1) if combine == "concat" else sum(outs[1:], outs[0])
    return _run(x, weights, steps, stride, combine, backend)


def _run(x, weights, steps: Sequence[BatchNormStep], stride, combine: str, backend: str) -> torch.Tensor:
    if select_backend(backend, x, _OP, lambda: supports(x, weights, stride, combine)) == "triton":
        cast = _autocast_dtype(x.device)
        kernels = load_kernels(_KERNELS)
        return kernels.multiscale_depthwise_conv3d_triton(x.to(cast) if cast is not None else x, weights, steps, combine)
    return msdc_torch(x, weights, steps, stride, combine)

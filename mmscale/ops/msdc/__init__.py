"""Multi-scale depthwise convolution + BatchNorm + ReLU6 + branch combine, with dispatch.

The Triton module is imported lazily, on the first call that resolves to
``"triton"``: Triton decides at decoration time whether ``@triton.jit`` kernels run
compiled or through its CPU interpreter (``TRITON_INTERPRET=1``), so importing the
kernels when mmscale is imported would freeze that choice too early.

Autocast: ``F.conv3d`` runs in the autocast dtype, so under ``torch.autocast`` the
Triton path casts ``h`` to ``torch.get_autocast_dtype(device)`` and returns that
dtype; filters and BN parameters are read in float32 whatever their dtype, and the
gradients come back in each parameter's own dtype.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from types import ModuleType

import torch

from mmscale.ops._dispatch import (
    fallback,
    load_kernels,
    requested_backend,
    resolve_backend,
    sample_too_large,
)
from mmscale.ops.msdc.reference import (
    multiscale_depthwise_conv3d_reference,
    multiscale_depthwise_conv3d_torch,
)

__all__ = [
    "multiscale_depthwise_conv3d",
    "multiscale_depthwise_conv3d_reference",
    "multiscale_depthwise_conv3d_torch",
]

HAS_TRITON_KERNEL = importlib.util.find_spec("triton") is not None

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_BRANCHES = 4  # mirrors mmscale.ops.msdc.triton.MAX_BRANCHES without importing Triton


def _triton_module() -> ModuleType | None:
    return load_kernels("mmscale.ops.msdc.triton")


def _unsupported(h: torch.Tensor, weights: Sequence[torch.Tensor], stride, combine: str) -> str | None:
    """Why these arguments are outside the kernels' scope, or None."""
    if tuple(stride) != (1, 1, 1):
        return f"stride {tuple(stride)} (the kernels support stride 1 only)"
    if not 1 <= len(weights) <= _MAX_BRANCHES:
        return f"{len(weights)} branches (the kernels support 1 to {_MAX_BRANCHES})"
    if any(k % 2 == 0 for w in weights for k in w.shape[2:]):
        return "an even kernel size (the kernels support odd sizes only)"
    if h.dtype not in _KERNEL_DTYPES:
        return f"dtype {h.dtype} (the kernels support float32, float16, bfloat16)"
    if combine not in ("add", "concat"):
        return f"combine={combine!r}"
    return sample_too_large(h)


def _fallback(reason: str) -> None:
    fallback("multiscale_depthwise_conv3d", reason)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4: only the CUDA query exists
        if device.type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None


def multiscale_depthwise_conv3d(
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
    backend: str = "auto",
) -> torch.Tensor:
    """All depthwise branches of ``MultiScaleDepthwiseConv3d``, dispatched by backend.

    Args:
        h (torch.Tensor): input [B, E, D, H, W].
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw].
        bn_weights (Sequence[torch.Tensor]): per-branch BN scale [E].
        bn_biases (Sequence[torch.Tensor]): per-branch BN shift [E].
        running_means (Sequence[torch.Tensor | None]): per-branch running mean [E].
        running_vars (Sequence[torch.Tensor | None]): per-branch running variance [E].
        use_batch_stats (bool): BN with batch statistics (training mode).
        momentum (float): running-statistics momentum.
        eps (float): BN epsilon.
        stride (tuple[int, int, int]): stride of every branch.
        combine (str): ``"add"`` or ``"concat"``.
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        torch.Tensor: [B, E, D', H', W'] (``"add"``) or [B, E * n, D', H', W'] (``"concat"``).

    Raises:
        ValueError: for an unknown backend or ``combine``.
        RuntimeError: when ``backend="triton"`` cannot run these arguments (stride
            other than 1, more than 4 branches, an even kernel size, float64) and
            ``MMSCALE_STRICT=1``; without strict mode it warns once and falls back.

    Example:
        >>> e = 4
        >>> w = [torch.randn(e, 1, k, k, k) for k in (1, 3)]
        >>> ones, zeros = [torch.ones(e)] * 2, [torch.zeros(e)] * 2
        >>> y = multiscale_depthwise_conv3d(torch.randn(1, e, 3, 5, 5), w, ones, zeros,
        ...     [None, None], [None, None], True, 0.1, 1e-5, backend="torch")
        >>> tuple(y.shape)
        (1, 4, 3, 5, 5)
    """
    if combine not in ("add", "concat"):
        raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
    if resolve_backend(backend, h, op="multiscale_depthwise_conv3d", has_kernel=HAS_TRITON_KERNEL) == "triton":
        cast = _autocast_dtype(h.device)
        hk = h.to(cast) if cast is not None else h
        reason = _unsupported(hk, weights, stride, combine)
        kernels = _triton_module() if reason is None else None
        if reason is None and kernels is None:
            reason = "the Triton kernels failed to import"
        if kernels is not None:
            return kernels.multiscale_depthwise_conv3d_triton(
                hk, weights, bn_weights, bn_biases, running_means, running_vars,
                use_batch_stats, momentum, eps, combine,
            )
        if requested_backend(backend) == "triton":
            _fallback(reason)
    return multiscale_depthwise_conv3d_torch(
        h, weights, bn_weights, bn_biases, running_means, running_vars,
        use_batch_stats, momentum, eps, stride, combine,
    )

"""Pooling and gating passes of channel and spatial attention, with dispatch.

The Triton module is imported lazily, on the first call that resolves to
``"triton"``: Triton decides at decoration time whether ``@triton.jit`` kernels run
compiled or through its CPU interpreter (``TRITON_INTERPRET=1``), so importing the
kernels when mmscale is imported would freeze that choice too early.
"""

from __future__ import annotations

from types import ModuleType

import torch

from mmscale.ops._dispatch import (
    dtype_unsupported,
    kernels_unavailable,
    load_kernels,
    select_backend,
)
from mmscale.ops.gating.reference import (
    apply_gates_reference,
    channel_pool_reference,
    spatial_pool_reference,
)

__all__ = [
    "apply_gates",
    "apply_gates_reference",
    "channel_pool",
    "channel_pool_reference",
    "spatial_pool",
    "spatial_pool_reference",
    "supports",
]

_KERNELS = "mmscale.ops.gating.triton"


def supports(x: torch.Tensor, *gates: torch.Tensor) -> str | None:
    """Why the gating kernels cannot run on ``x`` and its gates, or None when they can.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        *gates (torch.Tensor): the op's gates, e.g. [B, C, 1, 1, 1] and [B, 1, D, H, W].

    Returns:
        str | None: a human-readable reason, or None.

    Example:
        >>> supports(torch.zeros(1, 2, 3, 3, 3, dtype=torch.float64))
        'dtype torch.float64 (the kernels support float32, float16, bfloat16)'
    """
    for t in (x, *gates):
        if dtype_unsupported(t.dtype):
            return dtype_unsupported(t.dtype)
    return kernels_unavailable(x, _KERNELS)


def _kernels(backend: str, op: str, x: torch.Tensor, *gates: torch.Tensor) -> ModuleType | None:
    """The kernel module when ``op`` runs in Triton, else None (a fallback is reported there)."""
    if select_backend(backend, x, op, lambda: supports(x, *gates)) == "triton":
        return load_kernels(_KERNELS)
    return None


def channel_pool(x: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Average and maximum over D, H, W of every channel.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(avg, max)``, each [B, C].

    Raises:
        ValueError: for an unknown backend.
        RuntimeError: when ``backend="triton"`` cannot run here (no Triton, a CPU
            tensor without ``TRITON_INTERPRET=1``, an unsupported dtype) and
            ``MMSCALE_STRICT=1``; without strict mode it warns once and falls back.

    Example:
        >>> avg, mx = channel_pool(torch.randn(2, 3, 1, 4, 4))
        >>> tuple(avg.shape)
        (2, 3)
    """
    kernels = _kernels(backend, "channel_pool", x)
    if kernels is not None:
        return kernels.channel_pool_triton(x)
    return channel_pool_reference(x)


def spatial_pool(x: torch.Tensor, channel_gate: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Channel mean and max of ``x * channel_gate``.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): [B, C, 1, 1, 1].
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        torch.Tensor: [B, 2, D, H, W].

    Raises:
        ValueError: for an unknown backend.
        RuntimeError: as :func:`channel_pool`, for an explicit ``"triton"`` that cannot run.

    Example:
        >>> tuple(spatial_pool(torch.randn(1, 3, 2, 4, 4), torch.ones(1, 3, 1, 1, 1)).shape)
        (1, 2, 2, 4, 4)
    """
    kernels = _kernels(backend, "spatial_pool", x, channel_gate)
    if kernels is not None:
        return kernels.spatial_pool_triton(x, channel_gate)
    return spatial_pool_reference(x, channel_gate)


def apply_gates(
    x: torch.Tensor, channel_gate: torch.Tensor, spatial_gate: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """``x * channel_gate * spatial_gate`` in one pass where a kernel exists.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): [B, C, 1, 1, 1].
        spatial_gate (torch.Tensor): [B, 1, D, H, W].
        backend (str): ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        torch.Tensor: [B, C, D, H, W].

    Raises:
        ValueError: for an unknown backend.
        RuntimeError: as :func:`channel_pool`, for an explicit ``"triton"`` that cannot run.

    Example:
        >>> x = torch.randn(1, 3, 2, 4, 4)
        >>> tuple(apply_gates(x, torch.ones(1, 3, 1, 1, 1), torch.ones(1, 1, 2, 4, 4)).shape)
        (1, 3, 2, 4, 4)
    """
    kernels = _kernels(backend, "apply_gates", x, channel_gate, spatial_gate)
    if kernels is not None:
        return kernels.apply_gates_triton(x, channel_gate, spatial_gate)
    return apply_gates_reference(x, channel_gate, spatial_gate)

"""Pooling and gating passes of channel and spatial attention, with dispatch.

The Triton module is imported lazily, on the first call that resolves to
``"triton"``: Triton decides at decoration time whether ``@triton.jit`` kernels run
compiled or through its CPU interpreter (``TRITON_INTERPRET=1``), so importing the
kernels when mmscale is imported would freeze that choice too early.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch

from mmscale.ops._dispatch import (
    fallback,
    load_kernels,
    requested_backend,
    resolve_backend,
    sample_too_large,
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
]

HAS_TRITON_KERNEL = importlib.util.find_spec("triton") is not None

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_module() -> ModuleType | None:
    return load_kernels("mmscale.ops.gating.triton")


def _use_triton(backend: str, op: str, *tensors: torch.Tensor) -> ModuleType | None:
    """The kernel module when ``op`` should run in Triton, else None (fallback warned).

    The module is imported only once the answer is ``"triton"``, so a CPU process
    without ``TRITON_INTERPRET=1`` never decorates the kernels in compiled mode.
    """
    has_kernel = HAS_TRITON_KERNEL and all(t.dtype in _KERNEL_DTYPES for t in tensors)
    if resolve_backend(backend, tensors[0], op=op, has_kernel=has_kernel) != "triton":
        return None
    reason = sample_too_large(tensors[0])
    if reason is not None:  # PyTorch instead; said aloud only when Triton was asked for by name
        if requested_backend(backend) == "triton":
            fallback(op, reason)
        return None
    kernels = _triton_module()
    if kernels is None:  # Triton is present but the kernels failed to import
        resolve_backend("triton", tensors[0], op=op, has_kernel=False)
    return kernels


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
    kernels = _use_triton(backend, "channel_pool", x)
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
        RuntimeError: when ``backend="triton"`` cannot run here (no Triton, a CPU
            tensor without ``TRITON_INTERPRET=1``, an unsupported dtype) and
            ``MMSCALE_STRICT=1``; without strict mode it warns once and falls back.

    Example:
        >>> tuple(spatial_pool(torch.randn(1, 3, 2, 4, 4), torch.ones(1, 3, 1, 1, 1)).shape)
        (1, 2, 2, 4, 4)
    """
    kernels = _use_triton(backend, "spatial_pool", x, channel_gate)
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
        RuntimeError: when ``backend="triton"`` cannot run here (no Triton, a CPU
            tensor without ``TRITON_INTERPRET=1``, an unsupported dtype) and
            ``MMSCALE_STRICT=1``; without strict mode it warns once and falls back.

    Example:
        >>> x = torch.randn(1, 3, 2, 4, 4)
        >>> tuple(apply_gates(x, torch.ones(1, 3, 1, 1, 1), torch.ones(1, 1, 2, 4, 4)).shape)
        (1, 3, 2, 4, 4)
    """
    kernels = _use_triton(backend, "apply_gates", x, channel_gate, spatial_gate)
    if kernels is not None:
        return kernels.apply_gates_triton(x, channel_gate, spatial_gate)
    return apply_gates_reference(x, channel_gate, spatial_gate)

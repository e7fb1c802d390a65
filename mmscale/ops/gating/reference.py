"""Channel/spatial attention pooling and gating in plain PyTorch (oracle and CPU path)."""

from __future__ import annotations

import torch

__all__ = [
    "apply_gates_reference",
    "channel_pool_reference",
    "spatial_pool_reference",
]


def channel_pool_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average and maximum of every channel over D, H, W.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(avg, max)``, each [B, C].

    Example:
        >>> avg, mx = channel_pool_reference(torch.ones(2, 3, 1, 2, 2))
        >>> tuple(avg.shape), float(mx.max())
        ((2, 3), 1.0)
    """
    flat = x.flatten(2)
    return flat.mean(-1), flat.amax(-1)


def spatial_pool_reference(x: torch.Tensor, channel_gate: torch.Tensor) -> torch.Tensor:
    """Mean and maximum over channels of ``x * channel_gate``.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): gate [B, C, 1, 1, 1].

    Returns:
        torch.Tensor: [B, 2, D, H, W]: channel mean then channel max.

    Example:
        >>> s = spatial_pool_reference(torch.ones(1, 3, 1, 2, 2), torch.full((1, 3, 1, 1, 1), 0.5))
        >>> tuple(s.shape), float(s.max())
        ((1, 2, 1, 2, 2), 0.5)
    """
    gated = x * channel_gate
    return torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)


def apply_gates_reference(
    x: torch.Tensor, channel_gate: torch.Tensor, spatial_gate: torch.Tensor
) -> torch.Tensor:
    """``x * channel_gate * spatial_gate``.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): [B, C, 1, 1, 1].
        spatial_gate (torch.Tensor): [B, 1, D, H, W].

    Returns:
        torch.Tensor: [B, C, D, H, W].

    Example:
        >>> y = apply_gates_reference(torch.ones(1, 2, 1, 1, 1), torch.full((1, 2, 1, 1, 1), 2.0),
        ...                           torch.full((1, 1, 1, 1, 1), 3.0))
        >>> float(y.sum())
        12.0
    """
    return x * channel_gate * spatial_gate

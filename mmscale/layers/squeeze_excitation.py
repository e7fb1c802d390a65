"""Squeeze-excitation channel gating for 3D feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmscale._validation import positive_int

__all__ = ["SqueezeExcitation3d", "SE_ACTIVATIONS"]

SE_ACTIVATIONS = ("relu", "leaky_relu")
"""Activations between the two squeeze-excitation projections (PENet uses LeakyReLU 0.01)."""


class SqueezeExcitation3d(nn.Module):
    """Squeeze-excitation: ``x * sigmoid(W2 act(W1 avg_{DHW} x))``.

    ``W1``, ``W2`` are linear maps with bias (the same as 1x1x1 convolutions on the
    pooled vector).

    Args:
        channels (int): input channels.
        reduction (int): bottleneck ratio (hidden = ``max(channels // reduction, 1)``).
        activation (str): ``"relu"`` (default) or ``"leaky_relu"`` (PENet's, as in
            the published MMCAF-Net backbone).
        negative_slope (float): slope of ``"leaky_relu"``.

    Shapes:
        x: [B, C, D, H, W] -> [B, C, D, H, W]

    Raises:
        ValueError: a size is < 1 or ``activation`` is unknown.

    Example:
        >>> se = SqueezeExcitation3d(32, activation="leaky_relu")
        >>> se(torch.randn(1, 32, 2, 4, 4)).shape
        torch.Size([1, 32, 2, 4, 4])
    """

    def __init__(
        self, channels: int, reduction: int = 16, activation: str = "relu", negative_slope: float = 0.01
    ) -> None:
        super().__init__()
        positive_int(channels, "channels")
        positive_int(reduction, "reduction")
        if activation not in SE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {SE_ACTIVATIONS}, got {activation!r}")
        hidden = max(channels // reduction, 1)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale the channels of ``x`` [B, C, D, H, W]."""
        h = self.fc1(x.mean(dim=(2, 3, 4)))
        h = F.leaky_relu(h, self.negative_slope) if self.activation == "leaky_relu" else torch.relu(h)
        g = torch.sigmoid(self.fc2(h))
        return x * g[:, :, None, None, None]

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"activation={self.activation!r}{slope}"

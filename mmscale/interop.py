"""Axis order between mmscale and MONAI / TorchIO.

mmscale volumes are ``[B, C, D, H, W]``: the slice axis D comes first, as in
``nn.Conv3d`` and in DICOM stacks. MONAI and TorchIO keep the slice axis last,
``[B, C, H, W, D]`` (NIfTI's x, y, z). The layers cannot tell the two apart, so an
anisotropic kernel such as ``(1, 3, 3)`` given a slices-last tensor silently runs
along the wrong axes. These helpers move the slice axis and leave the in-plane axes
in the order they come in.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SlicesLast", "from_monai", "to_monai"]


def _check_volume(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(
            f"{name} must be a volume [B, C, *spatial] or [C, *spatial] with 3 spatial axes, "
            f"got shape {list(x.shape)}"
        )
    return x


def from_monai(x: torch.Tensor) -> torch.Tensor:
    """Reorder a MONAI / TorchIO volume, slices last, into mmscale's slices-first order.

    ``[B, C, H, W, D] -> [B, C, D, H, W]`` (or ``[C, H, W, D] -> [C, D, H, W]`` for
    one sample, as transforms and datasets see it). A view, no copy; the in-plane
    axes keep their order.

    Args:
        x (torch.Tensor): volume [B, C, H, W, D] or [C, H, W, D].

    Returns:
        torch.Tensor: the same data as [B, C, D, H, W] or [C, D, H, W].

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: if ``x`` does not have 4 or 5 dimensions.

    Example:
        >>> x = torch.zeros(2, 1, 64, 48, 6)        # MONAI: [B, C, H, W, D]
        >>> from_monai(x).shape                      # mmscale: [B, C, D, H, W]
        torch.Size([2, 1, 6, 64, 48])
    """
    return _check_volume("x", x).movedim(-1, -3)


def to_monai(x: torch.Tensor) -> torch.Tensor:
    """Reorder an mmscale volume, slices first, into MONAI / TorchIO's slices-last order.

    ``[B, C, D, H, W] -> [B, C, H, W, D]`` (or ``[C, D, H, W] -> [C, H, W, D]``); the
    inverse of :func:`from_monai`. A view, no copy.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W] or [C, D, H, W].

    Returns:
        torch.Tensor: the same data as [B, C, H, W, D] or [C, H, W, D].

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: if ``x`` does not have 4 or 5 dimensions.

    Example:
        >>> y = torch.zeros(2, 1, 6, 64, 48)        # mmscale: [B, C, D, H, W]
        >>> to_monai(y).shape                        # MONAI: [B, C, H, W, D]
        torch.Size([2, 1, 64, 48, 6])
        >>> torch.equal(from_monai(to_monai(y)), y)
        True
    """
    return _check_volume("x", x).movedim(-3, -1)


class SlicesLast(nn.Module):
    """Run an mmscale layer inside a network whose volumes are slices last.

    Wraps a module that maps ``[B, C, D, H, W]`` volumes to ``[B, C', D', H', W']``
    volumes so that it takes and returns MONAI / TorchIO's ``[B, C, H, W, D]``:
    :func:`from_monai` before, :func:`to_monai` after. Kernel sizes keep mmscale's
    meaning, ``(kd, kh, kw)`` with ``kd`` along the slices. The wrapped module is the
    ``module`` attribute, so its state dict keys gain a ``module.`` prefix.

    Args:
        module (nn.Module): a volume-to-volume mmscale layer (or any module that
            takes and returns [B, C, D, H, W]).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> from mmscale import MultiScaleConvAttention3d
        >>> block = SlicesLast(MultiScaleConvAttention3d(8, kernel_sizes=((1, 3, 3), 3)))
        >>> block(torch.randn(2, 8, 16, 16, 4)).shape    # [B, C, H, W, D] in and out
        torch.Size([2, 8, 16, 16, 4])
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped module to a slices-last volume.

        Args:
            x (torch.Tensor): volume [B, C, H, W, D].

        Returns:
            torch.Tensor: the module's output, [B, C', H', W', D'].

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if ``x`` is not 5-dimensional.
        """
        _check_volume("x", x)
        if x.dim() != 5:
            raise ValueError(f"x must be a batch of volumes [B, C, H, W, D], got shape {list(x.shape)}")
        out = self.module(from_monai(x))
        if not isinstance(out, torch.Tensor) or out.dim() != 5:
            raise ValueError(
                f"SlicesLast wraps volume-to-volume modules; {type(self.module).__name__} returned "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        return to_monai(out)

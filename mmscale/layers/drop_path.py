"""Stochastic depth: drop a residual branch while training."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "DROP_PATH_MODES"]

DROP_PATH_MODES = ("sample", "batch")
"""``"sample"``: an independent draw per sample, kept branches scaled by ``1 / keep``
(timm's DropPath). ``"batch"``: one draw for the whole batch per call, no rescaling
(PENet, the backbone of the published MMCAF-Net)."""


class DropPath(nn.Module):
    """Stochastic depth for a residual branch, per sample or for the whole batch.

    * ``mode="sample"`` (default): each sample's branch is dropped independently with
      probability ``drop_prob``; kept branches are scaled by ``1 / (1 - drop_prob)`` so
      the expectation is unchanged.
    * ``mode="batch"``: one draw per call decides for the whole batch; a kept branch
      is returned unscaled, a dropped one as zeros. A residual block that wants to
      skip the branch entirely (and its own output activation, as PENet does) calls
      :meth:`keep_branch` itself instead of this forward.

    In eval mode (or with ``drop_prob == 0``) the layer is the identity.

    Args:
        drop_prob (float): probability of dropping the branch, in ``[0, 1)``.
        mode (str): ``"sample"`` or ``"batch"``.

    Shapes:
        x: [B, ...] -> [B, ...]

    Raises:
        ValueError: ``drop_prob`` outside ``[0, 1)`` or an unknown ``mode``.

    Example:
        >>> DropPath(0.2).eval()(torch.ones(2, 3)).sum().item()
        6.0
        >>> y = DropPath(0.5, mode="batch").train()(torch.ones(4, 3))
        >>> y.sum().item() in (0.0, 12.0)  # all samples dropped together, or none
        True
    """

    def __init__(self, drop_prob: float = 0.0, mode: str = "sample") -> None:
        super().__init__()
        if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be a float in [0, 1), got {drop_prob!r}")
        if mode not in DROP_PATH_MODES:
            raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}")
        self.drop_prob = float(drop_prob)
        self.mode = mode

    def keep_branch(self) -> bool:
        """One batch-wide draw: True when the branch is kept for this call.

        Always True in eval mode or with ``drop_prob == 0``. The draw uses torch's
        default CPU generator, so ``torch.manual_seed`` makes it reproducible.
        """
        if not self.training or self.drop_prob == 0.0:
            return True
        return bool(torch.rand(()) >= self.drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply stochastic depth to a residual branch ``x`` [B, ...]."""
        if not self.training or self.drop_prob == 0.0:
            return x
        if self.mode == "batch":
            return x if self.keep_branch() else torch.zeros_like(x)
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, mode={self.mode!r}"

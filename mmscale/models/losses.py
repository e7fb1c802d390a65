"""Classification losses for the MMCAF-Net heads.

The published MMCAF-Net trains one logit (``num_classes=1``) with a binary focal
loss; mmscale's default head has two logits trained with cross-entropy. Both are
offered: :func:`binary_focal_loss` (or :class:`BinaryFocalLoss`) for a one-logit head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["binary_focal_loss", "BinaryFocalLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_args(alpha: float | None, gamma: float, reduction: str) -> None:
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a float in [0, 1] or None, got {alpha!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0.0:
        raise ValueError(f"gamma must be a float >= 0, got {gamma!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def binary_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary focal loss on one logit per sample (Lin et al., 2017).

    With ``p = sigmoid(logit)`` and ``p_t = p`` for a positive target, ``1 - p``
    otherwise: ``loss = -alpha_t (1 - p_t)^gamma log(p_t)``, where ``alpha_t = alpha``
    for positives and ``1 - alpha`` for negatives (no weighting when ``alpha`` is
    None). ``log(p_t)`` is computed from the logit (``binary_cross_entropy_with_logits``),
    so large logits do not overflow. ``gamma=0`` and ``alpha=None`` give plain binary
    cross-entropy.

    Args:
        logits (torch.Tensor): [B] or [B, 1] logits (a ``num_classes=1`` head's output).
        targets (torch.Tensor): [B] labels in {0, 1} (bool, integer or float).
        alpha (float | None): weight of the positive class in [0, 1], or None.
        gamma (float): focusing exponent >= 0.
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"`` (per-sample [B]).

    Returns:
        torch.Tensor: the loss (a scalar, or [B] for ``reduction="none"``).

    Raises:
        TypeError: ``logits`` or ``targets`` is not a tensor, or ``logits`` is not floating-point.
        ValueError: shapes disagree, a target is not 0 or 1, or an argument is out of range.

    Example:
        >>> logits = torch.tensor([[2.0], [-1.0]])
        >>> loss = binary_focal_loss(logits, torch.tensor([1, 0]))
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """
    _check_args(alpha, gamma, reduction)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() != 1:
        raise ValueError(
            f"logits must have shape [B] or [B, 1] (one logit per sample), got {list(logits.shape)}"
        )
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"targets must have shape [{logits.shape[0]}], got {list(targets.shape)}")
    t = targets.to(logits.dtype)
    if targets.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("targets must be 0 or 1")
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class BinaryFocalLoss(nn.Module):
    """:func:`binary_focal_loss` as a module (for a ``num_classes=1`` head).

    Args:
        alpha (float | None): weight of the positive class in [0, 1], or None.
        gamma (float): focusing exponent >= 0.
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"``.

    Shapes:
        logits: [B] or [B, 1], targets: [B] -> scalar (or [B] with ``reduction="none"``).

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> loss_fn = BinaryFocalLoss(alpha=None, gamma=0.0)  # plain binary cross-entropy
        >>> x, y = torch.tensor([0.3, -2.0]), torch.tensor([1.0, 0.0])
        >>> torch.allclose(loss_fn(x, y), torch.nn.functional.binary_cross_entropy_with_logits(x, y))
        True
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_args(alpha, gamma, reduction)
        self.alpha = alpha
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Compute the loss (see :func:`binary_focal_loss`).

        Args:
            logits (torch.Tensor): [B] or [B, 1].
            targets (torch.Tensor): [B] in {0, 1}.

        Returns:
            torch.Tensor: the reduced loss.
        """
        return binary_focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"

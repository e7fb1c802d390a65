"""binary_focal_loss / BinaryFocalLoss against the formula, computed independently in float64."""

from __future__ import annotations

import math

import pytest
import torch

from mmscale.models import BinaryFocalLoss, binary_focal_loss


def _focal_by_hand(logit: float, y: int, alpha: float | None, gamma: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    p_t = p if y == 1 else 1.0 - p
    a_t = 1.0 if alpha is None else (alpha if y == 1 else 1.0 - alpha)
    return -a_t * (1.0 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (None, 0.0), (0.6, 1.5), (None, 3.0)])
def test_matches_the_formula_in_float64(alpha, gamma):
    logits = torch.tensor([[2.0], [-1.0], [0.3], [-4.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1, 1])
    want = [_focal_by_hand(float(z), int(t), alpha, gamma) for z, t in zip(logits[:, 0], y, strict=True)]
    got = binary_focal_loss(logits, y, alpha=alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        binary_focal_loss(logits, y.bool(), alpha=alpha, gamma=gamma), torch.tensor(sum(want) / 5, dtype=torch.float64)
    )
    mod = BinaryFocalLoss(alpha=alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(mod(logits[:, 0], y.double()), torch.tensor(sum(want), dtype=torch.float64))


def test_large_logits_stay_finite_and_gradients_flow():
    logits = torch.tensor([80.0, -80.0, 80.0], requires_grad=True)
    loss = binary_focal_loss(logits, torch.tensor([0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "logits, targets, kwargs, exc, name",
    [
        (torch.zeros(3, 2), torch.zeros(3), {}, ValueError, "logits"),
        (torch.zeros(3), torch.zeros(2), {}, ValueError, "targets"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), {}, ValueError, "0 or 1"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3), {}, TypeError, "logits"),
        ([0.0], torch.zeros(1), {}, TypeError, "logits"),
        (torch.zeros(3), torch.zeros(3), dict(alpha=1.5), ValueError, "alpha"),
        (torch.zeros(3), torch.zeros(3), dict(gamma=-1.0), ValueError, "gamma"),
        (torch.zeros(3), torch.zeros(3), dict(reduction="avg"), ValueError, "reduction"),
    ],
)
def test_errors_name_the_argument(logits, targets, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        binary_focal_loss(logits, targets, **kwargs)

"""KANLinear against a direct evaluation of its B-spline formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import KANEncoder, KANLinear


def cox_de_boor(x: float, knots: list[float], j: int, p: int) -> float:
    """B_{j,p}(x), the textbook recursion, one scalar at a time."""
    if p == 0:
        return 1.0 if knots[j] <= x < knots[j + 1] else 0.0
    left = (x - knots[j]) / (knots[j + p] - knots[j]) * cox_de_boor(x, knots, j, p - 1)
    right = (knots[j + p + 1] - x) / (knots[j + p + 1] - knots[j + 1]) * cox_de_boor(x, knots, j + 1, p - 1)
    return left + right


def direct(layer: KANLinear, x: torch.Tensor) -> torch.Tensor:
    """y_o = sum_i Wb[o,i] silu(x_i) + sum_i sum_j Ws[o,i,j] B_j(x_i), in float64."""
    low, high = layer.grid_range
    g, k = layer.grid_size, layer.spline_order
    h = (high - low) / g
    knots = [low + (j - k) * h for j in range(g + 2 * k + 1)]
    wb = layer.base_weight.detach().double()
    ws = layer.spline_weight.detach().double()
    out = torch.zeros(x.shape[0], layer.out_features, dtype=torch.float64)
    for n in range(x.shape[0]):
        for i in range(layer.in_features):
            xi = float(x[n, i])
            silu = xi / (1.0 + math.exp(-xi))
            bases = torch.tensor([cox_de_boor(xi, knots, j, k) for j in range(g + k)], dtype=torch.float64)
            out[n] += wb[:, i] * silu + ws[:, i] @ bases
    return out


@settings(max_examples=20, deadline=None)
@given(
    fin=st.integers(1, 4),
    fout=st.integers(1, 4),
    grid=st.integers(1, 7),
    order=st.integers(0, 3),
    low=st.floats(-3, 0.5),
    width=st.floats(0.5, 4),
    seed=st.integers(0, 100),
)
def test_matches_direct_bspline_evaluation(fin, fout, grid, order, low, width, seed):
    torch.manual_seed(seed)
    layer = KANLinear(fin, fout, grid_size=grid, spline_order=order, grid_range=(low, low + width))
    with torch.no_grad():
        layer.spline_weight.normal_()
    # Points inside, near the edges of, and outside the (extended) grid.
    x = low - width + 3 * width * torch.rand(6, fin)
    torch.testing.assert_close(layer(x).double(), direct(layer, x), atol=1e-4, rtol=1e-4)


def test_partition_of_unity_inside_the_grid():
    layer = KANLinear(1, 1, grid_size=5, spline_order=3, grid_range=(-1, 1))
    x = torch.linspace(-1, 0.999, 101).unsqueeze(-1)
    torch.testing.assert_close(layer.bases(x).sum(-1), torch.ones(101, 1))
    assert layer.bases(x).shape == (101, 1, 8)


def test_far_outside_the_grid_is_finite_and_only_the_base_term():
    layer = KANLinear(3, 2)
    x = torch.tensor([[-1e4, 50.0, 1e6]])
    y = layer(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, F.linear(F.silu(x), layer.base_weight))


def test_gradients_and_encoder_stack():
    enc = KANEncoder((7, 5, 3))
    x = torch.rand(4, 7) * 2 - 1
    y = enc(x)
    assert y.shape == (4, 3)
    y.sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert enc(torch.rand(2, 5, 7)).shape == (2, 5, 3)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(in_features=0, out_features=2), "in_features"),
        (dict(in_features=2, out_features=0), "out_features"),
        (dict(in_features=2, out_features=2, grid_size=0), "grid_size"),
        (dict(in_features=2, out_features=2, spline_order=-1), "spline_order"),
        (dict(in_features=2, out_features=2, grid_range=(1, -1)), "grid_range"),
    ],
)
def test_constructor_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        KANLinear(**kwargs)


def test_input_and_encoder_errors():
    with pytest.raises(ValueError, match="in_features"):
        KANLinear(3, 2)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="dims"):
        KANEncoder((7,))


def _uniform_cubic(u: torch.Tensor) -> torch.Tensor:
    """The uniform cubic B-spline on [0, 4), piece by piece (no recursion)."""
    out = torch.zeros_like(u)
    pieces = [
        (0, 1, u**3 / 6),
        (1, 2, (-3 * u**3 + 12 * u**2 - 12 * u + 4) / 6),
        (2, 3, (3 * u**3 - 24 * u**2 + 60 * u - 44) / 6),
        (3, 4, (4 - u) ** 3 / 6),
    ]
    for lo, hi, value in pieces:
        out = torch.where((u >= lo) & (u < hi), value, out)
    return out


def test_published_grid_minus_one_to_one_in_float64():
    # The published KAN: 5 intervals on (-1, 1), cubic, so knots -1 + 0.4 j for j = -3..8.
    torch.manual_seed(0)
    layer = KANLinear(3, 2, grid_size=5, spline_order=3, grid_range=(-1, 1)).double()
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = torch.tensor([[-1.5, -0.3, 0.0], [0.99, 1.7, -2.3], [0.2, -0.95, 0.61]], dtype=torch.float64)
    h = 0.4
    starts = -1 + h * torch.arange(-3, 5, dtype=torch.float64)  # left knot of each of the 8 bases
    bases = _uniform_cubic((x.unsqueeze(-1) - starts) / h)  # [B, in, 8]
    want = torch.nn.functional.silu(x) @ layer.base_weight.T + torch.einsum("bik,oik->bo", bases, layer.spline_weight)
    torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.knots.double(), -1 + h * torch.arange(-3, 9, dtype=torch.float64))

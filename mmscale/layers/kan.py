"""Kolmogorov-Arnold network layers (B-spline KAN) for small tabular inputs.

The paper encodes its 7 clinical features with a KAN instead of an MLP: each
input-output edge carries a learnable univariate function, written as a SiLU base
term plus a cubic B-spline on a fixed uniform grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmscale._validation import non_negative_int, positive_int

__all__ = ["KANLinear", "KANEncoder", "bspline_bases"]


def bspline_bases(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Evaluate every B-spline basis of a knot vector at ``x`` (Cox-de Boor recursion).

    Degree-0 bases are the half-open indicators ``[t_j, t_{j+1})``; each recursion step
    raises the degree by one. Outside ``[t_0, t_last)`` every basis is 0.

    Args:
        x (torch.Tensor): points of any shape ``[...]``.
        knots (torch.Tensor): strictly increasing knots of shape [K].
        order (int): spline degree (3 = cubic).

    Returns:
        torch.Tensor: bases of shape ``[..., K - 1 - order]``.

    Example:
        >>> t = torch.linspace(-2, 2, 9)
        >>> b = bspline_bases(torch.tensor([0.1]), t, 3)  # 9 knots, cubic: 5 bases
        >>> b.shape, round(b.sum().item(), 6)  # partition of unity inside the grid
        (torch.Size([1, 5]), 1.0)
    """
    x = x.unsqueeze(-1)
    t = knots.to(x.dtype)
    bases = ((x >= t[:-1]) & (x < t[1:])).to(x.dtype)  # [..., K - 1]
    for p in range(1, order + 1):
        left = (x - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)])
        right = (t[p + 1 :] - x) / (t[p + 1 :] - t[1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


class KANLinear(nn.Module):
    """A Kolmogorov-Arnold layer: ``y = W_b silu(x) + W_s B(x)``.

    ``B(x)`` holds, for every input feature, the ``grid_size + spline_order`` B-spline
    bases of degree ``spline_order`` on the uniform grid over ``grid_range`` with
    ``grid_size`` intervals, extended by ``spline_order`` knots on each side (so the
    bases sum to 1 on ``grid_range``). Outside the extended grid the spline term is 0
    and only the SiLU term remains, so out-of-range inputs still give finite outputs.

    Args:
        in_features (int): input width.
        out_features (int): output width.
        grid_size (int): number of grid intervals over ``grid_range``.
        spline_order (int): B-spline degree (3 = cubic).
        grid_range (tuple[float, float]): ``(low, high)`` of the grid, ``low < high``.

    Shapes:
        x: [..., in_features] -> [..., out_features]

    Raises:
        ValueError: a size is < 1, ``spline_order < 0`` or ``grid_range`` is not increasing.

    Example:
        >>> kan = KANLinear(7, 24)
        >>> kan(torch.randn(4, 7)).shape
        torch.Size([4, 24])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        in_features = positive_int(in_features, "in_features")
        out_features = positive_int(out_features, "out_features")
        grid_size = positive_int(grid_size, "grid_size")
        spline_order = non_negative_int(spline_order, "spline_order")
        if len(grid_range) != 2 or not float(grid_range[0]) < float(grid_range[1]):
            raise ValueError(f"grid_range must be (low, high) with low < high, got {grid_range!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.num_bases = grid_size + spline_order

        low, high = self.grid_range
        step = (high - low) / grid_size
        j = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float64)
        # The grid is fixed by the arguments, so it is not part of the state dict.
        self.register_buffer("knots", (low + j * step).to(torch.float32), persistent=False)

        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, self.num_bases))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform base weights; small spline weights so training starts near the base MLP."""
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        nn.init.normal_(self.spline_weight, std=0.1 / math.sqrt(self.in_features))

    def bases(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases of every input feature.

        Args:
            x (torch.Tensor): [..., in_features].

        Returns:
            torch.Tensor: [..., in_features, grid_size + spline_order].
        """
        return bspline_bases(x, self.knots, self.spline_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Args:
            x (torch.Tensor): [..., in_features].

        Returns:
            torch.Tensor: [..., out_features].

        Raises:
            ValueError: the last dimension is not ``in_features``.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, got {list(x.shape)}"
            )
        base = F.linear(F.silu(x), self.base_weight)
        bases = rearrange(self.bases(x), "... i k -> ... (i k)")
        spline = F.linear(bases, rearrange(self.spline_weight, "o i k -> o (i k)"))
        return base + spline

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}, "
            f"grid_range={self.grid_range}"
        )


class KANEncoder(nn.Module):
    """A stack of :class:`KANLinear` layers (no extra activations: KAN edges are nonlinear).

    Missing inputs are the caller's business (impute or mask before calling).

    Args:
        dims (Sequence[int]): widths ``(in, hidden..., out)``, at least two entries.
        grid_size (int): grid intervals per layer.
        spline_order (int): B-spline degree.
        grid_range (tuple[float, float]): grid span of every layer.

    Shapes:
        x: [..., dims[0]] -> [..., dims[-1]]

    Raises:
        ValueError: fewer than two widths, or invalid layer arguments.

    Example:
        >>> enc = KANEncoder((7, 16, 24))
        >>> enc(torch.randn(2, 7)).shape
        torch.Size([2, 24])
    """

    def __init__(
        self,
        dims: Sequence[int],
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        dims = tuple(dims)
        if len(dims) < 2:
            raise ValueError(f"dims must list at least (in, out), got {dims!r}")
        self.dims = dims
        self.layers = nn.ModuleList(
            KANLinear(a, b, grid_size=grid_size, spline_order=spline_order, grid_range=grid_range)
            for a, b in zip(dims[:-1], dims[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every layer in turn.

        Args:
            x (torch.Tensor): [..., dims[0]].

        Returns:
            torch.Tensor: [..., dims[-1]].

        Raises:
            ValueError: the last dimension is not ``dims[0]``.
        """
        for layer in self.layers:
            x = layer(x)
        return x

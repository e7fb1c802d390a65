"""Pooling helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["adaptive_avg_pool3d"]


def _pool_matrix(length: int, bins: int, ref: torch.Tensor) -> torch.Tensor:
    """[bins, length] averaging matrix with adaptive-pooling bin edges
    (``floor(i * L / n)`` to ``ceil((i + 1) * L / n)``)."""
    i = torch.arange(bins, device=ref.device)
    start = (i * length) // bins
    end = ((i + 1) * length + bins - 1) // bins  # ceil division
    pos = torch.arange(length, device=ref.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return inside.to(ref.dtype) / (end - start)[:, None].to(ref.dtype)


def adaptive_avg_pool3d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Same result as :func:`torch.nn.functional.adaptive_avg_pool3d`, as three small matmuls.

    Written with matrix products because ONNX has no adaptive pooling for sizes that
    do not divide the input; the averaging matrices depend only on the (static) shapes.

    Args:
        x (torch.Tensor): [B, C, D, H, W].
        size (Sequence[int]): output grid ``(d, h, w)``.

    Returns:
        torch.Tensor: [B, C, d, h, w].

    Example:
        >>> x = torch.randn(1, 2, 5, 7, 3)
        >>> torch.allclose(adaptive_avg_pool3d(x, (2, 4, 4)),
        ...                torch.nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)), atol=1e-6)
        True
    """
    d, h, w = (int(v) for v in size)
    x = torch.einsum("bcdhw,kw->bcdhk", x, _pool_matrix(x.shape[4], w, x))
    x = torch.einsum("bcdhw,jh->bcdjw", x, _pool_matrix(x.shape[3], h, x))
    return torch.einsum("bcdhw,id->bcihw", x, _pool_matrix(x.shape[2], d, x))

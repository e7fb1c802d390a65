"""Double backward for the CPU autograd functions: differentiate a plain recomputation.

The CPU autograd functions compute their gradients with ops that are not themselves
differentiable (``out=`` products, in-place updates of scratch buffers). When a
backward runs with ``create_graph=True`` (a gradient penalty, a Hessian-vector
product), they compute it instead through this helper: the convolution is computed
again with ``F.conv3d`` and differentiated with ``create_graph=True``, so the result
carries the graph that second-order gradients need.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv3d_grads_with_graph"]


def conv3d_grads_with_graph(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grad: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    needs: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``F.conv3d(x, weight, bias, stride, padding, 1, groups)`` as a differentiable graph.

    Args:
        x (torch.Tensor): the convolution's input [B, C_in, D, H, W] (as saved).
        weight (torch.Tensor): its filters [C_out, C_in / groups, kd, kh, kw].
        bias (torch.Tensor | None): its bias [C_out].
        grad (torch.Tensor): gradient of its output [B, C_out, D', H', W'].
        stride (Sequence[int]): stride per axis.
        padding (Sequence[int]): zero padding per axis.
        groups (int): channel groups.
        needs (Sequence[bool]): whether the gradient of x, weight and bias is wanted.

    Returns:
        tuple: (grad_x, grad_weight, grad_bias), None where not wanted.

    Example:
        >>> x = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
        >>> w = torch.randn(3, 2, 3, 3, 3, requires_grad=True)
        >>> gx, gw, _ = conv3d_grads_with_graph(x, w, None, torch.ones(1, 3, 3, 4, 4), (1, 1, 1), (1, 1, 1), 1,
        ...                                     (True, True, False))
        >>> gx.requires_grad and gw.requires_grad
        True
    """
    tensors = (x, weight, bias)
    wanted = [t for t, n in zip(tensors, needs, strict=True) if n and t is not None]
    with torch.enable_grad():
        y = F.conv3d(x, weight, bias, tuple(stride), tuple(padding), 1, groups)
        grads = iter(torch.autograd.grad(y, wanted, grad, create_graph=True))
    return tuple(next(grads) if n and t is not None else None for t, n in zip(tensors, needs, strict=True))

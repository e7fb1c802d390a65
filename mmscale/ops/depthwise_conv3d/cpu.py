"""Depthwise 3D convolutions of one input with a faster backward on CPU.

ATen's depthwise ``conv3d`` backward on CPU is the E3D-MSCA block's bottleneck: its
weight gradient rereads the input once per tap, and for contiguous input even the
forward uses a slow generic kernel. The autograd function here keeps the forward on
oneDNN's channels_last_3d path and rewrites both gradients as other convolutions
that run well:

* input gradient (stride 1): a forward depthwise convolution of the output gradient
  with the spatially flipped filters;
* weight gradient, stride 1 with an in-plane window of at most ``3 x 3``: one 2D
  depthwise weight gradient per depth tap, on the depth planes that tap pairs up
  (planes are 2D batch items of the channels_last_3d tensors, so nothing is copied),
  which oneDNN runs with its vectorised 2D depthwise kernel (measured about 3x
  faster than the grouped convolution below on an AVX2 CPU for ``3 x 3 x 3``);
* weight gradient, stride 1 with a window at least 5 wide: per (sample, channel),
  row by row, as batched matrix products (see :func:`_weight_grad_by_rows`; measured
  about 1.4x faster than the grouped convolution below on an AVX2 CPU for
  ``5 x 5 x 5``, and closer to the exact result);
* weight gradient otherwise, and for planes of fewer than 256 positions (where the
  two paths above spend their time on tiny products): for every (sample, channel) pair the gradient is the
  cross-correlation of the (zero-padded) input with the output gradient, i.e. one
  grouped convolution whose "filters" are the output gradients
  (``groups = B * C``) and whose output is the tiny ``kd x kh x kw`` window; the
  sum over the batch follows.

Several filters applied to the same input (the multi-scale branches) share one
function, so the input is saved once, converted to the layout of the weight-gradient
convolution once, and the input gradients of all branches are summed inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from mmscale.ops._double_backward import conv3d_grads_with_graph

_CL = torch.channels_last_3d


# below this many positions per plane (H * W) the grouped convolution is the fastest
# weight gradient (AMD EPYC, AVX2, CPU time at [2, 2048, 2, 12, 12]: 5x5x5 26 ms against
# 104 ms by rows, 3x3x3 15 ms against 23 ms by planes; at 24 x 24 planes and rows win)
_MIN_PLANE = 256


def _uses_planes(kernel_size: tuple[int, int, int], stride: tuple[int, int, int], plane: int | None = None) -> bool:
    """Whether the weight gradient goes through 2D depthwise kernels, one per depth tap."""
    if plane is not None and plane < _MIN_PLANE:
        return False
    return tuple(stride) == (1, 1, 1) and kernel_size[1] <= 3 and kernel_size[2] <= 3 and kernel_size != (1, 1, 1)


def _planes(t: torch.Tensor) -> torch.Tensor:
    """[b, C, n, H, W] -> [b * n, C, H, W]: a view when ``t`` is channels_last_3d."""
    return rearrange(t, "b c n h w -> (b n) c h w")


def _weight_grad_by_planes(
    x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int, int], padding: tuple[int, int, int]
) -> torch.Tensor:
    """Stride-1 depthwise weight gradient as one 2D depthwise weight gradient per depth tap.

    Output plane ``d`` pairs with input plane ``d + i - pd`` for depth tap ``i``;
    taking those planes of every sample as 2D batch items gives the ``kh x kw``
    slice of the gradient at tap ``i``. Both tensors should be channels_last_3d.
    """
    b, c, depth = x.shape[:3]
    kd, kh, kw = kernel_size
    pd, ph, pw = padding
    d_out = grad_out.shape[2]
    w2d = x.new_empty(c, 1, kh, kw)  # only its shape and dtype are read
    slices = []
    for i in range(kd):
        lo, hi = max(0, pd - i), min(d_out, depth + pd - i)  # output planes with an input plane at tap i
        if lo >= hi:
            slices.append(x.new_zeros(c, 1, kh, kw))
            continue
        xs = x[:, :, lo + i - pd : hi + i - pd]
        gs = grad_out[:, :, lo:hi]
        if b > 1 and hi - lo != depth:
            # the planes of different samples are not one strided run: one call per sample
            parts = [
                torch.ops.aten.convolution_backward(
                    _planes(gs[j : j + 1]), _planes(xs[j : j + 1]), w2d, None, (1, 1), (ph, pw), (1, 1), False,
                    (0, 0), c, (False, True, False),
                )[1]
                for j in range(b)
            ]
            slices.append(torch.stack(parts).sum(0))
        else:
            slices.append(
                torch.ops.aten.convolution_backward(
                    _planes(gs), _planes(xs), w2d, None, (1, 1), (ph, pw), (1, 1), False, (0, 0), c,
                    (False, True, False),
                )[1]
            )
    return torch.stack(slices, dim=2)


# output columns per block of the row-wise weight gradient: each matrix product is
# [_ROW_BLOCK, rows] x [rows, _ROW_BLOCK + kw - 1], which suits AVX2 GEMM tiles
_ROW_BLOCK = 12


def _uses_rows(kernel_size: tuple[int, int, int], stride: tuple[int, int, int], plane: int | None = None) -> bool:
    """Whether the weight gradient goes through the row-wise matrix products."""
    if plane is not None and plane < _MIN_PLANE:
        return False
    return tuple(stride) == (1, 1, 1) and kernel_size[2] >= 5 and not _uses_planes(kernel_size, stride)


def _zero_outside(t: torch.Tensor, h0: int, nh: int, w0: int, nw: int) -> None:
    """Zero ``t[..., :, :]`` outside rows ``h0 : h0 + nh`` and columns ``w0 : w0 + nw``."""
    t[..., :h0, :] = 0
    t[..., h0 + nh :, :] = 0
    t[..., h0 : h0 + nh, :w0] = 0
    t[..., h0 : h0 + nh, w0 + nw :] = 0


def _weight_grad_by_rows(
    x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int, int], padding: tuple[int, int, int]
) -> torch.Tensor:
    """Stride-1 depthwise weight gradient as batched matrix products over rows.

    Per (sample, channel), the output gradient is cut into blocks of ``v`` columns
    (one matrix row per (plane, row, block)) and the zero-padded input into blocks of
    ``v + kw - 1`` columns starting at the same places. For depth and height taps
    ``(i, j)`` the input rows are the output rows shifted by a constant number of
    rows (the height padding is part of the row count, and its rows of the output
    gradient are zero), so one ``bmm`` over all (sample, channel) pairs gives
    ``M[q, q'] = sum over rows of g[row, q] * x[row + shift, q']``, whose diagonals
    ``q' = q + k`` are the gradients of taps ``(i, j, k)``.
    """
    b, c, depth, height, width = x.shape
    kd, kh, kw = kernel_size
    pd, ph, pw = padding
    d_out, h_out, w_out = grad_out.shape[2:]
    v = _ROW_BLOCK
    nblk = -(-w_out // v)
    wb = v + kw - 1
    hp = height + 2 * ph  # == h_out + kh - 1 at stride 1
    # [B*C, D * Hp * nblk, wb]: the input padded in H and W, cut into overlapping column blocks
    # only the borders are zeroed: the interior copy is the first touch of its pages
    xp = x.new_empty(b, c, depth, hp, nblk * v + kw - 1)
    _zero_outside(xp, ph, height, pw, width)
    xp[:, :, :, ph : ph + height, pw : pw + width] = x
    xb = xp.unfold(4, wb, v).reshape(b * c, depth * hp * nblk, wb)
    del xp
    # [B*C, D' * Hp * nblk, v]: the output gradient with zero rows and columns to the same grid
    gp = grad_out.new_empty(b, c, d_out, hp, nblk * v)
    _zero_outside(gp, 0, h_out, 0, w_out)
    gp[:, :, :, :h_out, :w_out] = grad_out
    gb = gp.view(b * c, d_out * hp * nblk, v)
    out = x.new_zeros(b * c, kd, kh, kw)
    for i in range(kd):
        lo, hi = max(0, pd - i), min(d_out, depth + pd - i)  # output planes with an input plane at tap i
        if lo >= hi:
            continue
        rows = ((hi - lo - 1) * hp + h_out) * nblk
        g_t = gb[:, lo * hp * nblk : lo * hp * nblk + rows].transpose(1, 2)
        for j in range(kh):
            start = ((lo + i - pd) * hp + j) * nblk
            m = torch.bmm(g_t, xb[:, start : start + rows])  # [B*C, v, wb]
            out[:, i, j] = m.as_strided((b * c, v, kw), (v * wb, wb + 1, 1)).sum(1)
    return out.view(b, c, kd, kh, kw).sum(0).unsqueeze(1)


def depthwise_weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_size: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> torch.Tensor:
    """Weight gradient of a depthwise 3D convolution.

    With stride 1 and an in-plane window of at most ``3 x 3`` it is a sum of 2D
    depthwise weight gradients, one per depth tap (channels_last_3d input is
    cheapest); with stride 1 and a window at least 5 wide, batched matrix products
    over rows; otherwise, and for planes (H * W) of fewer than 256 positions, a
    grouped convolution in NCDHW (contiguous input is cheapest).

    Args:
        x (torch.Tensor): the convolution's input, [B, C, D, H, W].
        grad_out (torch.Tensor): gradient of its output, [B, C, D', H', W'].
        kernel_size (tuple[int, int, int]): (kd, kh, kw).
        stride (tuple[int, int, int]): the convolution's stride.
        padding (tuple[int, int, int]): the convolution's zero padding.

    Returns:
        torch.Tensor: gradient of the filters, [C, 1, kd, kh, kw].

    Example:
        >>> g = depthwise_weight_grad(torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5),
        ...                           (3, 3, 3), (1, 1, 1), (1, 1, 1))
        >>> tuple(g.shape)
        (3, 1, 3, 3, 3)
    """
    b, c = x.shape[:2]
    kd, kh, kw = kernel_size
    if kernel_size == (1, 1, 1) and stride == (1, 1, 1):
        return (x * grad_out).sum((0, 2, 3, 4)).view(c, 1, 1, 1, 1)
    plane = x.shape[3] * x.shape[4]
    if _uses_planes(kernel_size, stride, plane):
        return _weight_grad_by_planes(
            x.contiguous(memory_format=_CL), grad_out.contiguous(memory_format=_CL), kernel_size, padding
        )
    if _uses_rows(kernel_size, stride, plane):
        return _weight_grad_by_rows(x, grad_out, kernel_size, padding)
    # [1, B*C, D, H, W]: every (sample, channel) pair is its own group
    x_groups = rearrange(x.contiguous(), "b c d h w -> 1 (b c) d h w")
    # [B*C, 1, D', H', W']: the output gradient plays the filter, dilated by the stride
    g = rearrange(grad_out.contiguous(), "b c d h w -> (b c) 1 d h w")
    corr = F.conv3d(x_groups, g, None, 1, padding, stride, b * c)
    # the window can overhang by less than one stride when (D + 2p - k) % s != 0
    corr = corr[..., :kd, :kh, :kw]
    return rearrange(corr, "1 (b c) i j k -> b c i j k", b=b).sum(0).unsqueeze(1)


def _forward_one(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    if w.shape[2:] == (1, 1, 1) and stride == (1, 1, 1):
        return x * w.view(1, -1, 1, 1, 1)
    return F.conv3d(x, w, None, stride, padding, 1, x.shape[1])


def _input_grad_one(x_shape, w: torch.Tensor, g: torch.Tensor, stride, padding) -> torch.Tensor:
    if stride == (1, 1, 1):
        if w.shape[2:] == (1, 1, 1):
            return g * w.view(1, -1, 1, 1, 1)
        pad_t = tuple(k - 1 - p for k, p in zip(w.shape[2:], padding, strict=True))
        if min(pad_t) >= 0:
            return F.conv3d(g, w.flip((2, 3, 4)), None, 1, pad_t, 1, g.shape[1])
    return torch.nn.grad.conv3d_input(x_shape, w, g, stride, padding, 1, g.shape[1])


class MultiDepthwiseConv3dFunction(torch.autograd.Function):
    """``[conv3d(x, w_i, groups=C) for w_i in weights]`` with the CPU-friendly backward.

    Forward arguments: ``x`` [B, C, D, H, W] (channels_last_3d), ``stride``, a tuple of
    paddings (one per filter), then the filters ``[C, 1, kd, kh, kw]``.
    """

    @staticmethod
    def forward(ctx, x, stride, paddings, *weights):
        ctx.save_for_backward(x, *weights)
        ctx.stride, ctx.paddings = stride, paddings
        return tuple(_forward_one(x, w, stride, p) for w, p in zip(weights, paddings, strict=True))

    @staticmethod
    def backward(ctx, *grads):
        x, *weights = ctx.saved_tensors
        stride, paddings = ctx.stride, ctx.paddings
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation per filter
            grad_x, grad_ws = None, []
            for i, (g, w, p) in enumerate(zip(grads, weights, paddings, strict=True)):
                if g is None:
                    grad_ws.append(None)
                    continue
                gx, gw, _ = conv3d_grads_with_graph(x, w, None, g, stride, p, x.shape[1],
                                                    (ctx.needs_input_grad[0], ctx.needs_input_grad[3 + i], False))
                grad_x = gx if grad_x is None or gx is None else grad_x + gx
                grad_ws.append(gw)
            return (grad_x, None, None, *grad_ws)
        grad_x = None
        grad_ws: list[torch.Tensor | None] = [None] * len(weights)
        x_nc = None  # the input in NCDHW, converted once for every weight gradient
        for i, (g, w, p) in enumerate(zip(grads, weights, paddings, strict=True)):
            if g is None:
                continue
            g = g.contiguous(memory_format=_CL)
            if ctx.needs_input_grad[0]:
                gx = _input_grad_one(x.shape, w, g, stride, p)
                grad_x = gx if grad_x is None else grad_x.add_(gx)
            if ctx.needs_input_grad[3 + i]:
                k = tuple(w.shape[2:])
                plane = x.shape[3] * x.shape[4]
                nc = k != (1, 1, 1) and not _uses_planes(k, stride, plane) and not _uses_rows(k, stride, plane)
                if x_nc is None and nc:
                    x_nc = x.contiguous()
                src = x_nc if nc else x
                grad_ws[i] = depthwise_weight_grad(src, g, tuple(w.shape[2:]), stride, p)
        return (grad_x, None, None, *grad_ws)


def multi_depthwise_conv3d_cpu(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    stride: tuple[int, int, int] = (1, 1, 1),
    paddings: Sequence[tuple[int, int, int]] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Several depthwise 3D convolutions of one input, with the fast CPU backward.

    The CPU path of :func:`mmscale.ops.depthwise_conv3d.multi_depthwise_conv3d`: the
    same arguments and outputs (one [B, C, D', H', W'] per filter [C, 1, kd, kh, kw]);
    the input [B, C, D, H, W] is converted to channels_last_3d.

    Example:
        >>> ys = multi_depthwise_conv3d_cpu(torch.randn(1, 4, 3, 5, 5),
        ...                                 [torch.randn(4, 1, 1, 1, 1), torch.randn(4, 1, 3, 3, 3)])
        >>> [tuple(y.shape) for y in ys]
        [(1, 4, 3, 5, 5), (1, 4, 3, 5, 5)]
    """
    if paddings is None:
        paddings = [tuple(k // 2 for k in w.shape[2:]) for w in weights]
    return MultiDepthwiseConv3dFunction.apply(
        x.contiguous(memory_format=_CL), tuple(stride), tuple(map(tuple, paddings)), *weights
    )

"""Grouped 3D convolution with a faster backward on CPU.

ATen's CPU backward of the backbone's grouped ``3 x 3 x 3`` convolution (oneDNN,
32 groups of 4 to 16 channels) costs two to four forwards when the machine is quiet,
and its weight gradient is fragile: with both cores of a 2-core AMD EPYC (AVX2)
shared with another process it was measured at 6 s instead of 0.12 s for
``[2, 128, 6, 48, 48]``. The autograd function here keeps ATen's forward and
computes the gradients with kernels that run well on such a CPU:

* weight gradient: per (sample, input depth plane), one in-plane im2col (``kh * kw``
  shifted copies of the plane, written into a buffer that is reused; built for a
  slice of the groups at a time, at most :data:`COLS_BUDGET` elements, so the
  backward's peak memory stays within 4 MiB of ATen's at the backbone's shapes) and
  one ``bmm`` over the groups of the slice,
  ``[G, n * C_out/G, H'W'] x [G, H'W', C_in/G * kh * kw]``, where the ``n`` output
  planes that this input plane meets through the depth taps are consecutive and
  give the ``n`` depth taps at once (see :func:`grouped_weight_grad`). Measured
  1.4x to 3x faster than ATen's weight gradient at the backbone's shapes on an AMD
  EPYC (AVX2), 2 threads;
* input gradient at stride 1 of a large input (at least :data:`LARGE_INPUT`
  positions per channel): a forward grouped convolution of the output gradient with
  the spatially flipped filters (in/out channels swapped within each group), in
  channels_last_3d, measured about 1.8x faster than ATen at ``[2, 128, 6, 48, 48]``.
  Smaller inputs and strided convolutions keep ATen's input gradient: it was as
  fast or faster there (2x faster at ``[2, 512, 2, 12, 12]``; for stride 2 a
  polyphase sum of stride-1 convolutions, and ATen in channels_last_3d, were no
  faster than ATen in NCDHW).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmscale.ops._double_backward import conv3d_grads_with_graph

__all__ = ["COLS_BUDGET", "LARGE_INPUT", "GroupedConv3dFunction", "grouped_conv3d_cpu", "grouped_input_grad", "grouped_weight_grad"]

_CL = torch.channels_last_3d

LARGE_INPUT = 8192
"""Input positions per channel (``D * H * W``) from which the stride-1 input gradient
leaves ATen for the flipped-filter convolution (smaller ones measured as fast or
faster in ATen)."""


COLS_BUDGET = 1 << 20
"""Elements of the unfolded input plane that the weight gradient builds at once (4 MiB
in float32): the plane is unfolded for as many groups as fit, so the buffer stays small
next to the activations (unfolding all groups of a ``[256, 48, 48]`` plane at once took
21 MB)."""


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(a) for a in v)


def _tap_ranges(n_out: int, n_in: int, k: int, s: int, p: int) -> list[tuple[int, int, int]]:
    """Per tap ``i``: ``(lo, hi, first)``, the outputs ``o`` in ``[lo, hi)`` whose input
    ``o * s + i - p`` lies inside ``[0, n_in)``, and the input index of ``o = lo``."""
    out = []
    for i in range(k):
        lo = max(0, -(-(p - i) // s))
        hi = max(lo, min(n_out, (n_in - 1 + p - i) // s + 1))
        out.append((lo, hi, lo * s + i - p))
    return out


def grouped_weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_size: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    groups: int,
) -> torch.Tensor:
    """Weight gradient of a grouped 3D convolution as batched matrix products.

    For input depth plane ``d`` the depth taps ``i`` with ``(d + pd - i) % sd == 0``
    pair it with consecutive output planes ``od = (d + pd - i) / sd``. The plane is
    unfolded in-plane once (``cols[c, j, k, oh, ow] = x[c, d, oh*sh + j - ph,
    ow*sw + k - pw]``, zero outside; the zero borders of the reused buffer are never
    overwritten), and the output gradient, laid out as ``[B, G, D', C_out/G, H'W']``,
    gives the rows ``(od, o)`` of those planes as one matrix per group, so one
    ``bmm`` over the groups yields the gradients of all those depth taps.

    Args:
        x (torch.Tensor): the convolution's input, [B, C_in, D, H, W].
        grad_out (torch.Tensor): gradient of its output, [B, C_out, D', H', W'].
        kernel_size (tuple[int, int, int]): (kd, kh, kw).
        stride (tuple[int, int, int]): the convolution's stride.
        padding (tuple[int, int, int]): the convolution's zero padding.
        groups (int): number of channel groups.

    Returns:
        torch.Tensor: gradient of the filters, [C_out, C_in / groups, kd, kh, kw].

    Example:
        >>> g = grouped_weight_grad(torch.randn(2, 8, 4, 5, 5), torch.randn(2, 6, 4, 5, 5),
        ...                         (3, 3, 3), (1, 1, 1), (1, 1, 1), 2)
        >>> tuple(g.shape)
        (6, 4, 3, 3, 3)
    """
    b_size, c_in, depth, height, width = x.shape
    c_out, d_out, h_out, w_out = grad_out.shape[1:]
    kd, kh, kw = kernel_size
    sd, sh, sw = stride
    pd, ph, pw = padding
    cg, co = c_in // groups, c_out // groups
    n_pos = h_out * w_out
    n_col = cg * kh * kw
    # [B, G, D', C_out/G, H'W']: rows (od, o) of consecutive output planes are one matrix per group
    g2 = grad_out.reshape(b_size, groups, co, d_out, n_pos).transpose(2, 3).contiguous()
    # the unfolded plane is built for a slice of the groups at a time, at most COLS_BUDGET elements
    chunk = max(1, min(groups, COLS_BUDGET // (n_col * n_pos)))
    cols = x.new_zeros(chunk * cg, kh, kw, h_out, w_out)
    hr = _tap_ranges(h_out, height, kh, sh, ph)
    wr = _tap_ranges(w_out, width, kw, sw, pw)
    # depth taps by residue r = i % sd; acc[r][:, j] holds tap i = r + sd * (n_r - 1 - j),
    # so that increasing j meets increasing output planes
    accs = [x.new_zeros(groups, len(range(r, kd, sd)), co, n_col) for r in range(min(sd, kd))]
    for b in range(b_size):
        for d in range(depth):
            r = (d + pd) % sd
            if r >= kd:
                continue
            n_r = accs[r].shape[1]
            top = (d + pd - r) // sd  # output plane of tap i = r
            base = top - (n_r - 1)  # output plane of j = 0
            lo, hi = max(0, base), min(d_out, top + 1)
            if lo >= hi:
                continue
            for g0 in range(0, groups, chunk):
                g1 = min(groups, g0 + chunk)
                plane = x[b, g0 * cg : g1 * cg, d]
                part = cols[: (g1 - g0) * cg]
                for j, (hlo, hhi, h0) in enumerate(hr):
                    for k, (wlo, whi, w0) in enumerate(wr):
                        if hlo < hhi and wlo < whi:
                            part[:, j, k, hlo:hhi, wlo:whi] = plane[
                                :, h0 : h0 + (hhi - hlo - 1) * sh + 1 : sh, w0 : w0 + (whi - wlo - 1) * sw + 1 : sw
                            ]
                rows = g2[b, g0:g1, lo:hi].reshape(g1 - g0, (hi - lo) * co, n_pos)
                acc = accs[r][g0:g1, lo - base : hi - base].view(g1 - g0, (hi - lo) * co, n_col)
                acc.add_(torch.bmm(rows, part.view(g1 - g0, n_col, n_pos).transpose(1, 2)))
    out = x.new_empty(groups, kd, co, n_col)
    for r, acc in enumerate(accs):
        n_r = acc.shape[1]
        for j in range(n_r):
            out[:, r + sd * (n_r - 1 - j)] = acc[:, j]
    # [G, kd, C_out/G, C_in/G, kh, kw] -> [C_out, C_in/G, kd, kh, kw]
    return out.view(groups, kd, co, cg, kh, kw).permute(0, 2, 3, 1, 4, 5).reshape(c_out, cg, kd, kh, kw)


def _transposed_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[C_out, C_in/G, k...] -> [C_in, C_out/G, k...]: in/out channels swapped within each group."""
    c_out, cg = weight.shape[:2]
    k = weight.shape[2:]
    return weight.view(groups, c_out // groups, cg, *k).transpose(1, 2).reshape(groups * cg, c_out // groups, *k)


def grouped_input_grad(
    x_shape: torch.Size,
    weight: torch.Tensor,
    grad_out: torch.Tensor,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    groups: int,
) -> torch.Tensor:
    """Input gradient of a grouped 3D convolution.

    At stride 1, for inputs with at least :data:`LARGE_INPUT` positions per channel
    and ``padding <= k - 1``: a channels_last_3d forward convolution of ``grad_out``
    with the flipped, group-transposed filters. Otherwise ATen's
    ``convolution_backward``.

    Args:
        x_shape (torch.Size): shape of the convolution's input, [B, C_in, D, H, W].
        weight (torch.Tensor): filters [C_out, C_in / groups, kd, kh, kw].
        grad_out (torch.Tensor): gradient of the output, [B, C_out, D', H', W'].
        stride (tuple[int, int, int]): the convolution's stride.
        padding (tuple[int, int, int]): the convolution's zero padding.
        groups (int): number of channel groups.

    Returns:
        torch.Tensor: gradient of the input, [B, C_in, D, H, W] (contiguous).

    Example:
        >>> gx = grouped_input_grad(torch.Size([1, 8, 4, 5, 5]), torch.randn(6, 4, 3, 3, 3),
        ...                         torch.randn(1, 6, 4, 5, 5), (1, 1, 1), (1, 1, 1), 2)
        >>> tuple(gx.shape)
        (1, 8, 4, 5, 5)
    """
    k = weight.shape[2:]
    if stride == (1, 1, 1) and x_shape[2] * x_shape[3] * x_shape[4] >= LARGE_INPUT:
        pad_t = tuple(kk - 1 - p for kk, p in zip(k, padding, strict=True))
        if min(pad_t) >= 0:
            wt = _transposed_filters(weight, groups).flip((2, 3, 4)).contiguous(memory_format=_CL)
            gx = F.conv3d(grad_out.contiguous(memory_format=_CL), wt, None, 1, pad_t, 1, groups)
            return gx.contiguous()
    empty = grad_out.new_empty(x_shape)  # only its shape, dtype and layout are read
    return torch.ops.aten.convolution_backward(
        grad_out, empty, weight, None, stride, padding, (1, 1, 1), False, (0, 0, 0), groups, (True, False, False)
    )[0]


class GroupedConv3dFunction(torch.autograd.Function):
    """``F.conv3d(x, weight, None, stride, padding, 1, groups)`` with the CPU-friendly backward.

    Forward arguments: ``x`` [B, C_in, D, H, W], ``weight`` [C_out, C_in/G, kd, kh, kw],
    ``stride``, ``padding`` (3-tuples) and ``groups``.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.groups = stride, padding, groups
        return F.conv3d(x, weight, None, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable recomputation
            gx, gw, _ = conv3d_grads_with_graph(x, weight, None, grad_out, ctx.stride, ctx.padding, ctx.groups,
                                                (*ctx.needs_input_grad[:2], False))
            return gx, gw, None, None, None
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grouped_input_grad(x.shape, weight, grad_out, ctx.stride, ctx.padding, ctx.groups)
        if ctx.needs_input_grad[1]:
            grad_w = grouped_weight_grad(
                x, grad_out, tuple(weight.shape[2:]), ctx.stride, ctx.padding, ctx.groups
            )
        return grad_x, grad_w, None, None, None


def grouped_conv3d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Grouped 3D convolution (no bias) with the fast CPU backward.

    The CPU path of :func:`mmscale.ops.grouped_conv3d.grouped_conv3d`: the same
    arguments and output (input [B, C_in, D, H, W], filters
    [C_out, C_in / groups, kd, kh, kw], output [B, C_out, D', H', W']).

    Example:
        >>> y = grouped_conv3d_cpu(torch.randn(1, 8, 3, 5, 5), torch.randn(8, 4, 3, 3, 3), 1, 1, 2)
        >>> tuple(y.shape)
        (1, 8, 3, 5, 5)
    """
    return GroupedConv3dFunction.apply(x, weight, _triple(stride), _triple(padding), int(groups))

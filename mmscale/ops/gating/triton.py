"""Triton kernels for the pooling and gating passes of channel and spatial attention.

Three ops, each one pass over the volume forward and one backward:

* ``channel_pool``: average and maximum over D, H, W of every (sample, channel);
* ``spatial_pool``: mean and maximum over C of ``x * g_c`` at every voxel;
* ``apply_gates``: ``x * g_c * g_s``.

Layout: kernels take every tensor's strides explicitly (``stride_xb``, ``stride_xc``,
``stride_xd``, ``stride_xh``, ``stride_xw``), so any memory format is read in place;
volume-shaped outputs follow ``x``'s memory format (channels_last_3d for mmscale's
layers, where a ``[BLOCK_S, BLOCK_C]`` tile is contiguous along C).

Numerics: loads are widened to float32 and all sums are float32; outputs are cast to
``torch.result_type`` of the inputs (as the PyTorch reference would promote).
Reductions are deterministic: per-program partials written to a buffer, then one
``torch.sum`` / ``torch.amax``; no atomics.

Autograd: one entry per op for eager and compiled code alike, the ``torch.library``
custom ops ``mmscale::channel_pool``, ``mmscale::spatial_pool``,
``mmscale::apply_gates`` (and their ``_bwd`` ops) with registered backwards, so
graphs need not break around them.

Maximum gradients follow ``torch.amax``: the gradient is split evenly between all
elements equal to the maximum (ties). The forward counts the ties while it reduces,
so the backward needs no extra pass. Equality is tested on the float32 value the
kernel computed (for ``spatial_pool``, ``x * g_c`` in float32), which is exactly
``torch.amax``'s rule in float32 and may differ from it on ties created only by
rounding in half precision.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmscale.ops import _triton_utils as tu
from mmscale.ops._triton_utils import (
    _offset_4d,
    _offset_5d,
    _split_spatial,
    _volume_tile,
    _voxel_tile,
    cdiv,
    pick_block,
)

__all__ = [
    "apply_gates_triton",
    "channel_pool_triton",
    "spatial_pool_triton",
]


# --------------------------------------------------------------------------- kernels
@triton.jit
def _nanmax(b_v, AXIS: tl.constexpr):
    """``tl.max`` along AXIS that returns NaN when any element is NaN (as ``torch.amax``)."""
    b_nan = tl.sum((b_v != b_v).to(tl.int32), axis=AXIS) > 0
    return tl.where(b_nan, float("nan"), tl.max(b_v, axis=AXIS))


@triton.jit
def _channel_pool_fwd_kernel(
    x_ptr, psum_ptr, pmax_ptr, pcnt_ptr,
    C, D, H, W, S, SPLITS,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_b, i_c, i_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < C
    b_sum = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_max = tl.full([BLOCK_S, BLOCK_C], float("-inf"), dtype=tl.float32)
    b_cnt = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.int32)
    for s0 in range(i_p * BLOCK_S, S, SPLITS * BLOCK_S):
        o_s = s0 + tl.arange(0, BLOCK_S)
        m_s = o_s < S
        i_d, i_h, i_w = _split_spatial(o_s, H, W)
        o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                         stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
        m_x = m_s[:, None] & m_c[None, :]
        # [BLOCK_S, BLOCK_C]
        b_x = tl.load(x_ptr + o_x, mask=m_x, other=float("-inf")).to(tl.float32)
        b_sum += tl.where(m_x, b_x, 0.0)
        b_new = tl.maximum(b_max, b_x, propagate_nan=tl.PropagateNan.ALL)
        b_cnt = tl.where(b_max == b_new, b_cnt, 0) + tl.where(m_x & (b_x == b_new), 1, 0)
        b_max = b_new
    b_psum = tl.sum(b_sum, axis=0)
    b_pmax = _nanmax(b_max, 0)
    b_pcnt = tl.sum(tl.where(b_max == b_pmax[None, :], b_cnt, 0), axis=0)
    o_p = (i_b.to(tl.int64) * SPLITS + i_p) * C + o_c
    tl.store(psum_ptr + o_p, b_psum, mask=m_c)
    tl.store(pmax_ptr + o_p, b_pmax, mask=m_c)
    tl.store(pcnt_ptr + o_p, b_pcnt, mask=m_c)


@triton.jit
def _channel_pool_bwd_kernel(
    x_ptr, mx_ptr, cnt_ptr, davg_ptr, dmax_ptr, dx_ptr,
    C, D, H, W, S,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_gb, stride_gc, stride_mb, stride_mc,
    stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w = _volume_tile(S, C, H, W, BLOCK_S, BLOCK_C)
    m_x = m_s[:, None] & m_c[None, :]
    o_bc = i_b.to(tl.int64) * C + o_c
    # [BLOCK_C]
    b_mx = tl.load(mx_ptr + o_bc, mask=m_c, other=0.0)
    b_cnt = tl.load(cnt_ptr + o_bc, mask=m_c, other=1).to(tl.float32)
    b_davg = tl.load(davg_ptr + i_b.to(tl.int64) * stride_gb + o_c * stride_gc, mask=m_c, other=0.0).to(tl.float32)
    b_dmax = tl.load(dmax_ptr + i_b.to(tl.int64) * stride_mb + o_c * stride_mc, mask=m_c, other=0.0).to(tl.float32)
    o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
    # [BLOCK_S, BLOCK_C]
    b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_dx = b_davg[None, :] / S + tl.where(b_x == b_mx[None, :], (b_dmax / b_cnt)[None, :], 0.0)
    o_dx = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                      stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw)
    tl.store(dx_ptr + o_dx, b_dx.to(dx_ptr.dtype.element_ty), mask=m_x)


@triton.jit
def _spatial_pool_fwd_kernel(
    x_ptr, g_ptr, out_ptr, mx_ptr, cnt_ptr,
    C, D, H, W, S,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_gb, stride_gc,
    stride_ob, stride_oc, stride_od, stride_oh, stride_ow,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, m_s, i_d, i_h, i_w = _voxel_tile(S, H, W, BLOCK_S)
    b_sum = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_max = tl.full([BLOCK_S, BLOCK_C], float("-inf"), dtype=tl.float32)
    b_cnt = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m_x = m_s[:, None] & m_c[None, :]
        # [BLOCK_C]
        b_g = tl.load(g_ptr + i_b.to(tl.int64) * stride_gb + o_c * stride_gc, mask=m_c, other=0.0).to(tl.float32)
        o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                         stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
        # [BLOCK_S, BLOCK_C]
        b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
        b_xg = tl.where(m_x, b_x * b_g[None, :], float("-inf"))
        b_sum += tl.where(m_x, b_xg, 0.0)
        b_new = tl.maximum(b_max, b_xg, propagate_nan=tl.PropagateNan.ALL)
        b_cnt = tl.where(b_max == b_new, b_cnt, 0) + tl.where(m_x & (b_xg == b_new), 1, 0)
        b_max = b_new
    b_mean = tl.sum(b_sum, axis=1) / C
    b_mx = _nanmax(b_max, 1)
    b_n = tl.sum(tl.where(b_max == b_mx[:, None], b_cnt, 0), axis=1)
    o_o = _offset_4d(i_b, i_d, i_h, i_w, stride_ob, stride_od, stride_oh, stride_ow)
    tl.store(out_ptr + o_o, b_mean.to(out_ptr.dtype.element_ty), mask=m_s)
    tl.store(out_ptr + o_o + stride_oc, b_mx.to(out_ptr.dtype.element_ty), mask=m_s)
    o_bs = i_b.to(tl.int64) * S + o_s
    tl.store(mx_ptr + o_bs, b_mx, mask=m_s)
    tl.store(cnt_ptr + o_bs, b_n, mask=m_s)


@triton.jit
def _spatial_pool_bwd_kernel(
    x_ptr, g_ptr, mx_ptr, cnt_ptr, dout_ptr, dx_ptr, pdg_ptr,
    C, D, H, W, S, NUM_S_BLOCKS,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_gb, stride_gc,
    stride_ob, stride_oc, stride_od, stride_oh, stride_ow,
    stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w = _volume_tile(S, C, H, W, BLOCK_S, BLOCK_C)
    m_x = m_s[:, None] & m_c[None, :]
    o_bs = i_b.to(tl.int64) * S + o_s
    # [BLOCK_S]
    b_mx = tl.load(mx_ptr + o_bs, mask=m_s, other=0.0)
    b_cnt = tl.load(cnt_ptr + o_bs, mask=m_s, other=1).to(tl.float32)
    o_o = _offset_4d(i_b, i_d, i_h, i_w, stride_ob, stride_od, stride_oh, stride_ow)
    b_dmean = tl.load(dout_ptr + o_o, mask=m_s, other=0.0).to(tl.float32)
    b_dmax = tl.load(dout_ptr + o_o + stride_oc, mask=m_s, other=0.0).to(tl.float32)
    # [BLOCK_C]
    b_g = tl.load(g_ptr + i_b.to(tl.int64) * stride_gb + o_c * stride_gc, mask=m_c, other=0.0).to(tl.float32)
    o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
    # [BLOCK_S, BLOCK_C]
    b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_xg = b_x * b_g[None, :]
    b_t = (b_dmean / C)[:, None] + tl.where(b_xg == b_mx[:, None], (b_dmax / b_cnt)[:, None], 0.0)
    b_t = tl.where(m_x, b_t, 0.0)
    o_dx = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                      stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw)
    tl.store(dx_ptr + o_dx, (b_t * b_g[None, :]).to(dx_ptr.dtype.element_ty), mask=m_x)
    o_p = (i_b.to(tl.int64) * NUM_S_BLOCKS + i_s) * C + o_c
    tl.store(pdg_ptr + o_p, tl.sum(b_t * b_x, axis=0), mask=m_c)


@triton.jit
def _apply_gates_fwd_kernel(
    x_ptr, gc_ptr, gs_ptr, y_ptr,
    C, D, H, W, S,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_cb, stride_cc,
    stride_sb, stride_sd, stride_sh, stride_sw,
    stride_yb, stride_yc, stride_yd, stride_yh, stride_yw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w = _volume_tile(S, C, H, W, BLOCK_S, BLOCK_C)
    m_x = m_s[:, None] & m_c[None, :]
    # [BLOCK_C]
    b_gc = tl.load(gc_ptr + i_b.to(tl.int64) * stride_cb + o_c * stride_cc, mask=m_c, other=0.0).to(tl.float32)
    # [BLOCK_S]
    b_gs = tl.load(gs_ptr + _offset_4d(i_b, i_d, i_h, i_w, stride_sb, stride_sd, stride_sh, stride_sw),
                   mask=m_s, other=0.0).to(tl.float32)
    o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
    # [BLOCK_S, BLOCK_C]
    b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_y = b_x * b_gc[None, :] * b_gs[:, None]
    o_y = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_yb, stride_yc, stride_yd, stride_yh, stride_yw)
    tl.store(y_ptr + o_y, b_y.to(y_ptr.dtype.element_ty), mask=m_x)


@triton.jit
def _apply_gates_bwd_kernel(
    x_ptr, gc_ptr, gs_ptr, dy_ptr, dx_ptr, dgs_ptr, pdgc_ptr,
    C, D, H, W, S, NUM_S_BLOCKS,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_cb, stride_cc,
    stride_sb, stride_sd, stride_sh, stride_sw,
    stride_yb, stride_yc, stride_yd, stride_yh, stride_yw,
    stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, m_s, i_d, i_h, i_w = _voxel_tile(S, H, W, BLOCK_S)
    # [BLOCK_S]
    b_gs = tl.load(gs_ptr + _offset_4d(i_b, i_d, i_h, i_w, stride_sb, stride_sd, stride_sh, stride_sw),
                   mask=m_s, other=0.0).to(tl.float32)
    b_dgs = tl.zeros([BLOCK_S], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m_x = m_s[:, None] & m_c[None, :]
        # [BLOCK_C]
        b_gc = tl.load(gc_ptr + i_b.to(tl.int64) * stride_cb + o_c * stride_cc, mask=m_c, other=0.0).to(tl.float32)
        o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                         stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
        o_y = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                         stride_yb, stride_yc, stride_yd, stride_yh, stride_yw)
        # [BLOCK_S, BLOCK_C]
        b_x = tl.load(x_ptr + o_x, mask=m_x, other=0.0).to(tl.float32)
        b_dy = tl.load(dy_ptr + o_y, mask=m_x, other=0.0).to(tl.float32)
        b_dyx = b_dy * b_x
        b_dgs += tl.sum(b_dyx * b_gc[None, :], axis=1)
        o_p = (i_b.to(tl.int64) * NUM_S_BLOCKS + i_s) * C + o_c
        tl.store(pdgc_ptr + o_p, tl.sum(b_dyx * b_gs[:, None], axis=0), mask=m_c)
        o_dx = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                          stride_dxb, stride_dxc, stride_dxd, stride_dxh, stride_dxw)
        b_dx = b_dy * b_gc[None, :] * b_gs[:, None]
        tl.store(dx_ptr + o_dx, b_dx.to(dx_ptr.dtype.element_ty), mask=m_x)
    tl.store(dgs_ptr + i_b.to(tl.int64) * S + o_s, b_dgs, mask=m_s)


# ------------------------------------------------------------------------- launchers
_MAX_SPLITS = 64


def _blocks(S: int, C: int, block_s: int | None, block_c: int | None) -> tuple[int, int]:
    block_s, block_c = tu.block_override(block_s, block_c)
    return block_s or pick_block(S, 16, 64), block_c or pick_block(C, 2, 32)


@tu.on_tensor_device
def _channel_pool_fwd(x, block_s=None, block_c=None, splits=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    SPLITS = splits or min(cdiv(S, BLOCK_S), _MAX_SPLITS)
    psum = tu.empty(B, SPLITS, C, device=x.device, dtype=torch.float32)
    pmax = tu.empty(B, SPLITS, C, device=x.device, dtype=torch.float32)
    pcnt = tu.empty(B, SPLITS, C, device=x.device, dtype=torch.int32)
    # each program: sum, max and tie count of BLOCK_C channels over every SPLITS-th spatial tile
    _channel_pool_fwd_kernel[(B, cdiv(C, BLOCK_C), SPLITS)](
        x, psum, pmax, pcnt, C, D, H, W, S, SPLITS, *x.stride(),
        BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    mx = pmax.amax(1)
    cnt = torch.where(pmax == mx[:, None], pcnt, 0).sum(1).to(torch.int32)
    avg = psum.sum(1) / S
    # fresh tensors, never views of each other (custom ops may not return aliases)
    return avg.to(x.dtype), mx.to(x.dtype, copy=True), mx, cnt


@tu.on_tensor_device
def _channel_pool_bwd(x, mx, cnt, davg, dmax, block_s=None, block_c=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    dx = _empty_volume_like(x, x.dtype)
    # each program: the input gradient of one [BLOCK_S, BLOCK_C] tile
    _channel_pool_bwd_kernel[(cdiv(S, BLOCK_S), cdiv(C, BLOCK_C), B)](
        x, mx, cnt, davg, dmax, dx, C, D, H, W, S, *x.stride(), *davg.stride(), *dmax.stride(),
        *dx.stride(), BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return dx


def _empty_volume_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kernel output shaped like ``x`` in its memory format (``torch.empty_like`` rules)."""
    return tu.empty_like(x, dtype)


def _gate_bc(g: torch.Tensor, B: int, C: int) -> torch.Tensor:
    """Channel gate [B|1, C|1, 1, 1, 1] -> a [B, C] view (broadcast axes get stride 0)."""
    return g.expand(B, C, 1, 1, 1).reshape(B, C)


def _gate_s(g: torch.Tensor, B: int, D: int, H: int, W: int) -> torch.Tensor:
    """Spatial gate [B|1, 1, D|1, H|1, W|1] -> a [B, D, H, W] view (broadcast axes get stride 0)."""
    return g.expand(B, 1, D, H, W).reshape(B, D, H, W)


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gate gradient in the expanded shape, summed over the axes ``like`` broadcasts, in its dtype."""
    return grad.sum_to_size(like.shape).to(like.dtype)


@tu.on_tensor_device
def _spatial_pool_fwd(x, g, block_s=None, block_c=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    g2 = _gate_bc(g, B, C)
    out = tu.empty(B, 2, D, H, W, device=x.device, dtype=torch.result_type(x, g))
    mx = tu.empty(B, S, device=x.device, dtype=torch.float32)
    cnt = tu.empty(B, S, device=x.device, dtype=torch.int32)
    # each program: mean, max and tie count over all channels of BLOCK_S voxels
    _spatial_pool_fwd_kernel[(cdiv(S, BLOCK_S), B)](
        x, g2, out, mx, cnt, C, D, H, W, S, *x.stride(), *g2.stride(), *out.stride(),
        BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return out, mx, cnt


@tu.on_tensor_device
def _spatial_pool_bwd(x, g, mx, cnt, dout, block_s=None, block_c=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    g2 = _gate_bc(g, B, C)
    n_s = cdiv(S, BLOCK_S)
    dx = _empty_volume_like(x, torch.result_type(x, g))
    pdg = tu.empty(B, n_s, C, device=x.device, dtype=torch.float32)
    # each program: input gradient of one tile and its partial gate gradient
    _spatial_pool_bwd_kernel[(n_s, cdiv(C, BLOCK_C), B)](
        x, g2, mx, cnt, dout, dx, pdg, C, D, H, W, S, n_s, *x.stride(), *g2.stride(),
        *dout.stride(), *dx.stride(), BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return dx, pdg.sum(1)


@tu.on_tensor_device
def _apply_gates_fwd(x, gc, gs, block_s=None, block_c=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    gc2 = _gate_bc(gc, B, C)
    gs4 = _gate_s(gs, B, D, H, W)
    y = _empty_volume_like(x, torch.promote_types(torch.result_type(x, gc), gs.dtype))
    # each program: one [BLOCK_S, BLOCK_C] tile of x * g_c * g_s
    _apply_gates_fwd_kernel[(cdiv(S, BLOCK_S), cdiv(C, BLOCK_C), B)](
        x, gc2, gs4, y, C, D, H, W, S, *x.stride(), *gc2.stride(), *gs4.stride(), *y.stride(),
        BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return y


@tu.on_tensor_device
def _apply_gates_bwd(x, gc, gs, dy, block_s=None, block_c=None):
    B, C, D, H, W = x.shape
    S = D * H * W
    BLOCK_S, BLOCK_C = _blocks(S, C, block_s, block_c)
    gc2 = _gate_bc(gc, B, C)
    gs4 = _gate_s(gs, B, D, H, W)
    n_s = cdiv(S, BLOCK_S)
    dx = _empty_volume_like(x, dy.dtype)
    dgs = tu.empty(B, S, device=x.device, dtype=torch.float32)
    pdgc = tu.empty(B, n_s, C, device=x.device, dtype=torch.float32)
    # each program: BLOCK_S voxels over all channels: dx, the full g_s gradient, partial g_c gradient
    _apply_gates_bwd_kernel[(n_s, B)](
        x, gc2, gs4, dy, dx, dgs, pdgc, C, D, H, W, S, n_s, *x.stride(), *gc2.stride(),
        *gs4.stride(), *dy.stride(), *dx.stride(), BLOCK_S=BLOCK_S, BLOCK_C=BLOCK_C,
    )
    return dx, pdgc.sum(1), dgs


# ------------------------------------------------------------------ autograd entries
# One path for eager and compiled code: each op is a registered custom op (fake
# implementations give shapes, dtypes and strides) with one registered backward that
# calls the backward launcher, itself a custom op.
@torch.library.custom_op("mmscale::channel_pool", mutates_args=())
def _channel_pool_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _channel_pool_fwd(x)


@_channel_pool_op.register_fake
def _(x):
    B, C = x.shape[:2]
    return (x.new_empty(B, C), x.new_empty(B, C), x.new_empty(B, C, dtype=torch.float32),
            x.new_empty(B, C, dtype=torch.int32))


@torch.library.custom_op("mmscale::channel_pool_bwd", mutates_args=())
def _channel_pool_bwd_op(x: torch.Tensor, mx: torch.Tensor, cnt: torch.Tensor, davg: torch.Tensor,
                         dmax: torch.Tensor) -> torch.Tensor:
    return _channel_pool_bwd(x, mx, cnt, davg, dmax)


@_channel_pool_bwd_op.register_fake
def _(x, mx, cnt, davg, dmax):
    return torch.empty_like(x)


def _channel_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[2], output[3])


def _channel_pool_backward(ctx, davg, dmax, _dmx, _dcnt):
    x, mx, cnt = ctx.saved_tensors
    davg = torch.zeros_like(mx) if davg is None else davg
    dmax = torch.zeros_like(mx) if dmax is None else dmax
    return _channel_pool_bwd_op(x, mx, cnt, davg, dmax)


torch.library.register_autograd("mmscale::channel_pool", _channel_pool_backward,
                                setup_context=_channel_pool_setup)


@torch.library.custom_op("mmscale::spatial_pool", mutates_args=())
def _spatial_pool_op(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _spatial_pool_fwd(x, g)


@_spatial_pool_op.register_fake
def _(x, g):
    B, C, D, H, W = x.shape
    return (x.new_empty(B, 2, D, H, W, dtype=torch.result_type(x, g)),
            x.new_empty(B, D * H * W, dtype=torch.float32), x.new_empty(B, D * H * W, dtype=torch.int32))


@torch.library.custom_op("mmscale::spatial_pool_bwd", mutates_args=())
def _spatial_pool_bwd_op(x: torch.Tensor, g: torch.Tensor, mx: torch.Tensor, cnt: torch.Tensor,
                         dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _spatial_pool_bwd(x, g, mx, cnt, dout)


@_spatial_pool_bwd_op.register_fake
def _(x, g, mx, cnt, dout):
    return torch.empty_like(x, dtype=torch.result_type(x, g)), x.new_empty(x.shape[:2], dtype=torch.float32)


def _spatial_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output[1], output[2])


def _spatial_pool_backward(ctx, dout, _dmx, _dcnt):
    x, g, mx, cnt = ctx.saved_tensors
    dx, dg = _spatial_pool_bwd_op(x, g, mx, cnt, dout)
    return dx.to(x.dtype), _sum_to(dg.view(*dg.shape, 1, 1, 1), g)


torch.library.register_autograd("mmscale::spatial_pool", _spatial_pool_backward,
                                setup_context=_spatial_pool_setup)


@torch.library.custom_op("mmscale::apply_gates", mutates_args=())
def _apply_gates_op(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    return _apply_gates_fwd(x, gc, gs)


@_apply_gates_op.register_fake
def _(x, gc, gs):
    return torch.empty_like(x, dtype=torch.promote_types(torch.result_type(x, gc), gs.dtype))


@torch.library.custom_op("mmscale::apply_gates_bwd", mutates_args=())
def _apply_gates_bwd_op(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor,
                        dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _apply_gates_bwd(x, gc, gs, dy)


@_apply_gates_bwd_op.register_fake
def _(x, gc, gs, dy):
    B, C, D, H, W = x.shape
    return (torch.empty_like(x, dtype=dy.dtype), x.new_empty(B, C, dtype=torch.float32),
            x.new_empty(B, D * H * W, dtype=torch.float32))


def _apply_gates_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _apply_gates_backward(ctx, dy):
    x, gc, gs = ctx.saved_tensors
    dx, dgc, dgs = _apply_gates_bwd_op(x, gc, gs, dy)
    dgc, dgs = dgc.view(*dgc.shape, 1, 1, 1), dgs.view(x.shape[0], 1, *x.shape[2:])
    return dx.to(x.dtype), _sum_to(dgc, gc), _sum_to(dgs, gs)


torch.library.register_autograd("mmscale::apply_gates", _apply_gates_backward,
                                setup_context=_apply_gates_setup)


# ------------------------------------------------------------------- entry points
def channel_pool_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``channel_pool``: ``(avg, max)`` over D, H, W, each [B, C] in ``x.dtype``.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W] (float32/float16/bfloat16, any strides).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(avg, max)``, each [B, C].

    Example:
        >>> avg, mx = channel_pool_triton(torch.randn(2, 3, 1, 4, 4, device="cuda"))  # doctest: +SKIP
    """
    avg, mx, _, _ = _channel_pool_op(x)
    return avg, mx


def spatial_pool_triton(x: torch.Tensor, channel_gate: torch.Tensor) -> torch.Tensor:
    """Triton ``spatial_pool``: channel mean and max of ``x * channel_gate``.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): [B, C, 1, 1, 1].

    Returns:
        torch.Tensor: [B, 2, D, H, W] in ``torch.result_type(x, channel_gate)``.

    Example:
        >>> s = spatial_pool_triton(torch.randn(1, 3, 2, 4, 4, device="cuda"),
        ...                         torch.ones(1, 3, 1, 1, 1, device="cuda"))  # doctest: +SKIP
    """
    return _spatial_pool_op(x, channel_gate)[0]


def apply_gates_triton(x: torch.Tensor, channel_gate: torch.Tensor, spatial_gate: torch.Tensor) -> torch.Tensor:
    """Triton ``apply_gates``: ``x * channel_gate * spatial_gate`` in one pass.

    Args:
        x (torch.Tensor): volume [B, C, D, H, W].
        channel_gate (torch.Tensor): [B, C, 1, 1, 1].
        spatial_gate (torch.Tensor): [B, 1, D, H, W].

    Returns:
        torch.Tensor: [B, C, D, H, W], memory format of ``x``.

    Example:
        >>> y = apply_gates_triton(torch.randn(1, 3, 2, 4, 4, device="cuda"),
        ...     torch.ones(1, 3, 1, 1, 1, device="cuda"), torch.ones(1, 1, 2, 4, 4, device="cuda"))  # doctest: +SKIP
    """
    return _apply_gates_op(x, channel_gate, spatial_gate)

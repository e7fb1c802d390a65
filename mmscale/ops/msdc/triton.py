"""Triton kernels for the multi-scale depthwise convolution (MSDC) of MSCB.

``y = combine_k ReLU6(BN_k(DWConv3d_k(h)))`` for up to four branches with odd kernel
sizes ``(kd, kh, kw)`` (stride 1, padding ``k // 2``), combined by sum or concat.

How the work is split (one ``[BLOCK_S, BLOCK_C]`` tile = BLOCK_S voxels of one sample
times BLOCK_C channels):

* every branch is evaluated from the same loads: the tile loops over the union of the
  branches' windows (a runtime loop over depth offsets around ``tl.static_range``
  over the in-plane taps, so the unrolled body, and compile time, stay small), loads
  each shifted input tile once and feeds it to every branch whose window contains
  that tap;
* ``_msdc_fwd_kernel`` has four modes (constexpr ``MODE``) sharing that stencil:
  ``0`` per-tile BN statistics (mean and centred sum of squares, merged later with
  Chan's formula), ``1`` BN + ReLU6 + combine and store, ``2`` per-tile sums of the
  BN-input gradient terms (``sum du``, ``sum du * zhat``), ``3`` the convolution-output
  gradient ``dz`` of every branch (plus the same sums, which in eval mode are final);
* ``_msdc_bwd_dx_kernel``: input gradient, the transposed stencil over ``dz``;
* ``_msdc_bwd_dw_kernel``: filter gradient, one program per (tap, channel block,
  split) looping over spatial tiles; consecutive programs are different taps of the
  same region, so they meet in L2.

Training forward = mode 0 then mode 1 (the convolution is recomputed instead of
storing per-branch outputs); backward = mode 2 over all branches (train only), then
per branch: mode 3, dx (accumulated in float32), dw. Only the input, the filters and
per-channel vectors are saved for backward; the float32 ``dz`` buffer (one input's
size, reused by every branch) and the float32 input-gradient accumulator live only
inside backward.

Reductions are deterministic: kernels write per-tile (or per-split) partials to a
buffer and one ``torch.sum`` finishes them; there are no atomics.

Layout: the input and the output gradient are read through their real strides (any
memory format); outputs are allocated channels_last_3d, the layout of mmscale's layers,
where a tile is contiguous along C. Offsets are int64 (see ``_triton_utils``).

Autograd: one entry for eager and compiled code alike, the ``torch.library`` custom
ops ``mmscale::msdc_fwd`` / ``mmscale::msdc_bwd`` (launchers only, with fake
implementations) and one registered backward, so a model containing the op compiles
with ``fullgraph=True``. Running statistics are updated outside the kernels with
``nn.BatchNorm3d``'s rule (:mod:`mmscale.ops.batch_norm`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mmscale.ops import _triton_utils as tu
from mmscale.ops._triton_utils import _offset_5d, _split_spatial, _volume_tile, cdiv, pick_block
from mmscale.ops.batch_norm import BatchNormStep, update_running_stats

__all__ = ["MAX_BRANCHES", "msdc_backward_packed", "msdc_forward", "multiscale_depthwise_conv3d_triton"]

MAX_BRANCHES = 4
_CL = torch.channels_last_3d

# rows of the per-branch parameter block ``prm`` [6, NB, E] (float32)
_SCALE, _SHIFT, _MEAN, _RSTD, _C1, _C0 = range(6)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _msdc_tap(b_acc, b_x, w_ptr, o_c, m_c, E, DZ,
              DY: tl.constexpr, DX: tl.constexpr,
              KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, OFF: tl.constexpr):
    """Add one tap of one branch: ``acc += x(p + tap) * w[tap]`` when the tap is in its window.

    The in-plane offsets (DY, DX) are constexpr and pruned at compile time; the depth
    offset DZ is a runtime scalar (uniform over the program, so the branch is cheap).
    """
    if (4 * DY * DY < KH * KH) & (4 * DX * DX < KW * KW):
        if 4 * DZ * DZ < KD * KD:
            i_tap = OFF + ((DZ + KD // 2) * KH + DY + KH // 2) * KW + DX + KW // 2
            # [BLOCK_C]
            b_w = tl.load(w_ptr + i_tap * E + o_c, mask=m_c, other=0.0)
            b_acc += b_x * b_w[None, :]
    return b_acc


@triton.jit
def _msdc_epilogue(b_z, b_y, K: tl.constexpr, MODE: tl.constexpr, CONCAT: tl.constexpr, NB: tl.constexpr,
                   prm_ptr, dy_ptr, out_ptr, pstat_ptr,
                   o_c, m_c, m_s, o_y, stride_yc, o_dz, o_st, E, T, BSE):
    """Per-branch tail of ``_msdc_fwd_kernel`` for branch K, given its conv output ``b_z``."""
    m_x = m_s[:, None] & m_c[None, :]
    o_kst = tl.full([], K, tl.int64) * T * E + o_st  # branch K's row in ``pstat`` [2, NB, T, E]
    o_q1 = tl.full([], NB, tl.int64) * T * E  # distance between the two statistics
    o_kc = tl.full([], K, tl.int64) * E * stride_yc  # branch K's channel block in a concat output
    if MODE == 0:
        b_n = tl.sum(m_s.to(tl.float32), axis=0)
        b_mean = tl.sum(tl.where(m_x, b_z, 0.0), axis=0) / b_n
        b_dev = tl.where(m_x, b_z - b_mean[None, :], 0.0)
        tl.store(pstat_ptr + o_kst, b_mean, mask=m_c)
        tl.store(pstat_ptr + o_q1 + o_kst, tl.sum(b_dev * b_dev, axis=0), mask=m_c)
    else:
        # [BLOCK_C] per-channel BN scale and shift of branch K
        b_scale = tl.load(prm_ptr + (0 * NB + K) * E + o_c, mask=m_c, other=0.0)
        b_shift = tl.load(prm_ptr + (1 * NB + K) * E + o_c, mask=m_c, other=0.0)
        b_u = b_z * b_scale[None, :] + b_shift[None, :]
        if MODE == 1:
            b_a = tl.minimum(tl.maximum(b_u, 0.0), 6.0)
            if CONCAT:
                tl.store(out_ptr + o_y + o_kc, b_a.to(out_ptr.dtype.element_ty), mask=m_x)
            else:
                b_y += b_a
        else:
            o_k = o_y
            if CONCAT:
                o_k = o_y + o_kc
            # [BLOCK_S, BLOCK_C] gradient reaching branch K's activation
            b_dy = tl.load(dy_ptr + o_k, mask=m_x, other=0.0).to(tl.float32)
            b_du = tl.where(m_x & (b_u > 0.0) & (b_u < 6.0), b_dy, 0.0)
            # [BLOCK_C]
            b_mean = tl.load(prm_ptr + (2 * NB + K) * E + o_c, mask=m_c, other=0.0)
            b_rstd = tl.load(prm_ptr + (3 * NB + K) * E + o_c, mask=m_c, other=0.0)
            b_zhat = (b_z - b_mean[None, :]) * b_rstd[None, :]
            tl.store(pstat_ptr + o_kst, tl.sum(b_du, axis=0), mask=m_c)
            tl.store(pstat_ptr + o_q1 + o_kst, tl.sum(b_du * b_zhat, axis=0), mask=m_c)
            if MODE == 3:
                b_c1 = tl.load(prm_ptr + (4 * NB + K) * E + o_c, mask=m_c, other=0.0)
                b_c0 = tl.load(prm_ptr + (5 * NB + K) * E + o_c, mask=m_c, other=0.0)
                b_dz = b_du * b_scale[None, :] + b_z * b_c1[None, :] + b_c0[None, :]
                tl.store(out_ptr + tl.full([], K, tl.int64) * BSE + o_dz, b_dz, mask=m_x)
    return b_y


@triton.jit
def _msdc_fwd_kernel(
    h_ptr, w_ptr, prm_ptr, dy_ptr, out_ptr, pstat_ptr,
    B, E, D, H, W, S, N_SB,
    stride_hb, stride_hc, stride_hd, stride_hh, stride_hw,
    stride_yb, stride_yc, stride_yd, stride_yh, stride_yw,
    MODE: tl.constexpr, NB: tl.constexpr, CONCAT: tl.constexpr,
    K0D: tl.constexpr, K0H: tl.constexpr, K0W: tl.constexpr, OFF0: tl.constexpr,
    K1D: tl.constexpr, K1H: tl.constexpr, K1W: tl.constexpr, OFF1: tl.constexpr,
    K2D: tl.constexpr, K2H: tl.constexpr, K2W: tl.constexpr, OFF2: tl.constexpr,
    K3D: tl.constexpr, K3H: tl.constexpr, K3W: tl.constexpr, OFF3: tl.constexpr,
    KDM: tl.constexpr, KHM: tl.constexpr, KWM: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w = _volume_tile(S, E, H, W, BLOCK_S, BLOCK_C)
    o_h = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_hb, stride_hc, stride_hd, stride_hh, stride_hw)
    b_z0 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_z1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_z2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_z3 = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    # depth taps in a runtime loop, in-plane taps unrolled: KDM times less code to compile
    for t_z in range(KDM):
        DZ = t_z - KDM // 2
        m_d = m_s & (i_d + DZ >= 0) & (i_d + DZ < D)
        o_z = tl.cast(DZ, tl.int64) * stride_hd
        for t_y in tl.static_range(KHM):
            DY = t_y - KHM // 2
            m_dh = m_d & (i_h + DY >= 0) & (i_h + DY < H)
            for t_x in tl.static_range(KWM):
                DX = t_x - KWM // 2
                m_t = m_dh & (i_w + DX >= 0) & (i_w + DX < W)
                o_t = o_z + tl.cast(DY, tl.int64) * stride_hh + tl.cast(DX, tl.int64) * stride_hw
                # [BLOCK_S, BLOCK_C] input tile shifted by the tap (zero padding outside)
                b_x = tl.load(h_ptr + o_h + o_t, mask=m_t[:, None] & m_c[None, :], other=0.0).to(tl.float32)
                b_z0 = _msdc_tap(b_z0, b_x, w_ptr, o_c, m_c, E, DZ, DY, DX, K0D, K0H, K0W, OFF0)
                if NB > 1:
                    b_z1 = _msdc_tap(b_z1, b_x, w_ptr, o_c, m_c, E, DZ, DY, DX, K1D, K1H, K1W, OFF1)
                if NB > 2:
                    b_z2 = _msdc_tap(b_z2, b_x, w_ptr, o_c, m_c, E, DZ, DY, DX, K2D, K2H, K2W, OFF2)
                if NB > 3:
                    b_z3 = _msdc_tap(b_z3, b_x, w_ptr, o_c, m_c, E, DZ, DY, DX, K3D, K3H, K3W, OFF3)
    o_y = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_yb, stride_yc, stride_yd, stride_yh, stride_yw)
    # dz buffer [NB, B, S, E] (contiguous), statistics buffer [2, NB, T, E] with T = B * N_SB
    o_dz = (i_b.to(tl.int64) * S + o_s[:, None]) * E + o_c[None, :]
    T = B * N_SB
    o_st = (i_b.to(tl.int64) * N_SB + i_s) * E + o_c
    BSE = tl.cast(B, tl.int64) * S * E  # tl.cast: B == 1 arrives as a constexpr
    b_y = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    b_y = _msdc_epilogue(b_z0, b_y, 0, MODE, CONCAT, NB, prm_ptr, dy_ptr, out_ptr, pstat_ptr,
                         o_c, m_c, m_s, o_y, stride_yc, o_dz, o_st, E, T, BSE)
    if NB > 1:
        b_y = _msdc_epilogue(b_z1, b_y, 1, MODE, CONCAT, NB, prm_ptr, dy_ptr, out_ptr, pstat_ptr,
                             o_c, m_c, m_s, o_y, stride_yc, o_dz, o_st, E, T, BSE)
    if NB > 2:
        b_y = _msdc_epilogue(b_z2, b_y, 2, MODE, CONCAT, NB, prm_ptr, dy_ptr, out_ptr, pstat_ptr,
                             o_c, m_c, m_s, o_y, stride_yc, o_dz, o_st, E, T, BSE)
    if NB > 3:
        b_y = _msdc_epilogue(b_z3, b_y, 3, MODE, CONCAT, NB, prm_ptr, dy_ptr, out_ptr, pstat_ptr,
                             o_c, m_c, m_s, o_y, stride_yc, o_dz, o_st, E, T, BSE)
    if MODE == 1:
        if not CONCAT:
            tl.store(out_ptr + o_y, b_y.to(out_ptr.dtype.element_ty), mask=m_s[:, None] & m_c[None, :])


@triton.jit
def _msdc_dx_tap(b_acc, dz_ptr, w_ptr, o_dz, o_t, m_t, o_c, m_c, E, BSE, K: tl.constexpr, DZ,
                 DY: tl.constexpr, DX: tl.constexpr,
                 KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, OFF: tl.constexpr):
    """Add ``dz_K(p - tap) * w_K[tap]`` when the tap is in branch K's window (DZ at runtime)."""
    if (4 * DY * DY < KH * KH) & (4 * DX * DX < KW * KW):
        if 4 * DZ * DZ < KD * KD:
            i_tap = OFF + ((DZ + KD // 2) * KH + DY + KH // 2) * KW + DX + KW // 2
            # [BLOCK_C]
            b_w = tl.load(w_ptr + i_tap * E + o_c, mask=m_c, other=0.0)
            # [BLOCK_S, BLOCK_C] gradient of branch K's conv output at p - tap
            b_g = tl.load(dz_ptr + tl.full([], K, tl.int64) * BSE + o_dz - o_t, mask=m_t, other=0.0)
            b_acc += b_g * b_w[None, :]
    return b_acc


@triton.jit
def _msdc_bwd_dx_kernel(
    dz_ptr, w_ptr, dx_ptr,
    B, E, D, H, W, S,
    stride_xb, stride_xc, stride_xd, stride_xh, stride_xw,
    NB: tl.constexpr,
    K0D: tl.constexpr, K0H: tl.constexpr, K0W: tl.constexpr, OFF0: tl.constexpr,
    K1D: tl.constexpr, K1H: tl.constexpr, K1W: tl.constexpr, OFF1: tl.constexpr,
    K2D: tl.constexpr, K2H: tl.constexpr, K2W: tl.constexpr, OFF2: tl.constexpr,
    K3D: tl.constexpr, K3H: tl.constexpr, K3W: tl.constexpr, OFF3: tl.constexpr,
    KDM: tl.constexpr, KHM: tl.constexpr, KWM: tl.constexpr,
    ACCUMULATE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w = _volume_tile(S, E, H, W, BLOCK_S, BLOCK_C)
    o_dz = (i_b.to(tl.int64) * S + o_s[:, None]) * E + o_c[None, :]
    BSE = tl.cast(B, tl.int64) * S * E  # tl.cast: B == 1 arrives as a constexpr
    b_dx = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for t_z in range(KDM):  # runtime depth loop, unrolled in-plane taps (as the forward)
        DZ = t_z - KDM // 2
        m_d = m_s & (i_d - DZ >= 0) & (i_d - DZ < D)
        for t_y in tl.static_range(KHM):
            DY = t_y - KHM // 2
            m_dh = m_d & (i_h - DY >= 0) & (i_h - DY < H)
            for t_x in tl.static_range(KWM):
                DX = t_x - KWM // 2
                m_t = (m_dh & (i_w - DX >= 0) & (i_w - DX < W))[:, None] & m_c[None, :]
                o_t = ((tl.cast(DZ, tl.int64) * H + DY) * W + DX) * E
                b_dx = _msdc_dx_tap(b_dx, dz_ptr, w_ptr, o_dz, o_t, m_t, o_c, m_c, E, BSE,
                                    0, DZ, DY, DX, K0D, K0H, K0W, OFF0)
                if NB > 1:
                    b_dx = _msdc_dx_tap(b_dx, dz_ptr, w_ptr, o_dz, o_t, m_t, o_c, m_c, E, BSE,
                                        1, DZ, DY, DX, K1D, K1H, K1W, OFF1)
                if NB > 2:
                    b_dx = _msdc_dx_tap(b_dx, dz_ptr, w_ptr, o_dz, o_t, m_t, o_c, m_c, E, BSE,
                                        2, DZ, DY, DX, K2D, K2H, K2W, OFF2)
                if NB > 3:
                    b_dx = _msdc_dx_tap(b_dx, dz_ptr, w_ptr, o_dz, o_t, m_t, o_c, m_c, E, BSE,
                                        3, DZ, DY, DX, K3D, K3H, K3W, OFF3)
    o_x = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                     stride_xb, stride_xc, stride_xd, stride_xh, stride_xw)
    if ACCUMULATE:
        # [BLOCK_S, BLOCK_C] the other branches' share, written by earlier launches
        b_dx += tl.load(dx_ptr + o_x, mask=m_s[:, None] & m_c[None, :], other=0.0).to(tl.float32)
    tl.store(dx_ptr + o_x, b_dx.to(dx_ptr.dtype.element_ty), mask=m_s[:, None] & m_c[None, :])


@triton.jit
def _msdc_bwd_dw_kernel(
    h_ptr, dz_ptr, tap_ptr, pdw_ptr,
    B, E, D, H, W, S, N_SB, TAPS, SPLITS,
    stride_hb, stride_hc, stride_hd, stride_hh, stride_hw,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_t, i_c, i_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # this program's tap: (branch, dz, dy, dx) from the tap table [TAPS, 4] (int32)
    i_k = tl.load(tap_ptr + i_t * 4)
    t_dz = tl.load(tap_ptr + i_t * 4 + 1)
    t_dy = tl.load(tap_ptr + i_t * 4 + 2)
    t_dx = tl.load(tap_ptr + i_t * 4 + 3)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < E
    o_t = t_dz.to(tl.int64) * stride_hd + t_dy.to(tl.int64) * stride_hh + t_dx.to(tl.int64) * stride_hw
    BSE = tl.cast(B, tl.int64) * S * E  # tl.cast: B == 1 arrives as a constexpr
    b_acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for t in range(i_p, B * N_SB, SPLITS):
        i_b = t // N_SB
        o_s = (t % N_SB) * BLOCK_S + tl.arange(0, BLOCK_S)
        m_s = o_s < S
        i_d, i_h, i_w = _split_spatial(o_s, H, W)
        m_t = m_s & (i_d + t_dz >= 0) & (i_d + t_dz < D) & (i_h + t_dy >= 0) & (i_h + t_dy < H) \
            & (i_w + t_dx >= 0) & (i_w + t_dx < W)
        o_h = _offset_5d(i_b, o_c[None, :], i_d[:, None], i_h[:, None], i_w[:, None],
                         stride_hb, stride_hc, stride_hd, stride_hh, stride_hw)
        # [BLOCK_S, BLOCK_C] input at p + tap
        b_x = tl.load(h_ptr + o_h + o_t, mask=m_t[:, None] & m_c[None, :], other=0.0).to(tl.float32)
        o_dz = i_k.to(tl.int64) * BSE + (i_b.to(tl.int64) * S + o_s[:, None]) * E + o_c[None, :]
        # [BLOCK_S, BLOCK_C] conv-output gradient at p
        b_g = tl.load(dz_ptr + o_dz, mask=m_s[:, None] & m_c[None, :], other=0.0)
        b_acc += b_x * b_g
    o_p = (i_p.to(tl.int64) * TAPS + i_t) * E + o_c
    tl.store(pdw_ptr + o_p, tl.sum(b_acc, axis=0), mask=m_c)


# ------------------------------------------------------------------------- launchers
class _Geometry:
    """Static description of one call: branch windows, tap offsets and block sizes."""

    def __init__(self, h: torch.Tensor, kernel_sizes: Sequence[tuple[int, int, int]],
                 block_s: int | None = None, block_c: int | None = None):
        B, E, D, H, W = h.shape
        block_s, block_c = tu.block_override(block_s, block_c)
        self.B, self.E, self.D, self.H, self.W, self.S = B, E, D, H, W, D * H * W
        self.ks = [tuple(int(v) for v in k) for k in kernel_sizes]
        self.nb = len(self.ks)
        self.offs, off = [], 0
        for kd, kh, kw in self.ks:
            self.offs.append(off)
            off += kd * kh * kw
        self.taps = off
        self.kmax = tuple(max(k[i] for k in self.ks) for i in range(3))
        # Tile shapes (4 warps each) keep every kernel free of register spills on sm_90,
        # as compiled by ``benchmarks/kernel_resources.py --check``: a stencil tile holds
        # 8 elements per thread (16 spill from 5x5 in-plane windows up), the input
        # gradient of a window over 27 taps 4, and the filter gradient, which keeps one
        # accumulator tile, 16.
        stencil = self.kmax != (1, 1, 1)
        self.BLOCK_S = block_s or pick_block(self.S, 16, 32 if stencil else 64)
        self.BLOCK_C = block_c or pick_block(E, 2, 32)
        self.n_sb = cdiv(self.S, self.BLOCK_S)
        self.T = B * self.n_sb
        self.dw_block_s = block_s or pick_block(self.S, 16, 64)

    def branch_constexprs(self) -> dict[str, int]:
        out = {}
        for i in range(MAX_BRANCHES):
            kd, kh, kw = self.ks[i] if i < self.nb else (1, 1, 1)
            out.update({f"K{i}D": kd, f"K{i}H": kh, f"K{i}W": kw, f"OFF{i}": self.offs[i] if i < self.nb else 0})
        out.update(NB=self.nb, KDM=self.kmax[0], KHM=self.kmax[1], KWM=self.kmax[2],
                   BLOCK_S=self.BLOCK_S, BLOCK_C=self.BLOCK_C)
        return out

    def dx_block_s(self, k: int) -> int:
        """Spatial tile of the input-gradient kernel for branch ``k``'s window."""
        kd, kh, kw = self.ks[k]
        return min(self.BLOCK_S, 16) if kd * kh * kw > 27 else self.BLOCK_S

    def tile_counts(self, device) -> torch.Tensor:
        """Valid voxels of every tile [T] (float32), in the kernels' tile order."""
        n = torch.full((self.n_sb,), float(self.BLOCK_S), device=device)
        n[-1] = self.S - (self.n_sb - 1) * self.BLOCK_S
        return n.repeat(self.B)


def _pack_weights(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Filters [E, 1, kd, kh, kw] of every branch -> one float32 table [taps, E]."""
    return torch.cat([w.detach().reshape(w.shape[0], -1).t().float() for w in weights]).contiguous()


def _unpack_taps(flat: torch.Tensor, meta: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    """Inverse of ``_pack_weights`` for gradients: [taps, E] -> per-branch [E, 1, kd, kh, kw].

    ``meta`` holds each filter's ``(shape, dtype)``.
    """
    out, off = [], 0
    for shape, dtype in meta:
        n = shape[2] * shape[3] * shape[4]
        out.append(flat[off:off + n].t().reshape(shape).to(dtype))
        off += n
    return out


_TAP_TABLES: dict[tuple, torch.Tensor] = {}


def _tap_table(g: _Geometry, device) -> torch.Tensor:
    """(branch, dz, dy, dx) of every filter tap [taps, 4] (int32), cached per windows and device."""
    key = (tuple(g.ks), str(device))
    if key not in _TAP_TABLES:
        rows = []
        for k, (kd, kh, kw) in enumerate(g.ks):
            for dz in range(-(kd // 2), kd // 2 + 1):
                for dy in range(-(kh // 2), kh // 2 + 1):
                    for dx in range(-(kw // 2), kw // 2 + 1):
                        rows.append((k, dz, dy, dx))
        _TAP_TABLES[key] = torch.tensor(rows, dtype=torch.int32, device=device)
    return _TAP_TABLES[key]


def _run_stencil(mode: int, h, wpack, prm, dy, out, pstat, g: _Geometry, concat: bool):
    ref = out if mode == 1 else (dy if dy is not None else h)
    out_strides = ref.stride()
    # each program: one [BLOCK_S, BLOCK_C] tile of one sample through every branch's stencil
    _msdc_fwd_kernel[(g.n_sb, cdiv(g.E, g.BLOCK_C), g.B)](
        h, wpack, prm, dy if dy is not None else h, out if out is not None else h, pstat,
        g.B, g.E, g.D, g.H, g.W, g.S, g.n_sb, *h.stride(), *out_strides,
        MODE=mode, CONCAT=concat, **g.branch_constexprs(),
    )


def _merge_tile_stats(pstat: torch.Tensor, g: _Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan's parallel merge of per-tile (mean, centred sum of squares) -> (mean, M2) [NB, E]."""
    n_t = g.tile_counts(pstat.device).view(1, -1, 1)
    mean_t, m2_t = pstat[0], pstat[1]  # [NB, T, E]
    n = float(g.B * g.S)
    mean = (mean_t * n_t).sum(1) / n
    m2 = m2_t.sum(1) + (n_t * (mean_t - mean[:, None, :]) ** 2).sum(1)
    return mean, m2


@tu.on_tensor_device
def msdc_forward(h, weights, bn_weights, bn_biases, running_means, running_vars,
                 use_batch_stats: bool, eps: float, concat: bool,
                 block_s: int | None = None, block_c: int | None = None):
    """Forward launcher: ``(y, prm, wpack, batch_mean, batch_var)``.

    ``prm`` [6, NB, E] and ``wpack`` [taps, E] are what backward needs. With batch
    statistics it runs the statistics pass first; ``batch_mean`` / ``batch_var``
    [NB, E] are then the batch mean and *unbiased* variance for the running-statistic
    update (:func:`mmscale.ops.batch_norm.update_running_stats`); in eval they are zeros.
    """
    g = _Geometry(h, [tuple(w.shape[2:]) for w in weights], block_s, block_c)
    wpack = _pack_weights(weights)
    gamma = torch.stack([w.detach().float() for w in bn_weights])
    beta = torch.stack([b.detach().float() for b in bn_biases])
    prm = torch.zeros(6, g.nb, g.E, device=h.device, dtype=torch.float32)
    if use_batch_stats:
        n = g.B * g.S
        if n < 2:
            raise ValueError(f"batch statistics need more than 1 value per channel, got input of shape {tuple(h.shape)}")
        pstat = tu.empty(2, g.nb, g.T, g.E, device=h.device, dtype=torch.float32)
        _run_stencil(0, h, wpack, prm, None, None, pstat, g, concat)
        mean, m2 = _merge_tile_stats(pstat, g)
        var = m2 / n  # biased: normalises, as nn.BatchNorm3d
        batch_var = m2 / (n - 1)  # unbiased: enters running_var
    else:
        mean = torch.stack([rm.detach().float() for rm in running_means])
        var = torch.stack([rv.detach().float() for rv in running_vars])
    rstd = torch.rsqrt(var + eps)
    prm[_SCALE] = gamma * rstd
    prm[_SHIFT] = beta - mean * prm[_SCALE]
    prm[_MEAN], prm[_RSTD] = mean, rstd
    c_out = g.E * g.nb if concat else g.E
    y = tu.empty(g.B, c_out, g.D, g.H, g.W, device=h.device, dtype=h.dtype, memory_format=_CL)
    _run_stencil(1, h, wpack, prm, None, y, prm, g, concat)
    if not use_batch_stats:
        return y, prm, wpack, torch.zeros_like(mean), torch.zeros_like(mean)
    return y, prm, wpack, mean, batch_var


@tu.on_tensor_device
def msdc_backward_packed(dy, h, kernel_sizes, wpack, prm, use_batch_stats: bool, concat: bool,
                         block_s: int | None = None, block_c: int | None = None):
    """Backward launcher: ``(dh, dw [taps, E], dgamma [NB, E], dbeta [NB, E])``, the last three float32.

    The training-mode sums need every branch at once (one stencil pass); the rest runs
    one branch at a time, so the float32 ``dz`` buffer is the size of one input
    whatever the number of branches, and the input gradient is accumulated in float32.
    """
    g = _Geometry(h, kernel_sizes, block_s, block_c)
    prm = prm.clone()
    if use_batch_stats:
        # sums of du and du * zhat first: the BN input gradient couples every voxel
        pstat = tu.empty(2, g.nb, g.T, g.E, device=h.device, dtype=torch.float32)
        _run_stencil(2, h, wpack, prm, dy, None, pstat, g, concat)
        dbeta, dgamma = pstat.sum(2).unbind(0)
        n = float(g.B * g.S)
        prm[_C1] = -prm[_SCALE] * prm[_RSTD] * dgamma / n
        prm[_C0] = -prm[_SCALE] * dbeta / n - prm[_C1] * prm[_MEAN]
    dz = tu.empty(1, g.B, g.S, g.E, device=h.device, dtype=torch.float32)
    dh32 = tu.empty(h.shape, device=h.device, dtype=torch.float32, memory_format=_CL)
    dws, sums = [], []
    for k, ks in enumerate(g.ks):
        gk = _Geometry(h, [ks], g.BLOCK_S, g.BLOCK_C)  # the same tiles: the statistics line up
        w_k = wpack[g.offs[k]:g.offs[k] + gk.taps]
        prm_k = prm[:, k:k + 1].contiguous()
        dy_k = dy[:, k * g.E:(k + 1) * g.E] if concat else dy
        pstat_k = tu.empty(2, 1, g.T, g.E, device=h.device, dtype=torch.float32)
        _run_stencil(3, h, w_k, prm_k, dy_k, dz, pstat_k, gk, False)
        sums.append(pstat_k.sum(2)[:, 0])  # [2, E]: (sum du, sum du * zhat) of branch k
        # each program: branch k's share of the input gradient of one tile (transposed stencil)
        dx_bs = g.dx_block_s(k)
        _msdc_bwd_dx_kernel[(cdiv(g.S, dx_bs), cdiv(g.E, g.BLOCK_C), g.B)](
            dz, w_k, dh32, g.B, g.E, g.D, g.H, g.W, g.S, *dh32.stride(), ACCUMULATE=k > 0,
            **dict(gk.branch_constexprs(), BLOCK_S=dx_bs),
        )
        n_dw = cdiv(g.S, g.dw_block_s)
        splits = min(g.B * n_dw, 64)
        pdw = tu.empty(splits, gk.taps, g.E, device=h.device, dtype=torch.float32)
        # each program: one tap x BLOCK_C channels of the filter gradient over every splits-th tile
        _msdc_bwd_dw_kernel[(gk.taps, cdiv(g.E, g.BLOCK_C), splits)](
            h, dz, _tap_table(gk, h.device), pdw, g.B, g.E, g.D, g.H, g.W, g.S, n_dw, gk.taps, splits,
            *h.stride(), BLOCK_S=g.dw_block_s, BLOCK_C=g.BLOCK_C,
        )
        dws.append(pdw.sum(0))
    if not use_batch_stats:  # in eval the per-branch sums are the BN parameter gradients
        dbeta, dgamma = torch.stack(sums, 1).unbind(0)
    dh = dh32 if h.dtype == torch.float32 else dh32.to(h.dtype)
    # clones: custom ops may not return aliases
    return dh, torch.cat(dws), dgamma.clone(), dbeta.clone()


# ------------------------------------------------------------------ autograd entry
# One path for eager and compiled code: registered custom ops (with fake
# implementations, so a model containing the op compiles with ``fullgraph=True``)
# and one registered backward. The running-statistic update stays outside the op
# (plain in-place torch code, which Dynamo functionalises).
@torch.library.custom_op("mmscale::msdc_fwd", mutates_args=())
def _msdc_fwd_op(h: torch.Tensor, weights: list[torch.Tensor], gammas: list[torch.Tensor],
                 betas: list[torch.Tensor], means: list[torch.Tensor], varis: list[torch.Tensor],
                 use_batch_stats: bool, eps: float,
                 concat: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return msdc_forward(h, weights, gammas, betas, means, varis, use_batch_stats, eps, concat)


@_msdc_fwd_op.register_fake
def _(h, weights, gammas, betas, means, varis, use_batch_stats, eps, concat):
    B, E, D, H, W = h.shape
    nb, taps = len(weights), sum(w[0].numel() for w in weights)
    y = h.new_empty(B, E * nb if concat else E, D, H, W).contiguous(memory_format=_CL)
    f32 = {"dtype": torch.float32}
    return (y, h.new_empty(6, nb, E, **f32), h.new_empty(taps, E, **f32), h.new_empty(nb, E, **f32),
            h.new_empty(nb, E, **f32))


@torch.library.custom_op("mmscale::msdc_bwd", mutates_args=())
def _msdc_bwd_op(dy: torch.Tensor, h: torch.Tensor, kernel_sizes: list[int], wpack: torch.Tensor,
                 prm: torch.Tensor, use_batch_stats: bool,
                 concat: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ks = [tuple(kernel_sizes[i:i + 3]) for i in range(0, len(kernel_sizes), 3)]
    return msdc_backward_packed(dy, h, ks, wpack, prm, use_batch_stats, concat)


@_msdc_bwd_op.register_fake
def _(dy, h, kernel_sizes, wpack, prm, use_batch_stats, concat):
    nb, E = prm.shape[1:]
    return (torch.empty_like(h, memory_format=_CL), torch.empty_like(wpack), prm.new_empty(nb, E),
            prm.new_empty(nb, E))


def _msdc_setup(ctx, inputs, output):
    # filters are saved once, packed; the originals only lend shapes and dtypes
    h, weights, gammas, betas, means, varis, use_batch_stats, _, concat = inputs
    _, prm, wpack, _, _ = output
    ctx.save_for_backward(h, wpack, prm)
    ctx.n_stats = (len(means), len(varis))
    ctx.weight_meta = [(tuple(w.shape), w.dtype) for w in weights]
    ctx.gamma_dtypes = [g.dtype for g in gammas]
    ctx.beta_dtypes = [b.dtype for b in betas]
    ctx.use_batch_stats, ctx.concat = use_batch_stats, concat


def _msdc_backward(ctx, dy, *_unused):
    h, wpack, prm = ctx.saved_tensors
    ks = [k for shape, _ in ctx.weight_meta for k in shape[2:]]
    dh, dw, dgamma, dbeta = _msdc_bwd_op(dy, h, ks, wpack, prm, ctx.use_batch_stats, ctx.concat)
    dws = _unpack_taps(dw, ctx.weight_meta)
    dgammas = [d.to(t) for d, t in zip(dgamma.unbind(0), ctx.gamma_dtypes, strict=True)]
    dbetas = [d.to(t) for d, t in zip(dbeta.unbind(0), ctx.beta_dtypes, strict=True)]
    no_grads = [None] * ctx.n_stats[0], [None] * ctx.n_stats[1]
    return dh, dws, dgammas, dbetas, *no_grads, None, None, None


torch.library.register_autograd("mmscale::msdc_fwd", _msdc_backward, setup_context=_msdc_setup)


def multiscale_depthwise_conv3d_triton(
    h: torch.Tensor, weights: Sequence[torch.Tensor], steps: Sequence[BatchNormStep], combine: str
) -> torch.Tensor:
    """Fused Triton multi-scale depthwise convolution (stride 1), autograd-aware.

    The Triton path of :func:`mmscale.ops.msdc.multiscale_depthwise_conv3d`, after
    its BatchNorm bookkeeping (``steps``, one ``use_batch_stats`` and ``eps`` for all).
    Accumulates in float32; returns ``h.dtype`` in channels_last_3d; updates the
    running statistics with batch statistics.

    Args:
        h (torch.Tensor): input [B, E, D, H, W], float32/float16/bfloat16, any strides.
        weights (Sequence[torch.Tensor]): per-branch filters [E, 1, kd, kh, kw], odd
            sizes, at most ``MAX_BRANCHES`` branches.
        steps (Sequence[BatchNormStep]): per-branch BatchNorm [E].
        combine (str): ``"add"`` or ``"concat"``.

    Returns:
        torch.Tensor: [B, E, D, H, W] (``"add"``) or [B, E * n, D, H, W] (``"concat"``).

    Raises:
        ValueError: for a batch of one value per channel in training, or missing
            running statistics in eval.

    Example:
        >>> from torch import nn
        >>> from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm
        >>> steps = [begin_batch_norm(BatchNormState.of(nn.BatchNorm3d(4).cuda())) for _ in range(2)]  # doctest: +SKIP
        >>> w = [torch.randn(4, 1, k, k, k, device="cuda") for k in (1, 3)]  # doctest: +SKIP
        >>> h = torch.randn(1, 4, 3, 5, 5, device="cuda")  # doctest: +SKIP
        >>> y = multiscale_depthwise_conv3d_triton(h, w, steps, "add")  # doctest: +SKIP
    """
    use_batch_stats, eps = steps[0].use_batch_stats, steps[0].eps
    if not use_batch_stats and any(s.running_mean is None or s.running_var is None for s in steps):
        raise ValueError("running statistics are required when the BatchNorms use them (eval mode)")
    E = h.shape[1]
    gammas = [s.weight if s.weight is not None else h.new_ones(E, dtype=torch.float32) for s in steps]
    betas = [s.bias if s.bias is not None else h.new_zeros(E, dtype=torch.float32) for s in steps]
    means = [] if use_batch_stats else [s.running_mean for s in steps]
    varis = [] if use_batch_stats else [s.running_var for s in steps]
    y, _, _, mean, var = _msdc_fwd_op(h, list(weights), gammas, betas, means, varis, use_batch_stats, float(eps),
                                      combine == "concat")
    if use_batch_stats:
        update_running_stats(steps, mean, var)
    return y

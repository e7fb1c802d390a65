"""Helpers shared by mmscale's Triton kernels.

Index arithmetic: every kernel turns element indices into memory offsets with
:func:`_offset_5d` / :func:`_offset_4d`, which widen to int64 *before* multiplying,
so tensors above 2**31 elements address correctly. Within one sample, voxel and
channel indices are int32 (:func:`_split_spatial` divides in 32 bits), so a sample's
D*H*W and its channel count stay below 2**31; the dispatchers check that. The
pure-Python twins (:func:`offset_5d`, :func:`split_spatial`) let tests check the
formulas at sizes that cannot be allocated.

Layout: launchers pass every tensor's real strides (``stride_xb``, ``stride_xc``,
``stride_xd``, ``stride_xh``, ``stride_xw``), so any memory format works; outputs are
allocated in channels_last_3d (the layout mmscale's layers use), where the channel
axis is contiguous and a ``[BLOCK_S, BLOCK_C]`` tile is coalesced along C.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl

_F = TypeVar("_F", bound=Callable)

__all__ = [
    "block_override",
    "cdiv",
    "empty",
    "empty_like",
    "on_tensor_device",
    "offset_5d",
    "pick_block",
    "split_spatial",
]

# Test hooks (monkeypatched by tests/ops): fill every kernel output with NaN (or -1
# for integer buffers) before the launch, so an element a kernel forgets to write
# fails the comparison; and force block sizes ``(BLOCK_S, BLOCK_C)`` so tiny test
# shapes still span several tiles and exercise every mask.
POISON_OUTPUTS = False
BLOCK_OVERRIDE: tuple[int, int] | None = None


def empty(*shape: int, device, dtype: torch.dtype, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; poisoned when ``POISON_OUTPUTS`` is set.

    Example:
        >>> tuple(empty(2, 3, device="cpu", dtype=torch.float32).shape)
        (2, 3)
    """
    out = torch.empty(*shape, device=device, dtype=dtype, memory_format=memory_format)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def empty_like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.empty_like`` (memory format preserved) for kernel outputs; poisoned like :func:`empty`.

    Example:
        >>> empty_like(torch.zeros(2, 3), torch.float16).dtype
        torch.float16
    """
    out = torch.empty_like(x, dtype=dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def on_tensor_device(launcher: _F) -> _F:
    """Run ``launcher`` with the current CUDA device set to its first tensor argument's.

    Triton launches a kernel on the *current* device and stream; without this, a
    tensor on ``cuda:1`` while ``cuda:0`` is current would reach a kernel on the wrong
    GPU. CPU tensors (the interpreter) pass straight through.

    Example:
        >>> on_tensor_device(lambda x: x + 1)(torch.zeros(1))
        tensor([1.])
    """

    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        guard = torch.cuda.device(first.device) if first is not None and first.is_cuda else contextlib.nullcontext()
        with guard:
            return launcher(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def block_override(block_s: int | None, block_c: int | None) -> tuple[int | None, int | None]:
    """Explicit block sizes, else the test override, else ``(None, None)`` (pick per shape).

    Example:
        >>> block_override(32, None)
        (32, None)
    """
    if block_s is None and block_c is None and BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE
    return block_s, block_c


@triton.jit
def _split_spatial(o_s, H, W):
    """Flat spatial index ``s = (d * H + h) * W + w`` -> ``(d, h, w)``, widened to int64.

    Divides in int32: one sample's D*H*W is below 2**31 (the dispatchers enforce
    it), and on NVIDIA GPUs a 64-bit division is a slow subroutine call while a 32-bit
    one is a few inline instructions.
    """
    o_s = o_s.to(tl.int32)
    o_hw = o_s // W
    i_w = o_s - o_hw * W
    i_d = o_hw // H
    i_h = o_hw - i_d * H
    return i_d.to(tl.int64), i_h.to(tl.int64), i_w.to(tl.int64)


@triton.jit
def _volume_tile(S, C, H, W, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's ``[BLOCK_S, BLOCK_C]`` tile on a (spatial tiles, channel tiles, batch) grid.

    Spatial tiles go on grid axis 0, the only axis on which CUDA allows more than
    65535 programs. Returns ``(i_s, i_b, o_s, o_c, m_s, m_c, i_d, i_h, i_w)``: tile and
    sample index, voxel and channel indices with their masks, and the voxels' (d, h, w).
    """
    i_s, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    i_d, i_h, i_w = _split_spatial(o_s, H, W)
    return i_s, i_b, o_s, o_c, o_s < S, o_c < C, i_d, i_h, i_w


@triton.jit
def _voxel_tile(S, H, W, BLOCK_S: tl.constexpr):
    """This program's ``BLOCK_S`` voxels on a (spatial tiles, batch) grid (tiles on axis 0, as above).

    Returns ``(i_s, i_b, o_s, m_s, i_d, i_h, i_w)``.
    """
    i_s, i_b = tl.program_id(0), tl.program_id(1)
    o_s = i_s * BLOCK_S + tl.arange(0, BLOCK_S)
    i_d, i_h, i_w = _split_spatial(o_s, H, W)
    return i_s, i_b, o_s, o_s < S, i_d, i_h, i_w


@triton.jit
def _offset_5d(i_b, i_c, i_d, i_h, i_w, stride_b, stride_c, stride_d, stride_h, stride_w):
    """Memory offset of element ``[i_b, i_c, i_d, i_h, i_w]``, computed in int64."""
    return (
        i_b.to(tl.int64) * stride_b
        + i_c.to(tl.int64) * stride_c
        + i_d.to(tl.int64) * stride_d
        + i_h.to(tl.int64) * stride_h
        + i_w.to(tl.int64) * stride_w
    )


@triton.jit
def _offset_4d(i_b, i_d, i_h, i_w, stride_b, stride_d, stride_h, stride_w):
    """Memory offset of voxel ``[i_b, i_d, i_h, i_w]`` (no channel axis), in int64."""
    return (
        i_b.to(tl.int64) * stride_b
        + i_d.to(tl.int64) * stride_d
        + i_h.to(tl.int64) * stride_h
        + i_w.to(tl.int64) * stride_w
    )


def offset_5d(i_b: int, i_c: int, i_d: int, i_h: int, i_w: int, strides: tuple[int, ...]) -> int:
    """Python twin of the kernels' ``_offset_5d`` (exact integers), for tests.

    Args:
        i_b, i_c, i_d, i_h, i_w (int): element index.
        strides (tuple[int, ...]): the tensor's five strides, in elements.

    Returns:
        int: the element's offset from the base pointer.

    Example:
        >>> offset_5d(1, 2, 0, 0, 3, (100, 1, 50, 10, 2))
        108
    """
    return sum(i * s for i, s in zip((i_b, i_c, i_d, i_h, i_w), strides, strict=True))


def cdiv(a: int, b: int) -> int:
    """Ceiling division of positive integers.

    Example:
        >>> cdiv(7, 4)
        2
    """
    return -(-a // b)


def pick_block(n: int, lo: int, hi: int) -> int:
    """Power of two covering ``n``, clamped to ``[lo, hi]`` (block size for one axis).

    Example:
        >>> pick_block(5, 4, 64), pick_block(1000, 4, 64)
        (8, 64)
    """
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def split_spatial(s: int, h: int, w: int) -> tuple[int, int, int]:
    """Python twin of the kernels' ``_split_spatial``.

    Example:
        >>> split_spatial(23, 3, 4)
        (1, 2, 3)
    """
    return s // (w * h), (s // w) % h, s % w


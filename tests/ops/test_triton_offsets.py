"""int64-safe index arithmetic, checked at sizes that cannot be allocated.

Every kernel addresses memory through ``_offset_5d`` / ``_offset_4d`` /
``_split_spatial`` (``mmscale.ops._triton_utils``). A probe kernel calls them with
int32 indices and strides whose products pass 2**31; without the int64 widening the
interpreter's int32 arithmetic wraps and the comparison with Python's exact integers
fails. Assumed and documented limits: a sample's D*H*W and the channel count fit in
int32 (the tensor as a whole may not).
"""

from __future__ import annotations

import pytest
import torch

from mmscale.ops._triton_utils import offset_5d, split_spatial

triton = pytest.importorskip("triton")
tl = triton.language

from mmscale.ops._triton_utils import _offset_4d, _offset_5d, _split_spatial  # noqa: E402


@triton.jit
def _offset_probe_kernel(out_ptr, i_b, i_c, i_d, i_h, i_w, s_b, s_c, s_d, s_h, s_w, s0, H, W,
                         BLOCK: tl.constexpr):
    tl.store(out_ptr, _offset_5d(i_b, i_c, i_d, i_h, i_w, s_b, s_c, s_d, s_h, s_w))
    tl.store(out_ptr + 1, _offset_4d(i_b, i_d, i_h, i_w, s_b, s_d, s_h, s_w))
    o_s = s0 + tl.arange(0, BLOCK)
    i_ds, i_hs, i_ws = _split_spatial(o_s, H, W)
    # a row of voxels, far into the volume
    tl.store(out_ptr + 2 + tl.arange(0, BLOCK), _offset_5d(i_b, i_c, i_ds, i_hs, i_ws, s_b, s_c, s_d, s_h, s_w))


def _probe():
    return _offset_probe_kernel


def _run(idx, strides, s0, hw, block=4):
    out = torch.full((2 + block,), -1, dtype=torch.int64)
    as_i32 = [torch.tensor(v, dtype=torch.int32).item() for v in (*idx, *strides, s0, *hw)]  # all fit in int32
    _probe()[(1,)](out, *as_i32, BLOCK=block)
    return out.tolist()


# (index, strides of a [B, C, D, H, W] tensor, first flat voxel, (H, W)): each offset passes 2**31
CASES = [
    # channels_last_3d [3, 500, 64, 256, 256]: 6.3e9 elements
    ((2, 499, 63, 255, 255), (500 * 64 * 256 * 256, 1, 500 * 256 * 256, 500 * 256, 500), 64 * 256 * 256 - 4, (256, 256)),
    # contiguous [2, 1024, 32, 192, 192]: 2.4e9 elements
    ((1, 1023, 31, 191, 191), (1024 * 32 * 192 * 192, 32 * 192 * 192, 192 * 192, 192, 1), 32 * 192 * 192 - 4, (192, 192)),
]


@pytest.mark.parametrize("idx,strides,s0,hw", CASES)
def test_offsets_are_int64_exact(idx, strides, s0, hw):
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(_probe(), InterpretedFunction):  # tests/conftest.py enables the interpreter on CPU
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1 before the test session)")
    got = _run(idx, strides, s0, hw)
    assert offset_5d(*idx, strides) > 2**31
    assert got[0] == offset_5d(*idx, strides)
    assert got[1] == offset_5d(idx[0], 0, *idx[2:], strides)
    for j, o in enumerate(got[2:]):
        d, h, w = split_spatial(s0 + j, *hw)
        assert o == offset_5d(idx[0], idx[1], d, h, w, strides)


def test_python_twins():
    assert split_spatial(0, 5, 7) == (0, 0, 0)
    assert split_spatial(3 * 5 * 7 - 1, 5, 7) == (2, 4, 6)
    assert offset_5d(1, 1, 1, 1, 1, (2**33, 2**32, 2**31, 2**30, 1)) == 2**33 + 2**32 + 2**31 + 2**30 + 1

"""Triton gating kernels vs the PyTorch reference: forward, every gradient, ties, layouts.

Runs on CPU through Triton's interpreter (see conftest.py) and, on GPU machines, on
CUDA (``-m gpu``). Every kernel output is NaN-poisoned before the launch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmscale.ops.gating import (
    apply_gates,
    apply_gates_reference,
    channel_pool,
    channel_pool_reference,
    spatial_pool,
    spatial_pool_reference,
)
from tests.ops.conftest import DEVICES

# one tolerance table per dtype, (rtol, atol) as everywhere in the tests: forward, gradients
TOL = {
    torch.float32: {"fwd": (1e-5, 1e-5), "grad": (1e-4, 1e-5)},
    torch.float16: {"fwd": (2e-3, 2e-3), "grad": (4e-3, 4e-3)},
    torch.bfloat16: {"fwd": (2e-2, 2e-2), "grad": (3e-2, 3e-2)},
}

# (B, C, D, H, W): batch 1, D = 1, primes, C not a multiple of any block
# paired with a memory format: the layers hand channels_last_3d, other callers anything
CASES = [
    ((1, 3, 1, 5, 7), "channels_last"),
    ((2, 5, 3, 7, 5), "channels_last"),
    ((2, 5, 3, 7, 5), "contiguous"),
    ((1, 1, 2, 3, 3), "contiguous"),
    ((2, 6, 1, 1, 1), "channels_last"),
    ((1, 7, 2, 2, 11), "contiguous"),
]


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _volume(shape, device, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _check(out, ref, dtype, kind):
    rtol, atol = TOL[dtype][kind]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def _grads(outputs, inputs, cotangents):
    loss = sum((o.float() * c).sum() for o, c in zip(outputs, cotangents, strict=True))
    return torch.autograd.grad(loss, inputs)


def _as_ref(t):
    """The reference sees float32 copies of the same (rounded) values."""
    return t.detach().float().requires_grad_()


def _run_pair(fn, ref_fn, args, dtype):
    """Forward and every input gradient of the Triton op vs the float32 reference."""
    args = [a.detach().requires_grad_() for a in args]
    ref_args = [_as_ref(a) for a in args]
    out = fn(*args, backend="triton")
    ref = ref_fn(*ref_args)
    out = out if isinstance(out, tuple) else (out,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(out, ref, strict=True):
        assert torch.isfinite(o).all(), "unwritten (NaN-poisoned) or non-finite output"
        _check(o, r, dtype, "fwd")
    gen = torch.Generator().manual_seed(1)
    cot = [torch.randn(r.shape, generator=gen).to(r.device) for r in ref]
    for g, rg in zip(_grads(out, args, cot), _grads(ref, ref_args, cot), strict=True):
        assert torch.isfinite(g).all()
        _check(g, rg, dtype, "grad")
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,layout", CASES)
def test_channel_pool(kernels_for, small_blocks, device, shape, layout):
    kernels_for(device, "gating")
    small_blocks(8, 4)
    for dtype in DTYPES:
        x = _volume(shape, device, dtype, layout)
        avg, mx = _run_pair(channel_pool, channel_pool_reference, [x], dtype)
        assert avg.dtype == mx.dtype == dtype and avg.shape == shape[:2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,layout", CASES)
def test_spatial_pool(kernels_for, small_blocks, device, shape, layout):
    kernels_for(device, "gating")
    small_blocks(8, 4)
    for dtype in DTYPES:
        x = _volume(shape, device, dtype, layout)
        gate = torch.rand(shape[0], shape[1], 1, 1, 1, generator=torch.Generator().manual_seed(2))
        out, = _run_pair(spatial_pool, spatial_pool_reference, [x, gate.to(device, dtype)], dtype)
        assert out.shape == (shape[0], 2, *shape[2:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,layout", CASES)
def test_apply_gates(kernels_for, small_blocks, device, shape, layout):
    kernels_for(device, "gating")
    small_blocks(8, 4)
    for dtype in DTYPES:
        x = _volume(shape, device, dtype, layout)
        gen = torch.Generator().manual_seed(3)
        gc = torch.rand(shape[0], shape[1], 1, 1, 1, generator=gen).to(device, dtype)
        gs = torch.rand(shape[0], 1, *shape[2:], generator=gen).to(device, dtype)
        _run_pair(apply_gates, apply_gates_reference, [x, gc, gs], dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_default_blocks_and_mixed_gate_dtype(kernels_for, device):
    """Default block sizes; a float32 gate on a float16 volume promotes like PyTorch."""
    kernels_for(device, "gating")
    x = _volume((2, 5, 3, 7, 5), device, torch.float16, "channels_last")
    gc = torch.rand(2, 5, 1, 1, 1, device=device)
    gs = torch.rand(2, 1, 3, 7, 5, device=device)
    y = apply_gates(x, gc, gs, backend="triton")
    assert y.dtype == torch.float32
    _check(y, apply_gates_reference(x, gc, gs), torch.float16, "fwd")
    s = spatial_pool(x, gc, backend="triton")
    assert s.dtype == torch.float32
    _check(s, spatial_pool_reference(x.float(), gc), torch.float16, "fwd")


@pytest.mark.parametrize("device", DEVICES)
def test_max_gradient_splits_between_ties_like_amax(kernels_for, small_blocks, device):
    kernels_for(device, "gating")
    small_blocks(4, 2)
    x = torch.randn(2, 3, 2, 3, 3, device=device)
    x[0, 1, 0, 0, 0] = x[0, 1, 1, 2, 2] = x[0, 1].max() + 1.0  # tie in two different tiles
    x[1, :, 1, 1, 1] = 5.0  # channel-axis ties for spatial_pool
    x = x.contiguous(memory_format=torch.channels_last_3d)
    gate = torch.ones(2, 3, 1, 1, 1, device=device)
    _run_pair(channel_pool, channel_pool_reference, [x], torch.float32)
    _run_pair(spatial_pool, spatial_pool_reference, [x, gate], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(kernels_for, small_blocks, device):
    kernels_for(device, "gating")
    small_blocks(8, 4)
    x = _volume((2, 5, 3, 7, 5), device, torch.float32, "channels_last").requires_grad_()
    gc = torch.rand(2, 5, 1, 1, 1, device=device, requires_grad=True)
    gs = torch.rand(2, 1, 3, 7, 5, device=device, requires_grad=True)
    runs = [torch.autograd.grad(apply_gates(x, gc, gs, backend="triton").sum(), (x, gc, gs)) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(1, 2), c=st.integers(1, 6), d=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
    block_s=st.sampled_from([2, 8, 16]), block_c=st.sampled_from([1, 2, 8]),
)
def test_property_gating_matches_reference(kernels_for, small_blocks, b, c, d, h, w, block_s, block_c):
    """Any small shape and any block sizes: all three ops agree with the reference."""
    kernels_for("cpu", "gating")
    small_blocks(block_s, block_c)
    x = _volume((b, c, d, h, w), "cpu", torch.float32, "channels_last", seed=b * 100 + c)
    gc = torch.rand(b, c, 1, 1, 1)
    gs = torch.rand(b, 1, d, h, w)
    _run_pair(channel_pool, channel_pool_reference, [x], torch.float32)
    _run_pair(spatial_pool, spatial_pool_reference, [x, gc], torch.float32)
    _run_pair(apply_gates, apply_gates_reference, [x, gc, gs], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_broadcast_gates(kernels_for, device):
    """Gates that broadcast over the batch (or the volume) behave like PyTorch broadcasting."""
    kernels_for(device, "gating")
    x = _volume((2, 3, 2, 3, 4), device, torch.float32, "channels_last")
    gc = torch.rand(1, 3, 1, 1, 1, device=device)
    gs = torch.rand(1, 1, 2, 3, 4, device=device)
    _run_pair(apply_gates, apply_gates_reference, [x, gc, gs], torch.float32)
    _run_pair(apply_gates, apply_gates_reference, [x, gc, torch.rand(2, 1, 1, 1, 1, device=device)], torch.float32)
    _run_pair(spatial_pool, spatial_pool_reference, [x, gc], torch.float32)

"""Grouped 3D convolution: the CPU autograd path against ``F.conv3d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmscale.layers.backbone import GroupedBottleneck3d
from mmscale.ops import grouped_conv3d
from mmscale.ops.grouped_conv3d import (
    LARGE_INPUT,
    cpu,
    grouped_conv3d_cpu,
    grouped_conv3d_reference,
    grouped_input_grad,
    grouped_weight_grad,
)

# (x shape, C_out, kernel, stride, padding, groups)
CASES = [
    ((1, 4, 1, 1, 1), 4, 1, 1, 0, 1),
    ((1, 4, 1, 1, 1), 4, 3, 1, 1, 2),
    ((2, 3, 5, 7, 11), 6, 3, 1, 1, 3),  # 1 channel per group in
    ((1, 6, 5, 7, 11), 6, 3, 2, 1, 2),  # 3 per group
    ((2, 8, 7, 5, 5), 8, 3, 2, 0, 2),
    ((1, 64, 5, 7, 5), 64, 3, 1, 1, 32),  # the backbone's 32 groups
    ((2, 128, 3, 5, 7), 128, 3, 2, 1, 32),  # 4 per group, strided
    ((1, 8, 7, 11, 5), 12, (1, 3, 3), 1, (0, 1, 1), 4),  # anisotropic kernel
    ((1, 8, 5, 7, 11), 8, (1, 3, 3), (1, 2, 2), (0, 1, 1), 2),
    ((2, 4, 5, 5, 7), 8, 1, 2, 0, 1),
    ((1, 6, 2, 5, 7), 3, (3, 1, 3), (2, 1, 1), (1, 0, 1), 3),
    ((1, 12, 11, 7, 5), 12, 3, 1, 0, 4),
]


def _grads(fn, x, w, stride, padding, groups, g):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = fn(x, w, stride, padding, groups)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    return y, gx, gw


def _case(shape, c_out, k, stride, padding, groups, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = (k,) * 3 if isinstance(k, int) else k
    x = torch.randn(shape, generator=gen, dtype=dtype)
    w = torch.randn(c_out, shape[1] // groups, *k, generator=gen, dtype=dtype)
    y = F.conv3d(x, w, None, stride, padding, 1, groups)
    g = torch.randn(y.shape, generator=gen, dtype=dtype)
    return x, w, g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", CASES)
def test_matches_conv3d_float64(case):
    x, w, g = _case(*case, torch.float64)
    stride, padding, groups = case[3], case[4], case[5]
    ref = _grads(grouped_conv3d_reference, x, w, stride, padding, groups, g)
    out = _grads(grouped_conv3d, x, w, stride, padding, groups, g)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0)
    for a, b in zip(out[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_matches_conv3d_float32(case):
    x, w, g = _case(*case, torch.float32)
    stride, padding, groups = case[3], case[4], case[5]
    ref = _grads(grouped_conv3d_reference, x.double(), w.double(), stride, padding, groups, g.double())
    out = _grads(grouped_conv3d, x, w, stride, padding, groups, g)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == torch.float32
        assert _rel(a.double(), b) < 1e-5


@pytest.mark.parametrize(
    ("shape", "stride"),
    [((1, 32, 8, 32, 33), 1), ((1, 32, 8, 32, 33), 2), ((1, 32, 9, 31, 31), (2, 1, 2))],
)
def test_large_input_paths(shape, stride):
    # inputs of at least LARGE_INPUT positions take the flipped-filter input gradient at stride 1
    assert shape[2] * shape[3] * shape[4] >= LARGE_INPUT
    x, w, g = _case(shape, 32, 3, stride, 1, 32, torch.float64)
    ref = _grads(grouped_conv3d_reference, x, w, stride, 1, 32, g)
    out = _grads(grouped_conv3d, x, w, stride, 1, 32, g)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_slice", [1, 2, 3])  # with 3, 8 and 32 groups: slices of 2+1, 3+3+2, 10x3+2, ...
@pytest.mark.parametrize("case", [CASES[2], CASES[6], ((2, 16, 5, 6, 7), 8, 3, 1, 1, 8)])
def test_weight_grad_unfolds_a_slice_of_the_groups_at_a_time(monkeypatch, case, per_slice):
    x, w, g = _case(*case, torch.float64)
    stride, padding, groups = case[3:]
    stride, padding = ((v,) * 3 if isinstance(v, int) else v for v in (stride, padding))
    expected = torch.ops.aten.convolution_backward(
        g, x, w, None, stride, padding, (1, 1, 1), False, (0, 0, 0), groups, (False, True, False))[1]
    unfolded_per_group = (x.shape[1] // groups) * w.shape[3] * w.shape[4] * g.shape[3] * g.shape[4]
    monkeypatch.setattr(cpu, "COLS_BUDGET", per_slice * unfolded_per_group + unfolded_per_group // 2)
    torch.testing.assert_close(grouped_weight_grad(x, g, tuple(w.shape[2:]), stride, padding, groups), expected,
                               rtol=1e-12, atol=1e-12)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: grouped_conv3d_cpu(a, b, 1, 1, 2), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: grouped_conv3d_cpu(a, b, 2, 1, 2), (x, w))


def test_gradient_helpers_shapes():
    x, w, g = _case((1, 8, 4, 5, 5), 6, 3, 1, 1, 2, torch.float64)
    assert grouped_weight_grad(x, g, (3, 3, 3), (1, 1, 1), (1, 1, 1), 2).shape == w.shape
    assert grouped_input_grad(x.shape, w, g, (1, 1, 1), (1, 1, 1), 2).shape == x.shape


def test_dispatch_keeps_conv3d_without_grad():
    x, w, _ = _case((1, 8, 3, 5, 5), 8, 3, 1, 1, 4, torch.float32)
    with torch.no_grad():
        y = grouped_conv3d(x, w, 1, 1, 4)
    assert y.grad_fn is None
    torch.testing.assert_close(y, F.conv3d(x, w, None, 1, 1, 1, 4), rtol=0, atol=0)
    y = grouped_conv3d(x, w.requires_grad_(), 1, 1, 4)
    assert type(y.grad_fn).__name__.startswith("GroupedConv3dFunction")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = grouped_conv3d(x, w, 1, 1, 4)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("stride", [1, 2])
def test_bottleneck_matches_module_call(stride):
    torch.manual_seed(0)
    blk = GroupedBottleneck3d(32, 64, 64, cardinality=32, stride=stride).double()
    x = torch.randn(2, 32, 5, 7, 6, dtype=torch.float64)

    def run():
        blk.zero_grad()
        y = blk(x)
        y.square().sum().backward()
        return y, {n: p.grad.clone() for n, p in blk.named_parameters()}

    calls = []
    y_fast, g_fast = run()
    handle = blk.conv2.register_forward_hook(lambda *a: calls.append(1))  # forces the module call
    y_ref, g_ref = run()
    handle.remove()
    assert calls == [1]
    torch.testing.assert_close(y_fast, y_ref, rtol=0, atol=0)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-10, atol=1e-12)
    assert set(blk.state_dict()) >= {"conv2.weight"}

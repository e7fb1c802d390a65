"""dense_conv3d against F.conv3d: output, input, weight and bias gradients, awkward shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmscale.ops import dense_conv3d as module
from mmscale.ops.dense_conv3d import dense_conv3d, dense_conv3d_weight_grad
from tests.helpers import assert_close

CL = torch.channels_last_3d


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize(
    "shape, c_out, kernel",
    [
        ((2, 4, 3, 5, 6), 4, (3, 3, 3)),
        ((1, 3, 1, 7, 5), 5, (3, 3, 3)),  # batch 1, one plane, primes
        ((2, 2, 4, 3, 3), 1, (1, 3, 5)),  # anisotropic window wider than the plane
        ((1, 1, 2, 2, 2), 3, (5, 5, 5)),
        ((3, 6, 2, 4, 4), 2, (1, 1, 1)),
    ],
    ids=str,
)
def test_matches_conv3d(shape, c_out, kernel, layout, monkeypatch):
    calls = []
    real = module._DenseConv3d.apply
    monkeypatch.setattr(module._DenseConv3d, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(shape, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    w = torch.randn(c_out, shape[1], *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    y = dense_conv3d(x, w, b)
    assert calls == [1]
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), g)
    y_ref = F.conv3d(x, w, b, 1, tuple(k // 2 for k in kernel))
    want = torch.autograd.grad(y_ref, (x, w, b), g)
    assert_close(y, y_ref)
    for a, e in zip(got, want, strict=True):
        assert_close(a, e)


def test_gradcheck():
    x = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dense_conv3d, (x, w, b))


def test_float32_weight_gradient_is_within_float32_rounding():
    # one product per tap sums the positions in GEMM order: a few float32 roundings
    # (measured 3-5e-7 of the largest entry, ATen's blocked sum 2e-7)
    x, g = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 16, 3, 8, 8)
    w = torch.randn(16, 16, 3, 3, 3)
    exact = torch.nn.grad.conv3d_weight(x.double(), w.shape, g.double(), 1, 1)
    aten = torch.nn.grad.conv3d_weight(x, w.shape, g, 1, 1)
    mine = dense_conv3d_weight_grad(x, g, (3, 3, 3))
    scale = exact.abs().max()
    assert (mine.double() - exact).abs().max() / scale <= max(4 * (aten.double() - exact).abs().max() / scale, 1e-6)


def test_without_a_weight_gradient_it_is_plain_conv3d(monkeypatch):
    monkeypatch.setattr(module._DenseConv3d, "apply", lambda *a: pytest.fail("the autograd function ran"))
    x = torch.randn(1, 2, 2, 3, 3)
    w = torch.randn(2, 2, 3, 3, 3)
    with torch.no_grad():
        assert_close(dense_conv3d(x, w), F.conv3d(x, w, None, 1, 1))

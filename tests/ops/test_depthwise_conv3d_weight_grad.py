"""The depthwise weight gradient's 2D-plane and row-wise paths against torch's own gradient, on awkward shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmscale.ops.depthwise_conv3d import cpu, depthwise_weight_grad, multi_depthwise_conv3d_cpu
from tests.helpers import assert_close

CL = torch.channels_last_3d

CASES = [
    # (B, C, D, H, W), kernel, padding
    ((2, 3, 4, 7, 5), (3, 3, 3), (1, 1, 1)),
    ((1, 1, 1, 1, 1), (3, 3, 3), (1, 1, 1)),  # every tap but the centre falls outside
    ((3, 5, 2, 11, 13), (5, 3, 3), (2, 1, 1)),  # depth taps with no input plane at all
    ((2, 2, 7, 5, 3), (1, 3, 3), (0, 1, 1)),  # CT-style anisotropic window
    ((2, 7, 3, 6, 5), (3, 1, 3), (1, 0, 1)),
    ((1, 4, 5, 5, 7), (3, 3, 1), (0, 1, 0)),  # no depth padding: fewer output planes
    ((2, 3, 3, 4, 4), (3, 3, 3), (2, 0, 1)),  # padding wider than the window's half
]


ROW_CASES = [
    ((2, 3, 4, 7, 5), (5, 5, 5), (2, 2, 2)),
    ((1, 1, 1, 1, 1), (5, 5, 5), (2, 2, 2)),
    ((3, 5, 2, 11, 13), (3, 5, 5), (1, 2, 2)),
    ((2, 2, 7, 5, 3), (1, 3, 5), (0, 1, 2)),
    ((2, 3, 3, 4, 29), (3, 3, 7), (1, 1, 3)),  # several column blocks, the last one partial
    ((1, 4, 5, 5, 14), (5, 5, 5), (0, 2, 1)),  # exactly one column block
    ((2, 3, 3, 4, 6), (5, 5, 5), (3, 3, 3)),  # padding wider than the window's half
]


@pytest.fixture(autouse=True)
def _every_plane_size_takes_the_fast_paths(monkeypatch):
    # the cases are small; in use, planes below cpu._MIN_PLANE positions take the grouped convolution
    monkeypatch.setattr(cpu, "_MIN_PLANE", 0)


def _expected(x, g, kernel, padding):
    return torch.nn.grad.conv3d_weight(x.contiguous(), (x.shape[1], 1, *kernel), g.contiguous(), 1, padding, 1,
                                       x.shape[1])


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, kernel, padding", CASES)
def test_plane_weight_grad_matches_torch(shape, kernel, padding, dtype, memory_format):
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    out = F.conv3d(x, torch.zeros(shape[1], 1, *kernel, dtype=dtype), None, 1, padding, 1, shape[1])
    g = torch.randn_like(out).contiguous(memory_format=memory_format)
    assert cpu._uses_planes(kernel, (1, 1, 1))
    got = depthwise_weight_grad(x, g, kernel, (1, 1, 1), padding)
    assert got.shape == (shape[1], 1, *kernel)
    assert_close(got, _expected(x, g, kernel, padding))


def test_float32_plane_weight_grad_is_as_accurate_as_the_grouped_convolution():
    # float32 rounding only: within twice the error of the grouped convolution, against float64
    x = torch.randn(2, 16, 6, 24, 24)
    g = torch.randn(2, 16, 6, 24, 24)
    exact = _expected(x.double(), g.double(), (3, 3, 3), (1, 1, 1))
    planes = depthwise_weight_grad(x.contiguous(memory_format=CL), g.contiguous(memory_format=CL), (3, 3, 3),
                                   (1, 1, 1), (1, 1, 1)).double()
    # the grouped convolution this path replaces (groups = B * C, the output gradients as filters)
    corr = F.conv3d(x.reshape(1, 32, 6, 24, 24), g.reshape(32, 1, 6, 24, 24), None, 1, 1, 1, 32)
    grouped = corr.view(2, 16, 3, 3, 3).sum(0).unsqueeze(1).double()
    scale = exact.abs().max()
    assert (planes - exact).abs().max() / scale <= 2 * max((grouped - exact).abs().max() / scale, 1e-7)


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, kernel, padding", ROW_CASES)
def test_row_weight_grad_matches_torch(shape, kernel, padding, dtype, memory_format):
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    out = F.conv3d(x, torch.zeros(shape[1], 1, *kernel, dtype=dtype), None, 1, padding, 1, shape[1])
    g = torch.randn_like(out).contiguous(memory_format=memory_format)
    assert cpu._uses_rows(kernel, (1, 1, 1))
    got = depthwise_weight_grad(x, g, kernel, (1, 1, 1), padding)
    assert got.shape == (shape[1], 1, *kernel)
    assert_close(got, _expected(x, g, kernel, padding))


def test_float32_row_weight_grad_is_closer_to_exact_than_the_grouped_convolution():
    x = torch.randn(2, 16, 6, 24, 24)
    g = torch.randn(2, 16, 6, 24, 24)
    exact = _expected(x.double(), g.double(), (5, 5, 5), (2, 2, 2))
    rows = depthwise_weight_grad(x, g, (5, 5, 5), (1, 1, 1), (2, 2, 2)).double()
    corr = F.conv3d(x.reshape(1, 32, 6, 24, 24), g.reshape(32, 1, 6, 24, 24), None, 1, 2, 1, 32)
    grouped = corr.view(2, 16, 5, 5, 5).sum(0).unsqueeze(1).double()
    assert (rows - exact).abs().max() <= 2 * max((grouped - exact).abs().max().item(), 1e-7 * exact.abs().max().item())


@pytest.mark.parametrize("kernel, stride, path", [
    ((3, 3, 3), (1, 1, 1), "planes"),
    ((1, 3, 3), (1, 1, 1), "planes"),
    ((5, 5, 5), (1, 1, 1), "rows"),
    ((3, 1, 5), (1, 1, 1), "rows"),
    ((5, 5, 5), (2, 2, 2), None),
    ((3, 3, 3), (2, 2, 2), None),
    ((1, 1, 1), (1, 1, 1), None),
])
def test_backward_takes_the_fast_path_where_it_applies(monkeypatch, kernel, stride, path):
    calls = []
    for name in ("planes", "rows"):
        real = getattr(cpu, f"_weight_grad_by_{name}")

        def spy(*args, name=name, real=real):
            calls.append(name)
            return real(*args)

        monkeypatch.setattr(cpu, f"_weight_grad_by_{name}", spy)
    x = torch.randn(2, 3, 4, 6, 5, requires_grad=True)
    w = torch.randn(3, 1, *kernel, requires_grad=True)
    (y,) = multi_depthwise_conv3d_cpu(x, [w], stride)
    g = torch.randn_like(y)
    y.backward(g)
    assert calls == ([path] if path else [])
    padding = tuple(k // 2 for k in kernel)
    assert_close(w.grad, torch.nn.grad.conv3d_weight(x.detach(), w.shape, g.contiguous(), stride, padding, 1, 3))


@pytest.mark.slow
def test_torch_compile_matches_eager_on_both_fast_paths():
    x = torch.randn(2, 3, 3, 6, 7)
    weights = [torch.randn(3, 1, 3, 3, 3), torch.randn(3, 1, 5, 5, 5)]

    def run(fn):
        xa = x.clone().requires_grad_()
        ws = [w.clone().requires_grad_() for w in weights]
        ys = fn(xa, ws)
        sum((y * (i + 1)).sum() for i, y in enumerate(ys)).backward()
        return ys, xa.grad, [w.grad for w in ws]

    eager = run(lambda xa, ws: multi_depthwise_conv3d_cpu(xa, ws))
    compiled = run(torch.compile(lambda xa, ws: multi_depthwise_conv3d_cpu(xa, ws), fullgraph=True))
    for a, b in zip(compiled[0], eager[0]):
        assert_close(a.detach(), b.detach())
    assert_close(compiled[1], eager[1])
    for a, b in zip(compiled[2], eager[2]):
        assert_close(a, b)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (5, 5, 5)])
def test_small_planes_take_the_grouped_convolution(monkeypatch, kernel):
    monkeypatch.setattr(cpu, "_MIN_PLANE", 256)
    calls = []
    for name in ("planes", "rows"):
        monkeypatch.setattr(cpu, f"_weight_grad_by_{name}", lambda *a, name=name: calls.append(name))
    x = torch.randn(2, 3, 2, 12, 12, dtype=torch.float64)  # 144 positions per plane
    g = torch.randn(2, 3, 2, 12, 12, dtype=torch.float64)
    padding = tuple(k // 2 for k in kernel)
    got = depthwise_weight_grad(x.contiguous(memory_format=CL), g.contiguous(memory_format=CL), kernel, (1, 1, 1),
                                padding)
    assert calls == []
    assert_close(got, _expected(x, g, kernel, padding))

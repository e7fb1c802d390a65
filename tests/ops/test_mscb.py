"""The MSCB training and inference ops and the gate convolution against plain PyTorch.

Every case also checks that the op under test really ran (a spy counts its calls), so
a silent fallback to the plain composition cannot pass for it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmscale import MultiScaleConvBlock3d
from mmscale.layers.reference import NaiveMultiScaleConvBlock3d
from mmscale.ops import mscb
from mmscale.ops.gating import gate_conv
from mmscale.ops.gating.gate_conv import gate_conv3d
from mmscale.ops.mscb import cpu
from tests.helpers import (
    assert_close,
    assert_same_buffers,
    assert_same_grads,
    randomise_bn,
    run_pair,
)

CL = torch.channels_last_3d

KERNELS = [(1, 3, 5), ((1, 3, 3), (3, 5, 5)), (3,), (1,), (1, 1, 3)]
# (B, D, H, W): batch 1 (oneDNN answers NCDHW there), D = 1, primes
SHAPES = [(2, 3, 7, 5), (1, 2, 5, 5), (3, 1, 1, 2), (1, 1, 3, 7)]


@pytest.fixture
def spies(monkeypatch):
    calls = {"train": 0, "inference": 0}
    train_apply = cpu.MSCBTrainFunction.apply
    inference = mscb.mscb_inference

    def counted_apply(*args):
        calls["train"] += 1
        return train_apply(*args)

    def counted_inference(*args, **kwargs):
        calls["inference"] += 1
        return inference(*args, **kwargs)

    monkeypatch.setattr(cpu.MSCBTrainFunction, "apply", counted_apply)
    monkeypatch.setattr(mscb, "mscb_inference", counted_inference)
    return calls


def _replace_batchnorms(module, **bn_kwargs):
    for m in list(module.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm3d):
                setattr(m, child_name, nn.BatchNorm3d(child.num_features, **bn_kwargs))


def make_pair(kernels, c_in, c_out, dtype=torch.float64, **bn_kwargs):
    reference = NaiveMultiScaleConvBlock3d(c_in, c_out, kernel_sizes=kernels)
    candidate = MultiScaleConvBlock3d(c_in, c_out, kernel_sizes=kernels, backend="torch")
    if bn_kwargs:
        _replace_batchnorms(reference, **bn_kwargs)
        _replace_batchnorms(candidate, **bn_kwargs)
    else:
        randomise_bn(reference)
    candidate.load_state_dict(reference.state_dict())
    return reference.to(dtype), candidate.to(dtype)


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels", [(4, 4), (3, 5)], ids=["residual", "shortcut"])
@pytest.mark.parametrize("kernels", KERNELS, ids=str)
def test_training_step_matches_the_plain_composition(spies, kernels, channels, shape, layout):
    reference, candidate = make_pair(kernels, *channels)
    b, d, h, w = shape
    x = torch.randn(b, channels[0], d, h, w, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train=True)
    assert spies["train"] == 1
    assert_close(yb, ya, msg="output")
    assert_close(gxb, gxa, msg="input gradient")
    assert_same_grads(reference, candidate)
    assert_same_buffers(reference, candidate)
    # the result has the input's memory format
    assert yb.is_contiguous(memory_format=CL if layout == "cl" and b * d * h * w > 1 else torch.contiguous_format)


def _eval_pair(kernels, channels, shape, layout):
    """(plain output, mmscale output) in eval mode without autograd, same weights and input [B, C, D, H, W]."""
    reference, candidate = make_pair(kernels, *channels)
    reference.eval()
    candidate.eval()
    b, d, h, w = shape
    x = torch.randn(b, channels[0], d, h, w, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        return reference(x), candidate(x)


@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels", [(4, 4), (3, 5)], ids=["residual", "shortcut"])
@pytest.mark.parametrize("kernels", KERNELS, ids=str)
def test_inference_matches_the_plain_composition(spies, kernels, channels, shape, layout):
    expected, got = _eval_pair(kernels, channels, shape, layout)
    assert spies["inference"] == 1
    assert_close(got, expected)


@pytest.mark.parametrize(
    ("channels", "shape", "scaled_products"),
    [
        ((4, 4), (2, 1, 3, 5), 0),  # 30 rows: both BatchNorm scales folded into the weights
        ((8, 12), (1, 2, 1, 5), 1),  # 10 rows < E = 16: the projection's scale on its product
        ((16, 16), (3, 1, 1, 2), 2),  # 6 rows < C = 16: both scales on the products (deep layers)
        ((12, 16), (1, 1, 1, 1), 2),  # one position
    ],
    ids=["weights", "project-product", "both-products", "one-position"],
)
@pytest.mark.parametrize("layout", ["ncdhw", "cl"])
def test_inference_puts_each_batchnorm_scale_on_the_smaller_side(monkeypatch, spies, channels, shape,
                                                                 scaled_products, layout):
    products = []
    linear = cpu._linear

    def counted_linear(rows, weight, bias, scale):
        products.append(scale is not None)
        return linear(rows, weight, bias, scale)

    monkeypatch.setattr(cpu, "_linear", counted_linear)
    expected, got = _eval_pair((1, 3, 5), channels, shape, layout)
    assert spies["inference"] == 1
    assert len(products) == 2 and sum(products) == scaled_products
    assert_close(got, expected)


@pytest.mark.parametrize(
    "bn_kwargs",
    [dict(momentum=None), dict(affine=False), dict(track_running_stats=False), dict(momentum=0.3, eps=1e-3)],
    ids=["cumulative", "no_affine", "no_running_stats", "momentum_eps"],
)
def test_batchnorm_variants_over_several_steps(spies, bn_kwargs):
    reference, candidate = make_pair((1, 3, 5), 4, 4, **bn_kwargs)
    for step in range(3):
        x = torch.randn(2, 4, 3, 5, 6, dtype=torch.float64)
        ya, yb, gxa, gxb = run_pair(reference, candidate, x, train=True, seed=step)
        assert_close(yb, ya, msg=f"output, step {step}")
        assert_close(gxb, gxa, msg=f"input gradient, step {step}")
        assert_same_buffers(reference, candidate)
    assert spies["train"] == 3


def test_float32_training_step_at_a_wider_shape(spies):
    reference, candidate = make_pair((1, 3, 5), 16, 16, dtype=torch.float32)
    x = torch.randn(2, 16, 4, 9, 10)
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train=True)
    assert spies["train"] == 1
    assert_close(yb, ya, msg="output")
    assert_close(gxb, gxa, msg="input gradient")
    assert_same_grads(reference, candidate)
    assert_same_buffers(reference, candidate, dtype=torch.float32)


def test_parameter_gradients_without_an_input_gradient(spies):
    reference, candidate = make_pair((1, 3), 4, 4)
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    reference(x).square().sum().backward()
    candidate(x).square().sum().backward()
    assert spies["train"] == 1
    assert_same_grads(reference, candidate)


@pytest.mark.parametrize("case", ["stride", "concat", "eval_with_grad"])
def test_other_configurations_use_the_general_path(spies, case):
    kwargs = dict(stride=(1, 2, 2)) if case == "stride" else dict(combine="concat") if case == "concat" else {}
    reference = NaiveMultiScaleConvBlock3d(4, 4, kernel_sizes=(1, 3), **kwargs).double()
    candidate = MultiScaleConvBlock3d(4, 4, kernel_sizes=(1, 3), backend="torch", **kwargs).double()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 3, 6, 6, dtype=torch.float64)
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train=case != "eval_with_grad")
    assert spies == {"train": 0, "inference": 0}
    assert_close(yb, ya)
    assert_close(gxb, gxa)


def test_double_backward_matches_the_plain_composition(spies):
    reference, candidate = make_pair((1, 3), 4, 4)
    reference.train()
    candidate.train()
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    penalties = []
    for module in (reference, candidate):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(module(xx).square().sum(), xx, create_graph=True)
        penalty = g.square().sum()  # a gradient penalty needs the second derivative
        penalty.backward()
        penalties.append(penalty.detach())
    assert spies["train"] == 1
    assert_close(penalties[1], penalties[0])
    assert_same_grads(reference, candidate)


@pytest.mark.parametrize("kernel", [7, (1, 3, 5), 3, 1])
@pytest.mark.parametrize("shape", [(2, 2, 3, 9, 8), (1, 2, 1, 5, 5), (3, 1, 4, 4, 7)], ids=str)
def test_gate_convolution_matches_conv3d(monkeypatch, kernel, shape):
    calls = []
    real_apply = gate_conv._GateConv3d.apply
    monkeypatch.setattr(gate_conv._GateConv3d, "apply", lambda *a: calls.append(1) or real_apply(*a))
    k = (kernel,) * 3 if isinstance(kernel, int) else kernel
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, shape[1], *k, dtype=torch.float64, requires_grad=True)
    y = gate_conv3d(x, w)
    assert calls == [1]
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    y_ref = F.conv3d(x, w, None, 1, tuple(q // 2 for q in k))
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), g)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)
    assert_close(gw, gw_ref)


def test_gate_convolution_gradcheck():
    x = torch.randn(2, 2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gate_conv3d, (x, w))


def test_gate_convolution_with_a_bias_and_many_input_channels_gradcheck():
    # the gated fusion's shape of gate: 2 C -> 2 maps, with a bias
    x = torch.randn(2, 10, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 10, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gate_conv3d, (x, w, b))


def test_gate_convolution_in_channels_last_and_float32():
    x = torch.randn(2, 2, 3, 8, 8).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(1, 2, 7, 7, 7, requires_grad=True)
    gx, gw = torch.autograd.grad(gate_conv3d(x, w).square().sum(), (x, w))
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    gxd, gwd = torch.autograd.grad(F.conv3d(xd, wd, None, 1, 3).square().sum(), (xd, wd))
    assert_close(gx, gxd, torch.float32)
    assert_close(gw, gwd, torch.float32)


def _penalty_grads(module, x):
    """Parameter gradients of a gradient penalty ``|d sum(y^2) / dx|^2`` (needs double backward)."""
    module.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(module(xx).square().sum(), xx, create_graph=True)
    g.square().sum().backward()
    return {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("which", ["attention", "fusion", "bottleneck"])
def test_gradient_penalty_through_every_cpu_autograd_function(which):
    # the depthwise, gate, dense and grouped convolutions' own backwards must carry the
    # graph under create_graph=True, or second-order terms would silently vanish
    from mmscale import MultiScaleConvAttention3d
    from mmscale.layers import GatedMapFusion3d
    from mmscale.layers.backbone import GroupedBottleneck3d
    from mmscale.layers.reference import NaiveMultiScaleConvAttention3d

    torch.manual_seed(0)
    if which == "attention":
        fast = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3, 5), reduction=2, spatial_kernel=3).double()
        plain = NaiveMultiScaleConvAttention3d(4, kernel_sizes=(1, 3, 5), reduction=2, spatial_kernel=3).double()
        plain.load_state_dict(fast.state_dict())
        x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    elif which == "fusion":
        fast = GatedMapFusion3d(4, 4, always_project=True).double()
        plain = GatedMapFusion3d(4, 4, always_project=True).double()
        plain.load_state_dict(fast.state_dict())
        for conv in (plain.gate_x, plain.gate_y, plain.conv_x, plain.conv_y):
            conv.register_forward_pre_hook(lambda module, args: None)
        y = torch.randn(2, 4, 2, 4, 4, dtype=torch.float64)
        fast_fn, plain_fn = fast, plain
        fast = _Bind(fast_fn, y)
        plain = _Bind(plain_fn, y)
        x = torch.randn(2, 4, 2, 4, 4, dtype=torch.float64)
    else:
        fast = GroupedBottleneck3d(8, 8, 8, cardinality=4, se_reduction=0).double()
        plain = GroupedBottleneck3d(8, 8, 8, cardinality=4, se_reduction=0).double()
        plain.load_state_dict(fast.state_dict())
        plain.conv2.register_forward_pre_hook(lambda module, args: None)
        x = torch.randn(2, 8, 3, 5, 5, dtype=torch.float64)
    got, want = _penalty_grads(fast, x), _penalty_grads(plain, x)
    for name, g in want.items():
        assert_close(got[name], g, msg=name)


class _Bind(nn.Module):
    """A fusion with its finer map fixed, as a one-input module."""

    def __init__(self, fusion, y):
        super().__init__()
        self.fusion, self.y = fusion, y

    def forward(self, x):
        return self.fusion(x, self.y)

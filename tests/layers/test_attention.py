"""E3D-MSCA layers against the naive composition on the same weights."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmscale import (
    ChannelAttention3d,
    MultiScaleConvAttention3d,
    MultiScaleConvBlock3d,
    MultiScaleDepthwiseConv3d,
    SpatialAttention3d,
    UpConv3d,
)
from mmscale.layers.reference import (
    NaiveChannelAttention3d,
    NaiveMultiScaleConvAttention3d,
    NaiveMultiScaleConvBlock3d,
    NaiveMultiScaleDepthwiseConv3d,
    NaiveSpatialAttention3d,
    NaiveUpConv3d,
)
from tests.helpers import (
    assert_close,
    assert_same_buffers,
    assert_same_grads,
    randomise_bn,
    run_pair,
)

# (naive class, mmscale class, constructor kwargs, input channels)
CASES = {
    "ca": (NaiveChannelAttention3d, ChannelAttention3d, dict(channels=20, reduction=16), 20),
    "ca_c1": (NaiveChannelAttention3d, ChannelAttention3d, dict(channels=1), 1),
    "sa": (NaiveSpatialAttention3d, SpatialAttention3d, dict(kernel_size=5), 3),
    "sa_aniso": (NaiveSpatialAttention3d, SpatialAttention3d, dict(kernel_size=(1, 3, 5)), 4),
    "msdc": (NaiveMultiScaleDepthwiseConv3d, MultiScaleDepthwiseConv3d, dict(channels=6), 6),
    "msdc_aniso_concat": (
        NaiveMultiScaleDepthwiseConv3d,
        MultiScaleDepthwiseConv3d,
        dict(channels=5, kernel_sizes=((1, 3, 3), (3, 5, 5)), combine="concat"),
        5,
    ),
    "msdc_stride2": (
        NaiveMultiScaleDepthwiseConv3d, MultiScaleDepthwiseConv3d, dict(channels=3, kernel_sizes=(1, 3), stride=2), 3,
    ),
    "mscb": (NaiveMultiScaleConvBlock3d, MultiScaleConvBlock3d, dict(in_channels=8), 8),
    "mscb_out": (
        NaiveMultiScaleConvBlock3d, MultiScaleConvBlock3d, dict(in_channels=6, out_channels=9, kernel_sizes=(3, 5)), 6,
    ),
    "mscb_concat_stride": (
        NaiveMultiScaleConvBlock3d,
        MultiScaleConvBlock3d,
        dict(in_channels=4, out_channels=6, kernel_sizes=(1, (1, 3, 3)), combine="concat", stride=(1, 2, 2)),
        4,
    ),
    "msca": (NaiveMultiScaleConvAttention3d, MultiScaleConvAttention3d, dict(channels=16), 16),
    "msca_c3_aniso": (
        NaiveMultiScaleConvAttention3d,
        MultiScaleConvAttention3d,
        dict(channels=3, kernel_sizes=((1, 3, 3), 3, (3, 5, 5)), reduction=4, spatial_kernel=3),
        3,
    ),
    "upconv": (NaiveUpConv3d, UpConv3d, dict(in_channels=6, out_channels=4), 6),
}

SHAPES = [(2, 3, 7, 11), (1, 1, 5, 5), (3, 2, 1, 13)]  # (B, D, H, W): D = 1, primes, batch 1


def make_pair(name, dtype=torch.float64):
    naive_cls, cls, kwargs, channels = CASES[name]
    reference = naive_cls(**kwargs)
    randomise_bn(reference)
    candidate = cls(**kwargs, backend="torch") if cls is not SpatialAttention3d else cls(**kwargs, backend="torch")
    candidate.load_state_dict(reference.state_dict())
    return reference.to(dtype), candidate.to(dtype), channels


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_naive_composition(name, shape, train, dtype):
    reference, candidate, channels = make_pair(name, dtype)
    b, d, h, w = shape
    x = torch.randn(b, channels, d, h, w, dtype=dtype)
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train)
    assert yb.shape == ya.shape
    assert_close(yb, ya, msg="output")
    assert_close(gxb, gxa, msg="input gradient")
    assert_same_grads(reference, candidate)
    assert_same_buffers(reference, candidate)


def test_running_stats_update_like_batchnorm_over_several_steps():
    reference, candidate, channels = make_pair("msca", torch.float64)
    for bn in [m for m in list(reference.modules()) + list(candidate.modules()) if isinstance(m, torch.nn.BatchNorm3d)]:
        bn.momentum = None  # cumulative average: depends on num_batches_tracked
    for step in range(3):
        x = torch.randn(2, channels, 2, 5, 5, dtype=torch.float64)
        run_pair(reference, candidate, x, train=True, seed=step)
    assert_same_buffers(reference, candidate)
    assert int(candidate.mscb.expand_bn.num_batches_tracked) == 3


@given(
    channels=st.integers(1, 5),
    b=st.integers(1, 2),
    d=st.integers(1, 4),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    expansion=st.integers(1, 3),
    reduction=st.sampled_from([1, 2, 16]),
    kernels=st.sampled_from([(1, 3, 5), (3,), ((1, 3, 3), (3, 1, 5)), (5, 1)]),
    train=st.booleans(),
)
def test_property_any_shape_matches_naive(channels, b, d, h, w, expansion, reduction, kernels, train):
    reference = NaiveMultiScaleConvAttention3d(channels, kernels, expansion, reduction, spatial_kernel=3)
    randomise_bn(reference)
    candidate = MultiScaleConvAttention3d(channels, kernels, expansion, reduction, spatial_kernel=3, backend="torch")
    candidate.load_state_dict(reference.state_dict())
    reference.double()
    candidate.double()
    x = torch.randn(b, channels, d, h, w, dtype=torch.float64)
    if train and b * d * h * w == 1:
        return  # BatchNorm cannot normalise a single value per channel; nn.BatchNorm3d raises too
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train)
    assert_close(yb, ya)
    assert_close(gxb, gxa)
    assert_same_grads(reference, candidate)


def test_gradcheck_float64():
    layer = MultiScaleConvAttention3d(3, kernel_sizes=(1, (1, 3, 3), 3), reduction=2, spatial_kernel=3,
                                      backend="torch").double()
    randomise_bn(layer)
    x = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        layer.train(train)
        assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradcheck_block_with_stride_and_concat():
    layer = MultiScaleConvBlock3d(2, 3, kernel_sizes=(1, 3), stride=2, combine="concat", backend="torch").double()
    randomise_bn(layer)
    x = torch.randn(2, 2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_memory_formats_and_non_contiguous_inputs(train):
    layer = MultiScaleConvAttention3d(8, backend="torch").train(train)
    base = torch.randn(2, 8, 3, 9, 10)
    expected = layer(base)
    cl = base.contiguous(memory_format=torch.channels_last_3d)
    out_cl = layer(cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last_3d)
    assert_close(out_cl, expected, torch.float32)
    strided = torch.randn(2, 8, 3, 9, 20)[..., ::2]  # non-contiguous view
    assert not strided.is_contiguous()
    assert_close(layer(strided), layer(strided.contiguous()), torch.float32)
    permuted = base.permute(0, 1, 2, 4, 3)  # transposed H/W view
    assert_close(layer(permuted), layer(permuted.contiguous()), torch.float32)
    assert expected.is_contiguous()


def test_cpu_autocast_bfloat16():
    layer = MultiScaleConvAttention3d(8, backend="torch")
    randomise_bn(layer)
    x = torch.randn(2, 8, 2, 6, 6)
    for train in (False, True):
        layer.train(train)
        expected = layer(x).detach()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x.requires_grad_())
        assert out.dtype in (torch.bfloat16, torch.float32)
        assert torch.isfinite(out).all()
        assert_close(out.float().detach(), expected, torch.bfloat16)
        out.float().sum().backward()
        assert torch.isfinite(x.grad).all()
        x = x.detach()


@pytest.mark.slow
def test_torch_compile_smoke():
    layer = MultiScaleConvAttention3d(4, kernel_sizes=(1, 3), backend="torch")
    compiled = torch.compile(layer)
    x = torch.randn(1, 4, 2, 5, 5, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    assert_close(out.detach(), layer(x).detach(), torch.float32)
    assert torch.isfinite(x.grad).all()


def test_state_dict_round_trip_and_weights_only_load():
    layer = MultiScaleConvAttention3d(6, kernel_sizes=((1, 3, 3), 5)).eval()
    randomise_bn(layer)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = MultiScaleConvAttention3d(6, kernel_sizes=((1, 3, 3), 5)).eval()
    fresh.load_state_dict(state)
    naive = NaiveMultiScaleConvAttention3d(6, kernel_sizes=((1, 3, 3), 5)).eval()
    naive.load_state_dict(state)
    x = torch.randn(1, 6, 2, 7, 7)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
        assert_close(fresh(x), naive(x), torch.float32)
    # the same keys, shapes and order as the naive composition: nothing extra
    assert [(k, v.shape) for k, v in state.items()] == [(k, v.shape) for k, v in naive.state_dict().items()]


def test_parameter_shapes_match_the_design():
    layer = MultiScaleConvAttention3d(32, kernel_sizes=(1, 3, 5), expansion=2, reduction=16, spatial_kernel=7)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes["ca.fc1.weight"] == (2, 32, 1, 1, 1)
    assert shapes["ca.fc2.weight"] == (32, 2, 1, 1, 1)
    assert shapes["sa.conv.weight"] == (1, 2, 7, 7, 7)
    assert shapes["mscb.expand.weight"] == (64, 32, 1, 1, 1)
    assert shapes["mscb.dwconv.branches.2.conv.weight"] == (64, 1, 5, 5, 5)
    assert shapes["mscb.project.weight"] == (32, 64, 1, 1, 1)
    assert not any("bias" in k and "bn" not in k for k in shapes)
    assert "mscb.shortcut.weight" not in shapes


def test_shared_spatial_attention():
    sa = SpatialAttention3d(3)
    a = MultiScaleConvAttention3d(8, spatial_attention=sa)
    b = MultiScaleConvAttention3d(4, spatial_attention=sa)
    assert a.sa is b.sa
    gate = a.spatial_gate(torch.randn(1, 8, 2, 5, 5))
    assert gate.shape == (1, 1, 2, 5, 5) and (gate > 0).all() and (gate < 1).all()
    with pytest.raises(TypeError, match="spatial_attention"):
        MultiScaleConvAttention3d(8, spatial_attention=torch.nn.Identity())


def test_spatial_gate_is_the_gate_that_forward_applies():
    layer = MultiScaleConvAttention3d(5, spatial_kernel=3, backend="torch").eval()
    x = torch.randn(2, 5, 2, 6, 6)
    expected = layer.sa.gate(layer.ca(x))
    assert_close(layer.spatial_gate(x), expected, torch.float32)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: MultiScaleConvAttention3d(8, kernel_sizes=(1, 4)), "kernel_sizes"),
        (lambda: MultiScaleConvAttention3d(8, kernel_sizes=(0,)), "kernel_sizes"),
        (lambda: MultiScaleConvAttention3d(8, kernel_sizes=(-3,)), "kernel_sizes"),
        (lambda: MultiScaleConvAttention3d(8, kernel_sizes=((1, 3),)), "kernel_sizes"),
        (lambda: MultiScaleConvAttention3d(8, kernel_sizes=()), "kernel_sizes"),
        (lambda: MultiScaleConvAttention3d(0), "channels"),
        (lambda: MultiScaleConvAttention3d(8, spatial_kernel=4), "kernel_size"),
        (lambda: MultiScaleConvAttention3d(8, backend="cuda"), "backend"),
        (lambda: ChannelAttention3d(8, reduction=0), "reduction"),
        (lambda: SpatialAttention3d(2), "kernel_size"),
        (lambda: MultiScaleDepthwiseConv3d(8, combine="mean"), "combine"),
        (lambda: MultiScaleDepthwiseConv3d(8, stride=0), "stride"),
        (lambda: MultiScaleConvBlock3d(8, expansion=0), "expansion"),
        (lambda: MultiScaleConvBlock3d(8, out_channels=-1), "out_channels"),
        (lambda: UpConv3d(8, 4, kernel_size=2), "kernel_size"),
    ],
)
def test_bad_arguments_raise_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 8, 5, 5), ValueError, r"\[B, C, D, H, W\]"),
        (torch.randn(2, 4, 2, 5, 5), ValueError, "channels"),
        (torch.randn(0, 8, 2, 5, 5), ValueError, "empty"),
        (torch.randn(1, 8, 0, 5, 5), ValueError, "empty"),
        (torch.ones(1, 8, 2, 5, 5, dtype=torch.long), TypeError, "floating"),
        ([[1.0]], TypeError, "Tensor"),
    ],
)
@pytest.mark.parametrize("layer_cls", [MultiScaleConvAttention3d, ChannelAttention3d, MultiScaleConvBlock3d])
def test_bad_inputs_raise_clear_errors(layer_cls, x, error, match):
    layer = layer_cls(8)
    with pytest.raises(error, match=match):
        layer(x)


def test_triton_request_on_cpu_falls_back_with_one_warning(monkeypatch):
    from mmscale.ops import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_dispatch, "_warned", set())
    layer = MultiScaleConvAttention3d(4, backend="triton")
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.warns(RuntimeWarning, match="triton"):
        layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # warned once per op, not on every call
    monkeypatch.setenv("MMSCALE_STRICT", "1")
    with pytest.raises(RuntimeError, match="MMSCALE_STRICT"):
        layer(x)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_parameter_gradients_when_the_input_needs_none(train):
    # the usual training step: the image does not require grad, the weights do
    reference, candidate, channels = make_pair("msca", torch.float64)
    reference.train(train)
    candidate.train(train)
    x = torch.randn(2, channels, 2, 5, 7, dtype=torch.float64)
    reference(x).square().sum().backward()
    candidate(x).square().sum().backward()
    assert_same_grads(reference, candidate)


def test_inference_mode_matches_eval_with_grad():
    _, layer, channels = make_pair("msca", torch.float32)
    layer.eval()
    x = torch.randn(2, channels, 3, 6, 6)
    with torch.inference_mode():
        fast = layer(x)
    assert_close(fast, layer(x.requires_grad_()).detach(), torch.float32)


def test_torch_export_with_a_dynamic_batch():
    layer = MultiScaleConvAttention3d(8, kernel_sizes=(1, 3)).eval()
    randomise_bn(layer)
    x = torch.randn(2, 8, 3, 6, 6)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(layer, (x,), dynamic_shapes={"x": {0: batch}})
    other = torch.randn(5, 8, 3, 6, 6)
    with torch.no_grad():
        assert_close(program.module()(other), layer(other), torch.float32)


def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_frozen_batchnorm_inside_a_training_model_keeps_running_stats():
    reference, candidate, channels = make_pair("msca", torch.float64)
    for model in (reference, candidate):
        model.train()
        for bn in _batchnorms(model):
            bn.eval()  # the usual fine-tuning setup
    x = torch.randn(2, channels, 2, 5, 5, dtype=torch.float64)
    assert_close(candidate(x), reference(x))
    assert_same_buffers(reference, candidate)
    assert int(candidate.mscb.expand_bn.num_batches_tracked) == 0


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_variants_per_branch(train):
    def variant(model):
        branches = model.mscb.dwconv.branches
        branches[1].bn = torch.nn.BatchNorm3d(branches[1].bn.num_features, eps=0.5)
        branches[2].bn = torch.nn.BatchNorm3d(branches[2].bn.num_features, track_running_stats=False)
        model.mscb.expand_bn = torch.nn.BatchNorm3d(model.mscb.expand_bn.num_features, affine=False)
        branches[0].bn = torch.nn.BatchNorm3d(branches[0].bn.num_features, affine=False, momentum=None)
        return model

    reference = variant(NaiveMultiScaleConvAttention3d(6)).double()
    candidate = variant(MultiScaleConvAttention3d(6, backend="torch")).double()
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 2, 5, 5, dtype=torch.float64)
    ya, yb, gxa, gxb = run_pair(reference, candidate, x, train)
    assert_close(yb, ya)
    assert_close(gxb, gxa)
    assert_same_grads(reference, candidate)
    assert_same_buffers(reference, candidate)


def test_forward_hooks_and_pruning_see_their_submodules():
    reference, candidate, channels = make_pair("mscb", torch.float64)
    calls = []
    candidate.project.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    x = torch.randn(2, channels, 2, 5, 5, dtype=torch.float64)
    assert_close(candidate.train()(x), reference.train()(x))
    assert len(calls) == 1
    # pruning re-computes the weight in a forward pre-hook: training must keep working
    block = MultiScaleConvBlock3d(channels, backend="torch")
    from torch.nn.utils import prune

    prune.l1_unstructured(block.project, "weight", amount=0.5)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        block(torch.randn(2, channels, 2, 5, 5)).square().mean().backward()
        opt.step()
    assert (block.project.weight == 0).float().mean() >= 0.5


def test_sync_batchnorm_is_called():
    from unittest import mock

    layer = torch.nn.SyncBatchNorm.convert_sync_batchnorm(MultiScaleConvAttention3d(4, backend="torch")).eval()
    naive = torch.nn.SyncBatchNorm.convert_sync_batchnorm(NaiveMultiScaleConvAttention3d(4)).eval()
    naive.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 2, 5, 5)
    with mock.patch.object(torch.nn.SyncBatchNorm, "forward", autospec=True,
                           side_effect=torch.nn.SyncBatchNorm.forward) as forward:
        out = layer(x)
    assert forward.call_count == 5  # expand, three branches, project
    assert_close(out, naive(x), torch.float32)


def test_single_value_per_channel_in_training_names_the_input():
    layer = MultiScaleConvAttention3d(4).train()
    with pytest.raises(ValueError, match="one value per channel"):
        layer(torch.randn(1, 4, 1, 1, 1))


@pytest.mark.parametrize("layer", [MultiScaleConvAttention3d(4), MultiScaleConvBlock3d(4), ChannelAttention3d(4),
                                   SpatialAttention3d(3), MultiScaleDepthwiseConv3d(4), UpConv3d(4, 2)],
                         ids=lambda m: type(m).__name__)
def test_dtype_mismatch_names_the_input(layer):
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        layer(torch.randn(1, 4, 2, 4, 4, dtype=torch.float64))


def test_numpy_integer_sizes_are_accepted():
    np = pytest.importorskip("numpy")
    layer = MultiScaleConvAttention3d(np.int64(8), expansion=np.int32(2))
    assert layer.channels == 8 and isinstance(layer.channels, int)


def test_hook_on_a_nested_layer_sees_its_call():
    """The hook fallback calls nested layers as modules, so a hook on the depthwise stage fires too."""
    block = MultiScaleConvBlock3d(4, backend="torch")
    calls = []
    block.dwconv.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    block(torch.randn(2, 4, 2, 5, 5))
    assert calls == [(2, 8, 2, 5, 5)]


def test_the_block_decides_each_backend_once_per_call(monkeypatch):
    """One decision per op family in forward; the ops below get the resolved name and stay silent."""
    from mmscale.ops import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_dispatch, "_warned", set())
    layer = MultiScaleConvAttention3d(4, backend="triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(torch.randn(1, 4, 2, 4, 4))
    ops = sorted(str(w.message).split(":")[1].strip() for w in caught)
    assert ops == ["gating", "multiscale_depthwise_conv3d"]

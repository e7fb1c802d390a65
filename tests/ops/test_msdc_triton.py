"""Fused Triton multi-scale depthwise convolution vs the PyTorch reference.

Same weights into both; compared: the output, the input gradient, every filter and
BN-parameter gradient, and the running statistics after a training step. Shapes are
tiny on purpose (Triton's interpreter is slow) but awkward: batch 1, D = 1, prime
H/W, channel counts that are not multiples of the block, several tiles per axis.
Kernel outputs are NaN-poisoned before every launch (conftest.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmscale.ops import _dispatch
from mmscale.ops.batch_norm import BatchNormState
from mmscale.ops.msdc import multiscale_depthwise_conv3d, multiscale_depthwise_conv3d_reference
from tests.ops.conftest import DEVICES

# one tolerance table per dtype, (rtol, atol) as everywhere in the tests: forward, gradients, running statistics
TOL = {
    torch.float32: {"fwd": (1e-5, 2e-5), "grad": (1e-4, 1e-4), "stats": (1e-5, 1e-6)},
    torch.float16: {"fwd": (1e-2, 2e-2), "grad": (2e-2, 5e-2), "stats": (1e-3, 1e-3)},
    torch.bfloat16: {"fwd": (5e-2, 1e-1), "grad": (5e-2, 2e-1), "stats": (1e-2, 1e-2)},
}

# (B, E, D, H, W), kernel sizes, combine, block sizes (None: the launcher's choice)
CASES = [
    pytest.param((1, 3, 1, 5, 7), (1, 3, 5), "add", None, ["train", "eval"], id="b1-d1-iso135"),
    pytest.param((2, 5, 3, 7, 5), ((1, 3, 3), (3, 5, 5)), "concat", None, ["train"], id="aniso-concat"),
    pytest.param((1, 5, 2, 3, 5), (1, 3), "add", (16, 4), ["train", "eval"], id="many-tiles"),
    pytest.param((2, 2, 3, 2, 3), ((1, 1, 1), (3, 3, 3), (1, 1, 3), (3, 1, 1)), "add", None, ["train"],
                 id="four-branches"),
    pytest.param((1, 6, 2, 3, 3), (3,), "concat", None, ["eval"], id="one-branch"),
]
CONTIGUOUS = {(1, 6, 2, 3, 3)}  # this case feeds a contiguous (NCDHW) input instead of channels_last_3d


def _params(shape, kernel_sizes, device, seed=0):
    """Filters and BN state (non-trivial) for every branch, on ``device`` in float32."""
    gen = torch.Generator().manual_seed(seed)
    e = shape[1]
    ks = [(k, k, k) if isinstance(k, int) else tuple(k) for k in kernel_sizes]
    weights = [torch.randn(e, 1, *k, generator=gen) / (k[0] * k[1] * k[2]) ** 0.5 for k in ks]
    gammas = [torch.rand(e, generator=gen) + 0.5 for _ in ks]
    betas = [torch.rand(e, generator=gen) + 0.5 for _ in ks]  # a positive shift keeps ReLU6 in its linear range
    means = [0.2 * torch.randn(e, generator=gen) for _ in ks]
    varis = [torch.rand(e, generator=gen) + 0.5 for _ in ks]
    return [[t.to(device) for t in group] for group in (weights, gammas, betas, means, varis)]


def _input(shape, device, dtype, contiguous=False, seed=1):
    h = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    return h if contiguous else h.contiguous(memory_format=torch.channels_last_3d)


def _close(actual, expected, dtype, kind, what):
    rtol, atol = TOL[dtype][kind]
    assert torch.isfinite(actual).all(), f"{what}: unwritten (NaN-poisoned) or non-finite values"
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _states(gammas, betas, means, varis, train, momentum=0.1, eps=1e-5):
    """One ``BatchNormState`` per branch (no batch counter)."""
    return [BatchNormState(g, b, m, v, None, train, momentum, eps)
            for g, b, m, v in zip(gammas, betas, means, varis, strict=True)]


def _run(fn, h, params, train, combine, **kw):
    """One forward + backward; returns output, gradients [h, w..., gamma..., beta...], running stats."""
    weights, gammas, betas, means, varis = [[t.clone().requires_grad_(i < 3) for t in g] for i, g in enumerate(params)]
    h = h.detach().clone().requires_grad_()
    y = fn(h, weights, _states(gammas, betas, means, varis, train), (1, 1, 1), combine, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)
    grads = torch.autograd.grad((y.float() * dy).sum(), [h, *weights, *gammas, *betas])
    return y, grads, means + varis


def _compare(shape, kernel_sizes, combine, device, dtype, train, contiguous=False):
    params = _params(shape, kernel_sizes, device)
    h = _input(shape, device, dtype, contiguous)
    y, grads, stats = _run(multiscale_depthwise_conv3d, h, params, train, combine, backend="triton")
    # the oracle runs in float32 on the same (rounded) input values
    y_ref, grads_ref, stats_ref = _run(multiscale_depthwise_conv3d_reference, h.float(), params, train, combine)
    assert y.dtype == dtype and y.shape == y_ref.shape
    _close(y, y_ref, dtype, "fwd", "output")
    n = len(kernel_sizes)
    names = ["dh"] + [f"dw{k}" for k in range(n)] + [f"dgamma{k}" for k in range(n)] + [f"dbeta{k}" for k in range(n)]
    for name, g, r in zip(names, grads, grads_ref, strict=True):
        _close(g, r, dtype, "grad", name)
    for k, (s, r) in enumerate(zip(stats, stats_ref, strict=True)):
        _close(s, r, dtype, "stats", f"running stat {k}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,kernel_sizes,combine,blocks,modes", CASES)
def test_msdc_matches_reference_fp32(kernels_for, small_blocks, device, shape, kernel_sizes, combine, blocks, modes):
    kernels_for(device, "msdc")
    if blocks is not None:
        small_blocks(*blocks)
    for mode in modes:
        _compare(shape, kernel_sizes, combine, device, torch.float32, mode == "train", shape in CONTIGUOUS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_msdc_half_precision(kernels_for, small_blocks, device, train):
    """float16 and bfloat16 inputs (the kernels widen every load to float32)."""
    kernels_for(device, "msdc")
    for dtype in (torch.float16, torch.bfloat16):
        _compare((2, 3, 2, 5, 3), (1, 3), "add", device, dtype, train)


@pytest.mark.parametrize("device", DEVICES)
def test_msdc_saves_only_input_and_per_channel_state(kernels_for, device):
    """Training memory: autograd keeps h, the filters and [6, NB, E] vectors, no per-branch maps."""
    kernels_for(device, "msdc")
    shape, ks = (1, 4, 3, 5, 5), (1, 3, 5)
    weights, gammas, betas, means, varis = _params(shape, ks, device)
    h = _input(shape, device, torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        multiscale_depthwise_conv3d(h, [w.requires_grad_() for w in weights],
                                    _states(gammas, betas, means, varis, True), backend="triton")
    volume = [t for t in saved if t.dim() == 5 and t.shape[2:] == shape[2:]]
    assert len(volume) == 1 and volume[0].data_ptr() == h.data_ptr()
    # h + the packed filters + prm [6, NB, E]
    assert sum(t.numel() for t in saved) == h.numel() + sum(w.numel() for w in weights) + 6 * len(ks) * shape[1]


@pytest.mark.parametrize("device", DEVICES)
def test_msdc_backward_is_deterministic(kernels_for, small_blocks, device):
    kernels_for(device, "msdc")
    small_blocks(16, 4)  # two spatial tiles per sample: several partials to sum
    params = _params((2, 3, 1, 4, 5), (1, 3), device)
    h = _input((2, 3, 1, 4, 5), device, torch.float32)
    runs = [_run(multiscale_depthwise_conv3d, h, params, True, "add", backend="triton")[1] for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_msdc_batch_of_one_value_raises(kernels_for):
    kernels_for("cpu", "msdc")
    params = _params((1, 2, 1, 1, 1), (1,), "cpu")
    with pytest.raises(ValueError, match="more than 1 value"):
        _run(multiscale_depthwise_conv3d, _input((1, 2, 1, 1, 1), "cpu", torch.float32), params, True, "add",
             backend="triton")


def test_msdc_bad_combine_raises():
    params = _params((1, 2, 1, 3, 3), (1,), "cpu")
    with pytest.raises(ValueError, match="combine"):
        multiscale_depthwise_conv3d(torch.randn(1, 2, 1, 3, 3), params[0], _states(*params[1:], False),
                                    combine="stack", backend="torch")


@pytest.mark.parametrize(
    "stride,dtype,reason",
    [((2, 2, 2), torch.float32, "stride"), ((1, 1, 1), torch.float64, "dtype")],
)
def test_msdc_unsupported_arguments_fall_back_loudly(kernels_for, monkeypatch, stride, dtype, reason):
    """Stride 2 and float64 run the PyTorch path, with a warning that names why; strict raises."""
    kernels_for("cpu", "msdc")
    monkeypatch.setattr(_dispatch, "_warned", set())
    params = _params((1, 2, 2, 4, 4), (1, 3), "cpu")
    params = [[t.to(dtype) for t in g] for g in params]
    h = torch.randn(1, 2, 2, 4, 4, dtype=dtype)
    args = (h, params[0], _states(*params[1:], False), stride)
    with pytest.warns(RuntimeWarning, match=reason):
        y = multiscale_depthwise_conv3d(*args, backend="triton")
    torch.testing.assert_close(y, multiscale_depthwise_conv3d_reference(*args))
    monkeypatch.setenv("MMSCALE_STRICT", "1")
    with pytest.raises(RuntimeError, match=reason):
        multiscale_depthwise_conv3d(*args, backend="triton")


def test_msdc_auto_stays_on_torch_for_cpu_tensors(kernels_for, monkeypatch):
    """``auto`` never picks the interpreter: it is for CUDA tensors only."""
    kernels_for("cpu", "msdc")
    monkeypatch.delenv("MMSCALE_BACKEND", raising=False)
    assert _dispatch.resolve_backend("auto", torch.zeros(1), op="msdc") == "torch"
    params = _params((1, 2, 1, 3, 3), (1,), "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multiscale_depthwise_conv3d(torch.randn(1, 2, 1, 3, 3), params[0], _states(*params[1:], False))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(1, 2), e=st.integers(1, 4), d=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5),
    kernel_sizes=st.lists(st.tuples(*[st.sampled_from([1, 3])] * 3), min_size=1, max_size=3),
    combine=st.sampled_from(["add", "concat"]),
)
def test_property_msdc_eval_matches_reference(kernels_for, b, e, d, h, w, kernel_sizes, combine):
    """Any small shape, any mix of odd (anisotropic) windows: eval forward and gradients agree."""
    kernels_for("cpu", "msdc")
    _compare((b, e, d, h, w), kernel_sizes, combine, "cpu", torch.float32, False)


def test_samples_beyond_int32_indexing_fall_back_loudly(kernels_for, monkeypatch):
    """A sample of 2**31 voxels or more runs in PyTorch (strict: raises), never in the int32-indexed kernels."""
    from mmscale.ops.gating import channel_pool

    kernels_for("cpu", "msdc")
    kernels_for("cpu", "gating")
    monkeypatch.setenv("MMSCALE_STRICT", "1")
    huge = torch.zeros(1).expand(1, 2, 2**11, 2**10, 2**10)  # 2**31 voxels, no memory
    params = _params((1, 2, 1, 1, 1), (1,), "cpu")
    with pytest.raises(RuntimeError, match="below 2\\*\\*31"):
        multiscale_depthwise_conv3d(huge, params[0], _states(*params[1:], False), backend="triton")
    with pytest.raises(RuntimeError, match="below 2\\*\\*31"):
        channel_pool(huge, backend="triton")

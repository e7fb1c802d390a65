"""The CPU depthwise-convolution autograd function against F.conv3d and finite differences."""

import pytest
import torch
import torch.nn.functional as F

from mmscale.ops.depthwise_conv3d import (
    depthwise_conv3d,
    depthwise_conv3d_reference,
    depthwise_weight_grad,
    multi_depthwise_conv3d,
    multi_depthwise_conv3d_cpu,
)
from tests.helpers import assert_close

CASES = [
    # (B, C, D, H, W), kernel sizes, stride
    ((2, 3, 4, 7, 5), [(1, 1, 1), (3, 3, 3), (5, 5, 5)], (1, 1, 1)),
    ((1, 1, 1, 5, 5), [(1, 3, 3), (3, 5, 5)], (1, 1, 1)),
    ((2, 5, 3, 11, 13), [(3, 1, 5)], (1, 1, 1)),
    ((2, 4, 5, 9, 8), [(1, 1, 1), (3, 3, 3)], (2, 2, 2)),
    ((1, 2, 3, 7, 7), [(5, 3, 3)], (1, 2, 3)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, kernels, stride", CASES)
def test_multi_depthwise_matches_conv3d(shape, kernels, stride, dtype):
    x = torch.randn(shape, dtype=dtype)
    weights = [torch.randn(shape[1], 1, *k, dtype=dtype) for k in kernels]
    paddings = [tuple(k // 2 for k in ks) for ks in kernels]
    xa = x.clone().requires_grad_()
    wa = [w.clone().requires_grad_() for w in weights]
    outs = multi_depthwise_conv3d_cpu(xa, wa, stride, paddings)
    xb = x.clone().requires_grad_()
    wb = [w.clone().requires_grad_() for w in weights]
    refs = [depthwise_conv3d_reference(xb, w, None, stride, p) for w, p in zip(wb, paddings)]
    grads = [torch.randn_like(r) for r in refs]
    sum((o * g).sum() for o, g in zip(outs, grads)).backward()
    sum((r * g).sum() for r, g in zip(refs, grads)).backward()
    for o, r in zip(outs, refs):
        assert_close(o, r)
    assert_close(xa.grad, xb.grad)
    for a, b in zip(wa, wb):
        assert_close(a.grad, b.grad)


def test_gradcheck_inputs_and_weights():
    x = torch.randn(2, 3, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 1, 1, 1, 1, dtype=torch.float64, requires_grad=True)
    w3 = torch.randn(3, 1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    w5 = torch.randn(3, 1, 3, 5, 3, dtype=torch.float64, requires_grad=True)

    def f(x, w1, w3, w5):
        return multi_depthwise_conv3d_cpu(x, [w1, w3, w5])

    assert torch.autograd.gradcheck(f, (x, w1, w3, w5), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, w: multi_depthwise_conv3d_cpu(x, [w], (2, 1, 2)), (x, w5), fast_mode=True)


def test_weight_grad_matches_torch_nn_grad():
    x = torch.randn(3, 4, 5, 6, 7, dtype=torch.float64)
    w_shape = (4, 1, 3, 5, 3)
    for stride in [(1, 1, 1), (2, 3, 2)]:
        out = F.conv3d(x, torch.zeros(w_shape, dtype=torch.float64), None, stride, (1, 2, 1), 1, 4)
        g = torch.randn_like(out)
        expected = torch.nn.grad.conv3d_weight(x, w_shape, g, stride, (1, 2, 1), 1, 4)
        assert_close(depthwise_weight_grad(x, g, (3, 5, 3), stride, (1, 2, 1)), expected)


def test_single_filter_wrapper_and_other_dtypes_use_reference():
    x = torch.randn(1, 2, 3, 4, 4)
    w = torch.randn(2, 1, 3, 3, 3)
    assert_close(depthwise_conv3d(x, w, padding=(1, 1, 1)), depthwise_conv3d_reference(x, w, padding=(1, 1, 1)))
    xb = x.bfloat16()
    out = multi_depthwise_conv3d(xb, [w.bfloat16()])[0]
    assert out.dtype == torch.bfloat16
    assert_close(out, depthwise_conv3d_reference(xb, w.bfloat16(), padding=(1, 1, 1)), torch.bfloat16)

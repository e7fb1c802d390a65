"""Utilities shared by the tests: weight randomisation and tolerance-table comparisons."""

from __future__ import annotations

import torch

# one tolerance table per dtype: (rtol, atol), atol relative to the reference's scale
TOLERANCES = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale=None, msg=""):
    """``|actual - expected| <= atol * scale + rtol * |expected|`` with the dtype's tolerances.

    ``scale`` defaults to ``max(|expected|)``, so the absolute part follows the
    magnitude of the tensor instead of a fixed number.
    """
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    expected = expected.to(actual.dtype)
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(scale, 1e-12), msg=msg or None)


def run_pair(reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, train: bool, seed: int = 1):
    """Forward and backward through both modules with the same input and output gradient.

    Returns ``(out_ref, out_cand, grad_x_ref, grad_x_cand)``; parameter gradients stay
    on the modules.
    """
    reference.train(train)
    candidate.train(train)
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    ya = reference(xa)
    yb = candidate(xb)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(ya.shape, generator=gen, dtype=torch.float64).to(ya.dtype)
    ya.backward(gy)
    yb.backward(gy.to(yb.dtype))
    return ya, yb, xa.grad, xb.grad


def assert_same_grads(reference: torch.nn.Module, candidate: torch.nn.Module, dtype=None):
    """Every parameter gradient of ``candidate`` matches ``reference`` (same names, same order).

    Gradients are compared on a common scale (the largest gradient of the module),
    because some are exactly zero in exact arithmetic (e.g. a 1x1x1 depthwise filter
    followed by train-mode BatchNorm is scale invariant) and only rounding noise.
    """
    ref = dict(reference.named_parameters())
    cand = dict(candidate.named_parameters())
    assert list(ref) == list(cand), "parameter names/order differ"
    scale = max(p.grad.abs().max().item() for p in ref.values() if p.grad is not None)
    for name, p in ref.items():
        q = cand[name]
        assert (p.grad is None) == (q.grad is None), f"gradient presence differs for {name}"
        if p.grad is not None:
            assert_close(q.grad, p.grad, dtype, scale=scale, msg=f"gradient of {name}")


def assert_same_buffers(reference: torch.nn.Module, candidate: torch.nn.Module, dtype=None):
    ref = dict(reference.named_buffers())
    cand = dict(candidate.named_buffers())
    assert list(ref) == list(cand), "buffer names/order differ"
    for name, b in ref.items():
        if b.is_floating_point():
            assert_close(cand[name], b, dtype, msg=f"buffer {name}")
        else:
            assert torch.equal(cand[name], b), f"buffer {name}"

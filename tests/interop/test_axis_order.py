"""from_monai / to_monai / SlicesLast: MONAI's slices-last volumes meet mmscale's slices-first layers."""

from __future__ import annotations

import pytest
import torch

from mmscale import (
    MultiScaleConvAttention3d,
    MultiScaleDepthwiseConv3d,
    SlicesLast,
    from_monai,
    to_monai,
)


def test_from_monai_moves_the_slice_axis_to_the_front():
    # a volume whose value is its slice index, in MONAI's [B, C, H, W, D]
    d, h, w = 3, 5, 7
    x = torch.arange(d).float().expand(2, 1, h, w, d)
    y = from_monai(x)
    assert y.shape == (2, 1, d, h, w)
    assert torch.equal(y[:, :, 1], torch.ones(2, 1, h, w))
    # one sample, as transforms see it
    assert from_monai(x[0]).shape == (1, d, h, w)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (3, 4, 5, 6), (1, 1, 1, 1, 1)])
def test_round_trip_is_exact_and_copies_nothing(shape):
    x = torch.randn(shape)
    assert torch.equal(to_monai(from_monai(x)), x)
    assert torch.equal(from_monai(to_monai(x)), x)
    assert from_monai(x).data_ptr() == x.data_ptr()


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(2, 3, 4), ValueError, r"x must be a volume .* got shape \[2, 3, 4\]"),
    (torch.zeros(1, 2, 3, 4, 5, 6), ValueError, "x must be a volume"),
    ([[1.0]], TypeError, "x must be a torch.Tensor, got list"),
])
def test_bad_input_names_the_argument(bad, error, match):
    for fn in (from_monai, to_monai):
        with pytest.raises(error, match=match):
            fn(bad)


def _spread(layer: torch.nn.Module, x: torch.Tensor, slice_axis: int) -> set[int]:
    """The slices (along ``slice_axis`` of the output) that change when slice 2 of the input does."""
    with torch.no_grad():
        base = layer(x)
        bumped = x.clone()
        bumped.select(slice_axis, 2).add_(1.0)
        diff = (layer(bumped) - base).abs()
    other = [a for a in range(diff.dim()) if a != slice_axis]
    return set(torch.nonzero(diff.amax(dim=other) > 1e-6).flatten().tolist())


def test_an_in_plane_kernel_stays_in_its_slice_only_with_the_permute():
    torch.manual_seed(0)
    conv = MultiScaleDepthwiseConv3d(4, kernel_sizes=((1, 3, 3),)).eval()
    x = torch.randn(1, 4, 8, 8, 5)  # MONAI [B, C, H, W, D]: 5 slices, last
    # forgetting the permute: the (1, 3, 3) kernel mixes neighbouring slices
    assert _spread(conv, x, slice_axis=4) == {1, 2, 3}
    # with it, the kernel is in-plane: only slice 2 changes
    assert _spread(SlicesLast(conv), x, slice_axis=4) == {2}
    assert _spread(lambda t: to_monai(conv(from_monai(t))), x, slice_axis=4) == {2}


def test_slices_last_matches_the_layer_on_permuted_input():
    block = MultiScaleConvAttention3d(8, kernel_sizes=((1, 3, 3), 3)).eval()
    wrapped = SlicesLast(block)
    x = torch.randn(2, 8, 12, 10, 4)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), to_monai(block(from_monai(x))))
    # gradients flow through the views
    wrapped.train()
    x.requires_grad_(True)
    wrapped(x).square().mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in block.state_dict()}


def test_slices_last_rejects_bad_arguments():
    with pytest.raises(TypeError, match="module must be an nn.Module, got function"):
        SlicesLast(from_monai)
    block = SlicesLast(MultiScaleConvAttention3d(4))
    with pytest.raises(ValueError, match=r"x must be a batch of volumes \[B, C, H, W, D\]"):
        block(torch.zeros(4, 6, 6, 3))
    flat = SlicesLast(torch.nn.Flatten())
    with pytest.raises(ValueError, match="volume-to-volume modules; Flatten returned"):
        flat(torch.zeros(1, 2, 3, 3, 3))

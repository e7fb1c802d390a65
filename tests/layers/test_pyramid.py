"""BidirectionalPyramid3d: top-down E3D-MSCA path and bottom-up gated fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import BidirectionalPyramid3d, GatedMapFusion3d


def levels(b=2, chans=(8, 16, 32), sizes=((4, 8, 8), (2, 4, 4), (1, 2, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *s, generator=g) for c, s in zip(chans, sizes, strict=False)]


def test_gated_fusion_closed_form():
    torch.manual_seed(0)
    gf = GatedMapFusion3d(6, 3)
    x, y = torch.randn(2, 6, 2, 3, 3), torch.randn(2, 3, 4, 6, 6)
    yr = gf.project(F.interpolate(y, size=(2, 3, 3), mode="trilinear", align_corners=False))
    a = torch.sigmoid(gf.conv_x(x) * gf.conv_y(yr))
    gx = gf.gate_x(torch.cat([x, x * a], 1))
    gy = gf.gate_y(torch.cat([yr, yr * a], 1))
    want = x * gx[:, :1] + x * a * gx[:, 1:] + yr * gy[:, :1] + yr * a * gy[:, 1:]
    torch.testing.assert_close(gf(x, y), want)
    assert gf.gate_x.out_channels == 2 and gf.conv_x.kernel_size == (3, 3, 3)
    assert all(c.bias is not None for c in (gf.project, gf.conv_x, gf.conv_y, gf.gate_x, gf.gate_y))


@pytest.mark.parametrize("shape", [(2, 2, 3, 3), (1, 1, 5, 4)], ids=str)
def test_gated_fusion_gradients_match_the_module_calls(shape):
    # the gate and 3x3x3 convs run through gate_conv3d / dense_conv3d (own CPU backward); a pre-hook forces the
    # plain module calls: outputs and every gradient must agree
    torch.manual_seed(0)
    b, d, h, w = shape
    fast = GatedMapFusion3d(6, 3).double()
    plain = GatedMapFusion3d(6, 3).double()
    plain.load_state_dict(fast.state_dict())
    for conv in (plain.gate_x, plain.gate_y, plain.conv_x, plain.conv_y):
        conv.register_forward_pre_hook(lambda module, args: None)
    x = torch.randn(b, 6, d, h, w, dtype=torch.float64)
    y = torch.randn(b, 3, 2 * d, 2 * h, 2 * w, dtype=torch.float64)
    grads = []
    for module in (fast, plain):
        xx, yy = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = module(xx, yy)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append([out.detach(), xx.grad, yy.grad, *(p.grad for p in module.parameters())])
    for a, b_ in zip(*grads, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


@settings(max_examples=5, deadline=None)
@given(b=st.integers(1, 2), n=st.integers(2, 3), d=st.integers(1, 5), h=st.integers(3, 9))
def test_shapes_with_odd_sizes(b, n, d, h):
    chans = (8, 16, 32)[:n]
    sizes, s = [], (d, h, h + 1)
    for _ in range(n):
        sizes.append(s)
        s = tuple(-(-v // 2) for v in s)  # strided-conv sizes: odd sizes do not halve exactly
    pyr = BidirectionalPyramid3d(chans, reduction=4).eval()
    outs = pyr(levels(b, chans, sizes))
    assert [tuple(o.shape) for o in outs] == [(b, c, *sz) for c, sz in zip(chans, sizes, strict=False)]


def test_top_down_structure_and_gates():
    torch.manual_seed(0)
    pyr = BidirectionalPyramid3d((8, 16, 32), reduction=4).eval()
    feats = levels()
    p = pyr.top_down(feats)
    # Deepest level: E3D-MSCA alone; finer: MSCA(x + UpConv(coarser)).
    torch.testing.assert_close(p[2], pyr.attention[2](feats[2]))
    torch.testing.assert_close(p[1], pyr.attention[1](feats[1] + pyr.up[1](p[2])))
    torch.testing.assert_close(p[0], pyr.attention[0](feats[0] + pyr.up[0](p[1])))
    outs = pyr(feats)
    torch.testing.assert_close(outs[0], p[0])
    torch.testing.assert_close(outs[1], pyr.fuse[0](p[1], p[0]))
    torch.testing.assert_close(outs[2], pyr.fuse[1](p[2], outs[1]))
    p2, gates = pyr.top_down(feats, return_gates=True)
    torch.testing.assert_close(p2[0], p[0])
    for g, f in zip(gates, feats, strict=False):
        assert g.shape == (2, 1, *f.shape[2:]) and ((g > 0) & (g < 1)).all()
    torch.testing.assert_close(gates[2], pyr.attention[2].spatial_gate(feats[2]))


def test_shared_spatial_attention():
    shared = BidirectionalPyramid3d((8, 16, 32))
    assert len({id(m.sa) for m in shared.attention}) == 1
    own = BidirectionalPyramid3d((8, 16, 32), share_spatial_attention=False)
    assert len({id(m.sa) for m in own.attention}) == 3
    sa_size = sum(p.numel() for p in shared.attention[0].sa.parameters())
    assert sum(p.numel() for p in own.parameters()) - sum(p.numel() for p in shared.parameters()) == 2 * sa_size


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    pyr = BidirectionalPyramid3d((8, 16, 32), reduction=4)
    sum(o.pow(2).mean() for o in pyr(levels())).backward()
    for name, p in pyr.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        BidirectionalPyramid3d((8,))
    with pytest.raises(ValueError, match="channels"):
        BidirectionalPyramid3d((8, 0))
    with pytest.raises(ValueError, match="channels"):
        GatedMapFusion3d(0, 4)
    pyr = BidirectionalPyramid3d((8, 16, 32))
    with pytest.raises(ValueError, match="features must hold 3"):
        pyr(levels()[:2])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        pyr(levels(chans=(8, 12, 32)))


# ------------------------------------------------------------------ align_corners=True (the published neck)
def _linear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] 1-D linear interpolation with align_corners=True, written out."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        pos = 0.0 if n_out == 1 else i * (n_in - 1) / (n_out - 1)
        lo = min(int(pos), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = pos - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


def _resize_aligned(x: torch.Tensor, size) -> torch.Tensor:
    d, h, w = (_linear_matrix(n, s) for n, s in zip(x.shape[2:], size, strict=True))
    return torch.einsum("bcxyz,ix,jy,kz->bcijk", x, d, h, w)


def test_gated_fusion_align_corners_true_in_float64():
    torch.manual_seed(0)
    gf = GatedMapFusion3d(6, 3, align_corners=True).double()
    x = torch.randn(2, 6, 2, 3, 3, dtype=torch.float64)
    y = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    yr = gf.project(_resize_aligned(y, (2, 3, 3)))
    a = torch.sigmoid(gf.conv_x(x) * gf.conv_y(yr))
    gx = gf.gate_x(torch.cat([x, x * a], 1))
    gy = gf.gate_y(torch.cat([yr, yr * a], 1))
    want = x * gx[:, :1] + x * a * gx[:, 1:] + yr * gy[:, :1] + yr * a * gy[:, 1:]
    torch.testing.assert_close(gf(x, y), want, rtol=1e-12, atol=1e-12)
    unaligned = GatedMapFusion3d(6, 3).double()
    unaligned.load_state_dict(gf.state_dict())
    assert not torch.allclose(unaligned(x, y), want)  # the option matters here


def test_gated_fusion_projects_only_resized_maps_when_asked():
    torch.manual_seed(0)
    gf = GatedMapFusion3d(4, 4, always_project=False).double()
    x, y = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64), torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    a = torch.sigmoid(gf.conv_x(x) * gf.conv_y(y))  # y used as is: no projection
    gx = gf.gate_x(torch.cat([x, x * a], 1))
    gy = gf.gate_y(torch.cat([y, y * a], 1))
    want = x * gx[:, :1] + x * a * gx[:, 1:] + y * gy[:, :1] + y * a * gy[:, 1:]
    torch.testing.assert_close(gf(x, y), want, rtol=1e-12, atol=1e-12)
    always = GatedMapFusion3d(4, 4).double()
    always.load_state_dict(gf.state_dict())
    assert not torch.allclose(always(x, y), want)
    # Different sizes: resize and project in both settings.
    y2 = torch.randn(1, 4, 4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(gf(x, y2), always(x, y2))
    with pytest.raises(ValueError, match="always_project"):
        GatedMapFusion3d(4, 2, always_project=False)(x, torch.randn(1, 2, 2, 3, 3))
    with pytest.raises(ValueError, match="y must have shape"):
        gf(x, torch.randn(1, 3, 2, 3, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        gf(torch.randn(1, 5, 2, 3, 3), y)


def test_top_down_merge_uses_align_corners_true_in_float64():
    torch.manual_seed(0)
    pyr = BidirectionalPyramid3d((4, 8), align_corners=True, backend="torch").double().eval()
    f0 = torch.randn(1, 4, 3, 5, 5, dtype=torch.float64)
    f1 = torch.randn(1, 8, 1, 2, 2, dtype=torch.float64)
    p1 = pyr.attention[1](f1)
    up = pyr.up[0](p1)  # UpConv3d doubles: (2, 4, 4), then resized to (3, 5, 5)
    p0 = pyr.attention[0](f0 + _resize_aligned(up, (3, 5, 5)))
    outs = pyr.top_down([f0, f1])
    torch.testing.assert_close(outs[0], p0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[1], p1, rtol=1e-10, atol=1e-10)
    fused = pyr([f0, f1])
    torch.testing.assert_close(fused[1], pyr.fuse[0](p1, p0), rtol=1e-10, atol=1e-10)
    assert pyr.fuse[0].align_corners

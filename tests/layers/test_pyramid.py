"""BidirectionalPyramid3d: top-down E3D-MSCA path and bottom-up gated fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import BidirectionalPyramid3d, GatedFusion3d


def levels(b=2, chans=(8, 16, 32), sizes=((4, 8, 8), (2, 4, 4), (1, 2, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *s, generator=g) for c, s in zip(chans, sizes, strict=False)]


def test_gated_fusion_closed_form():
    torch.manual_seed(0)
    gf = GatedFusion3d(6, 3)
    x, y = torch.randn(2, 6, 2, 3, 3), torch.randn(2, 3, 4, 6, 6)
    yr = gf.project(F.interpolate(y, size=(2, 3, 3), mode="trilinear", align_corners=False))
    a = torch.sigmoid(gf.conv_x(x) * gf.conv_y(yr))
    gx = gf.gate_x(torch.cat([x, x * a], 1))
    gy = gf.gate_y(torch.cat([yr, yr * a], 1))
    want = x * gx[:, :1] + x * a * gx[:, 1:] + yr * gy[:, :1] + yr * a * gy[:, 1:]
    torch.testing.assert_close(gf(x, y), want)
    assert gf.gate_x.out_channels == 2 and gf.conv_x.kernel_size == (3, 3, 3)
    assert all(c.bias is not None for c in (gf.project, gf.conv_x, gf.conv_y, gf.gate_x, gf.gate_y))


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
        GatedFusion3d(0, 4)
    pyr = BidirectionalPyramid3d((8, 16, 32))
    with pytest.raises(ValueError, match="features must hold 3"):
        pyr(levels()[:2])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        pyr(levels(chans=(8, 12, 32)))

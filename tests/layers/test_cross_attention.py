"""CrossAttention, GatedVectorFusion, the published single-vector fusion and MultiScaleCrossAttention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import (
    CrossAttention,
    GatedVectorFusion,
    MultiScaleCrossAttention,
    MultiScaleVectorCrossAttention,
)
from mmscale.layers.cross_attention import adaptive_avg_pool3d


# ------------------------------------------------------------------ CrossAttention
@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 3),
    nq=st.integers(1, 6),
    nk=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 100),
)
def test_fused_and_explicit_paths_agree(b, nq, nk, heads, seed):
    torch.manual_seed(seed)
    attn = CrossAttention(8, heads, context_dim=5).eval()
    q, ctx = torch.randn(b, nq, 8), torch.randn(b, nk, 5)
    mask = torch.rand(b, nk) < 0.6  # True = keep
    fused = attn(q, ctx, key_padding_mask=~mask)
    explicit, w = attn(q, ctx, key_padding_mask=~mask, return_attention=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert w.shape == (b, heads, nq, nk)
    has_key = mask.any(-1)
    torch.testing.assert_close(w.sum(-1), has_key.float()[:, None, None].expand(b, heads, nq))
    assert (w.masked_select(~mask[:, None, None, :].expand_as(w)) == 0).all()
    # Samples with no present key get exactly zero output.
    assert (fused[~has_key] == 0).all()
    # Masked keys can change freely.
    ctx2 = torch.where(mask[..., None], ctx, torch.randn_like(ctx) * 10)
    torch.testing.assert_close(attn(q, ctx2, key_padding_mask=~mask), fused, rtol=0, atol=0)


def test_manual_multi_head_math():
    torch.manual_seed(0)
    attn = CrossAttention(6, 2, context_dim=4).eval()
    q, ctx = torch.randn(1, 3, 6), torch.randn(1, 5, 4)
    qh = attn.q_proj(q).view(1, 3, 2, 3).transpose(1, 2)
    kh = attn.k_proj(ctx).view(1, 5, 2, 3).transpose(1, 2)
    vh = attn.v_proj(ctx).view(1, 5, 2, 3).transpose(1, 2)
    w = (qh @ kh.transpose(-1, -2) / 3**0.5).softmax(-1)
    want = attn.out_proj((w @ vh).transpose(1, 2).reshape(1, 3, 6))
    torch.testing.assert_close(attn(q, ctx), want)


@pytest.mark.parametrize("out_proj", [True, False])
def test_one_key_returns_the_value_projection(out_proj):
    torch.manual_seed(0)
    attn = CrossAttention(12, 3, out_proj=out_proj).eval()
    q, ctx = torch.randn(4, 5, 12), torch.randn(4, 1, 12)
    want = attn.out_proj(attn.v_proj(ctx)).expand(4, 5, 12)
    torch.testing.assert_close(attn(q, ctx), want)
    out, w = attn(q, ctx, return_attention=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(w, torch.ones(4, 3, 5, 1))


def test_cross_attention_errors():
    with pytest.raises(ValueError, match="num_heads"):
        CrossAttention(10, 3)
    with pytest.raises(ValueError, match="dim"):
        CrossAttention(0)
    with pytest.raises(ValueError, match="dropout"):
        CrossAttention(4, dropout=1.0)
    attn = CrossAttention(4, context_dim=3)
    with pytest.raises(ValueError, match="query"):
        attn(torch.randn(2, 1, 3), torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="context"):
        attn(torch.randn(2, 1, 4), torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(torch.randn(2, 1, 4), torch.randn(2, 2, 3), key_padding_mask=torch.ones(2, 2))
    # The old True-means-keep argument is refused by name, never reinterpreted.
    with pytest.raises(TypeError, match="key_mask was removed.*key_padding_mask"):
        attn(torch.randn(2, 1, 4), torch.randn(2, 2, 3), key_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError):  # and no positional mask that could mean either
        attn(torch.randn(2, 1, 4), torch.randn(2, 2, 3), torch.ones(2, 2, dtype=torch.bool))


def test_pytorch_habit_mask_matches_multihead_attention():
    torch.manual_seed(0)
    dim, heads = 8, 2
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).double().eval()
    attn = CrossAttention(dim, heads).double().eval()
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    with torch.no_grad():
        for lin, w, bias in ((attn.q_proj, wq, bq), (attn.k_proj, wk, bk), (attn.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        attn.out_proj.weight.copy_(mha.out_proj.weight)
        attn.out_proj.bias.copy_(mha.out_proj.bias)
    q, kv = torch.randn(2, 3, dim, dtype=torch.float64), torch.randn(2, 4, dim, dtype=torch.float64)
    pad = torch.tensor([[False, False, False, True], [False, True, True, False]])  # True = padding
    want, want_w = mha(q, kv, kv, key_padding_mask=pad, average_attn_weights=False)
    got, w = attn(q, kv, key_padding_mask=pad, return_attention=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, want_w, rtol=1e-12, atol=1e-12)
    assert (w[0, ..., 3] == 0).all()  # the padded key gets no attention


# ------------------------------------------------------------------ gated fusion unit
def test_gated_fusion_unit_formula():
    torch.manual_seed(0)
    gfu = GatedVectorFusion(3, 5, 4)
    a, b = torch.randn(2, 3), torch.randn(2, 5)
    u, v = gfu.w_x(a), gfu.w_y(b)
    att = torch.softmax(u * v, dim=-1)
    torch.testing.assert_close(gfu(a, b), u + u * att + v + v * att)


# ------------------------------------------------------------------ the published single-vector fusion
def _bn_train(x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def _lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _ca(q_in, kv_in, ca, heads):
    """Cross-attention written out: per-head softmax(q k^T / sqrt(width / heads)) v, no out-proj."""
    b, d = q_in.shape
    q = _lin(q_in, ca.q_proj).view(b, heads, d // heads)
    k = _lin(kv_in, ca.k_proj).view(b, heads, d // heads)
    v = _lin(kv_in, ca.v_proj).view(b, heads, d // heads)
    score = (q * k).sum(-1, keepdim=True) * (d / heads) ** -0.5  # one key per query
    w = torch.exp(score - score)  # softmax over a single key
    return (w * v).reshape(b, d)


def _gate(a, b, unit):
    u, v = _lin(a, unit.w_x), _lin(b, unit.w_y)
    att = torch.softmax(u * v, dim=-1)
    return u + u * att + v + v * att


def test_vector_fusion_equals_the_published_math_in_float64():
    torch.manual_seed(0)
    fusion = MultiScaleVectorCrossAttention((24, 12, 6), num_heads=(4, 2, 2)).double().train()
    for m in fusion.down:
        m[2].p = 0.0  # make the training-mode pass deterministic (dropout checked below)
    img, tab = torch.randn(5, 24, dtype=torch.float64), torch.randn(5, 24, dtype=torch.float64)

    i0, t0 = _bn_train(img, fusion.image_norm), _bn_train(tab, fusion.table_norm)
    i, t, outs = i0, t0, []
    a_i, a_t = i, t
    for s, heads in enumerate((4, 2, 2)):
        if s:
            i = torch.relu(_lin(i0, fusion.down[s - 1][0])) + _lin(a_i, fusion.image_map[s - 1])
            t = torch.relu(_lin(t0, fusion.down[s - 1][0])) + _lin(a_t, fusion.table_map[s - 1])
        ca = fusion.attn[s]  # one module, both directions
        a_i = _ca(i, t, ca, heads) + i
        a_t = _ca(t, i, ca, heads) + t
        outs.append((a_i + a_t) / 2)
    f1 = _gate(outs[2], outs[1], fusion.merge[1])
    want = _gate(f1, outs[0], fusion.merge[0])
    torch.testing.assert_close(fusion(img, tab), want, rtol=1e-10, atol=1e-10)

    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in fusion.named_children()}
    assert counts == {"image_norm": 48, "table_norm": 48, "attn": 2394, "down": 450,
                      "image_map": 378, "table_map": 378, "merge": 1152}
    assert sum(counts.values()) == 4848
    assert [a.num_heads for a in fusion.attn] == [4, 2, 2]
    assert all(not isinstance(a.out_proj, torch.nn.Linear) for a in fusion.attn)
    assert all(m[2].p == 0.0 for m in fusion.down)
    assert MultiScaleVectorCrossAttention().down[0][2].p == 0.5
    # "sum" is mmscale's former choice.
    summed = MultiScaleVectorCrossAttention((24, 12, 6), combine="sum").double().eval()
    assert summed.combine == "sum"


def test_vector_fusion_ignores_absent_images():
    torch.manual_seed(0)
    fusion = MultiScaleVectorCrossAttention((8, 4), num_heads=1).train()
    img, tab = torch.randn(3, 8), torch.randn(3, 8)
    present = torch.tensor([False, True, True])
    torch.manual_seed(1)
    out = fusion(img, tab, present)
    img2 = img.clone()
    img2[0] = 1e3  # reaches neither the batch statistics nor any output
    torch.manual_seed(1)
    torch.testing.assert_close(fusion(img2, tab, present), out, rtol=0, atol=0)
    fusion.eval()
    out, w = fusion(img, tab, present, return_attention=True)
    assert w["scale0.table_to_image"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
    # No image at all: the BatchNorm is skipped (its statistics stay put).
    fusion.train()
    stats = fusion.image_norm.running_mean.clone()
    assert torch.isfinite(fusion(None, tab)).all()
    torch.testing.assert_close(fusion.image_norm.running_mean, stats, rtol=0, atol=0)
    with pytest.raises(ValueError, match="image"):
        fusion(torch.randn(3, 4), tab)
    with pytest.raises(ValueError, match="table"):
        fusion(img, torch.randn(3, 7))
    with pytest.raises(ValueError, match="image_present"):
        fusion(img, tab, torch.ones(3))
    with pytest.raises(ValueError, match="dims"):
        MultiScaleVectorCrossAttention(())
    with pytest.raises(ValueError, match="num_heads"):
        MultiScaleVectorCrossAttention((8, 4), num_heads=(2, 3))
    with pytest.raises(ValueError, match="combine"):
        MultiScaleVectorCrossAttention((8, 4), num_heads=1, combine="max")
    with pytest.raises(ValueError, match="down_dropout"):
        MultiScaleVectorCrossAttention((8, 4), num_heads=1, down_dropout=1.0)


# ------------------------------------------------------------------ multi-scale cross-attention
def test_matmul_pooling_equals_adaptive_avg_pool():
    g = torch.Generator().manual_seed(0)
    for shape, grid in [((2, 3, 6, 48, 48), (2, 4, 4)), ((1, 2, 1, 3, 5), (2, 4, 4)), ((1, 1, 7, 11, 13), (3, 5, 2))]:
        x = torch.randn(shape, generator=g)
        torch.testing.assert_close(adaptive_avg_pool3d(x, grid), F.adaptive_avg_pool3d(x, grid))


def _levels(b, chans, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *s, generator=g) for c, s in zip(chans, sizes, strict=False)]


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 3),
    levels=st.integers(1, 3),
    dim=st.sampled_from([4, 8]),
    heads=st.sampled_from([1, 2, 4]),
    f=st.integers(1, 5),
    grid=st.sampled_from([(1, 1, 1), (2, 4, 4), (1, 2, 3)]),
    per_level=st.booleans(),
)
def test_multiscale_shapes(b, levels, dim, heads, f, grid, per_level):
    chans = (3, 5, 7)[:levels]
    sizes = [(4, 8, 8), (2, 4, 4), (1, 2, 2)][:levels]
    grids = [grid, (1, 1, 2), (2, 2, 2)][:levels] if per_level else grid
    msca = MultiScaleCrossAttention(chans, tabular_dim=6, dim=dim, num_heads=heads, tokens_per_level=grids).eval()
    out, att = msca(_levels(b, chans, sizes), torch.randn(b, f, 6), return_attention=True)
    assert out.shape == (b, dim) and torch.isfinite(out).all()
    for s in range(levels):
        g = msca.grids[s]
        n = g[0] * g[1] * g[2]
        assert att[f"scale{s}.volume_to_table"].shape == (b, heads, n, f)
        assert att[f"scale{s}.table_to_volume"].shape == (b, heads, f, n)


def test_multiscale_per_scale_widths_and_masking():
    torch.manual_seed(0)
    chans, sizes = (4, 8, 16), [(4, 8, 8), (2, 4, 4), (1, 2, 2)]
    msca = MultiScaleCrossAttention(chans, tabular_dim=6, dim=(16, 8, 4), num_heads=2).eval()
    feats = _levels(3, chans, sizes)
    table = torch.randn(3, 4, 6)
    table_mask = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])  # True = present
    pad = ~table_mask
    present = torch.tensor([True, True, False])
    out = msca(feats, table, table_padding_mask=pad, volume_present=present)
    assert out.shape == (3, 16)
    # Masked table tokens only matter as queries (they are the learned "missing"
    # embedding in the model); as keys they must not: change a masked token's
    # content and only the query side may move -> compare via the attention weights.
    _, w = msca(feats, table, table_padding_mask=pad, volume_present=present, return_attention=True)
    for s in range(3):
        assert (w[f"scale{s}.volume_to_table"][0, :, :, 1] == 0).all()
        assert (w[f"scale{s}.volume_to_table"][1] == 0).all()
        assert (w[f"scale{s}.table_to_volume"][2] == 0).all()
    # Absent volumes: any content gives the same output.
    feats2 = [f.clone() for f in feats]
    for f in feats2:
        f[2] = torch.randn_like(f[2]) * 100
    torch.testing.assert_close(
        msca(feats2, table, table_padding_mask=pad, volume_present=present), out, rtol=0, atol=0
    )
    # No volume at all == all absent.
    none = msca(None, table, table_padding_mask=pad)
    absent = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(none, msca(feats, table, table_padding_mask=pad, volume_present=absent))
    # Per-scale heads.
    per_scale = MultiScaleCrossAttention(chans, tabular_dim=6, dim=(16, 8, 4), num_heads=(4, 2, 1))
    assert [a.num_heads for a in per_scale.volume_attn] == [4, 2, 1]


def test_multiscale_gradients_reach_every_parameter():
    torch.manual_seed(0)
    chans, sizes = (4, 8), [(4, 8, 8), (2, 4, 4)]
    msca = MultiScaleCrossAttention(chans, tabular_dim=6, dim=8, num_heads=2, tokens_per_level=[(2, 2, 2), (1, 2, 2)])
    msca(_levels(2, chans, sizes), torch.randn(2, 3, 6)).pow(2).sum().backward()
    for name, p in msca.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_multiscale_errors():
    with pytest.raises(ValueError, match="volume_dims"):
        MultiScaleCrossAttention((), 4, 8)
    with pytest.raises(ValueError, match="dim"):
        MultiScaleCrossAttention((4, 8), 4, (8, 8, 8))
    with pytest.raises(ValueError, match="tokens_per_level"):
        MultiScaleCrossAttention((4, 8), 4, 8, tokens_per_level=(2, 4))
    with pytest.raises(ValueError, match="num_heads"):
        MultiScaleCrossAttention((4, 8), 4, 6, num_heads=4)
    msca = MultiScaleCrossAttention((4, 8), 6, 8, num_heads=2)
    feats = _levels(2, (4, 8), [(2, 4, 4), (1, 2, 2)])
    table = torch.randn(2, 3, 6)
    with pytest.raises(ValueError, match="table_tokens"):
        msca(feats, torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="volume_features must hold 2"):
        msca(feats[:1], table)
    with pytest.raises(ValueError, match=r"volume_features\[1\]"):
        msca([feats[0], torch.randn(2, 7, 1, 2, 2)], table)
    with pytest.raises(ValueError, match="table_padding_mask"):
        msca(feats, table, table_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="table_mask was removed.*table_padding_mask"):
        msca(feats, table, table_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError):
        msca(feats, table, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="volume_present"):
        msca(feats, table, volume_present=torch.ones(3, dtype=torch.bool))

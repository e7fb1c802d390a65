"""TabularTokenizer: one token per feature, learned missing embeddings, validity mask."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import TabularTokenizer


@settings(max_examples=25, deadline=None)
@given(
    numerical=st.integers(0, 4),
    categorical=st.lists(st.integers(1, 6), max_size=4),
    dim=st.integers(1, 9),
    b=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_shapes_mask_and_missing_embeddings(numerical, categorical, dim, b, seed):
    if numerical + len(categorical) == 0:
        return
    g = torch.Generator().manual_seed(seed)
    tok = TabularTokenizer(numerical, categorical, dim)
    x_num = torch.randn(b, numerical, generator=g)
    x_num[torch.rand(b, numerical, generator=g) < 0.3] = float("nan")
    x_cat = torch.stack(
        [torch.randint(-1, k, (b,), generator=g) for k in categorical], dim=1
    ) if categorical else torch.zeros(b, 0, dtype=torch.long)
    tokens, mask = tok(x_num, x_cat)
    f = numerical + len(categorical)
    assert tokens.shape == (b, f, dim) and mask.shape == (b, f) and mask.dtype == torch.bool
    assert torch.isfinite(tokens).all()
    expected_mask = torch.cat([~torch.isnan(x_num), x_cat >= 0], dim=1)
    assert torch.equal(mask, expected_mask)
    missing = tok.missing.detach().expand(b, -1, -1)
    torch.testing.assert_close(tokens[~mask], missing[~mask], rtol=0, atol=0)
    # Present numerical values follow x * w + b; categorical ones their own embedding row.
    for i in range(numerical):
        ok = mask[:, i]
        want = x_num[ok, i, None] * tok.num_weight[i] + tok.num_bias[i]
        torch.testing.assert_close(tokens[ok, i], want)
    offset = 0
    for j, k in enumerate(categorical):
        ok = mask[:, numerical + j]
        want = tok.cat_embedding.weight[offset + x_cat[ok, j]]
        torch.testing.assert_close(tokens[ok, numerical + j], want)
        offset += k


def test_none_tables_are_all_missing():
    tok = TabularTokenizer(2, (3, 4), 5)
    tokens, mask = tok(None, None, batch_size=3)
    assert not mask.any()
    torch.testing.assert_close(tokens, tok.missing.detach().expand(3, -1, -1))
    tokens, mask = tok(torch.ones(3, 2), None)
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_categories_do_not_share_rows():
    tok = TabularTokenizer(0, (2, 2), 4)
    tokens, _ = tok(None, torch.tensor([[0, 0]]))
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])


def test_nan_never_reaches_gradients():
    tok = TabularTokenizer(2, (3,), 4)
    x = torch.tensor([[float("nan"), 1.0], [2.0, float("nan")]])
    tokens, _ = tok(x, torch.tensor([[-1], [2]]))
    tokens.sum().backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The missing embedding of feature 0 got gradient from sample 0 only.
    assert tok.missing.grad[0].abs().sum() > 0 and tok.missing.grad[1].abs().sum() > 0


@pytest.mark.parametrize(
    "args, name",
    [
        ((-1, (2,), 4), "numerical"),
        ((1, (0,), 4), "categorical"),
        ((0, (), 4), "no features"),
        ((1, (2,), 0), "dim"),
    ],
)
def test_constructor_errors(args, name):
    with pytest.raises(ValueError, match=name):
        TabularTokenizer(*args)


@pytest.mark.parametrize(
    "num, cat, kw, name",
    [
        (torch.ones(2, 3), torch.zeros(2, 2, dtype=torch.long), {}, "numerical"),
        (torch.ones(2), torch.zeros(2, 2, dtype=torch.long), {}, "numerical"),
        (torch.ones(2, 2), torch.zeros(2, 3, dtype=torch.long), {}, "categorical"),
        (torch.ones(2, 2), torch.tensor([[0, 4], [0, 0]]), {}, "column 1"),
        (torch.ones(2, 2), torch.tensor([[-2, 0], [0, 0]]), {}, "column 0"),
        (torch.ones(2, 2), torch.zeros(3, 2, dtype=torch.long), {}, "batch size"),
        (None, None, {}, "batch_size"),
        (torch.ones(2, 2), None, dict(batch_size=4), "batch size"),
    ],
)
def test_forward_errors(num, cat, kw, name):
    tok = TabularTokenizer(2, (3, 4), 5)
    with pytest.raises(ValueError, match=name):
        tok(num, cat, **kw)


@pytest.mark.parametrize(
    "num, cat, name",
    [
        (torch.ones(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), "floating"),
        (torch.ones(2, 2), torch.zeros(2, 2), "integer"),
        ([[1.0, 2.0]], None, "numerical must be a torch.Tensor"),
        (None, [[0, 1]], "categorical must be a torch.Tensor"),
    ],
)
def test_forward_type_errors(num, cat, name):
    """Data of the wrong kind is a TypeError, as in every layer (mmscale._validation's rule)."""
    tok = TabularTokenizer(2, (3, 4), 5)
    with pytest.raises(TypeError, match=name):
        tok(num, cat)


# ------------------------------------------------------------------ TabularKANEncoder
def test_kan_encoder_scalars_fill_and_codes():
    from mmscale.layers import TabularKANEncoder

    torch.manual_seed(0)
    enc = TabularKANEncoder(2, (2, 5, 1), out_dim=6).double()
    with torch.no_grad():
        enc.fill.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64))
    num = torch.tensor([[0.5, float("nan")], [-1.0, 2.0]], dtype=torch.float64)
    cat = torch.tensor([[1, -1, 0], [0, 4, -1]])
    x, valid = enc.scalars(num, cat)
    # Codes spread over [-1, 1] in code order (k = 5: 0 -> -1, 4 -> 1; k = 1: 0).
    want = torch.tensor([[0.5, 0.2, 1.0, 0.4, 0.0], [-1.0, 2.0, -1.0, 1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(x, want, rtol=0, atol=1e-15)
    assert valid.tolist() == [[True, False, True, False, True], [True, True, True, True, False]]
    vec, valid2 = enc(num, cat)
    torch.testing.assert_close(vec, enc.kan(want))
    assert torch.equal(valid, valid2) and vec.shape == (2, 6) and enc.out_dim == 6
    # Missing values never poison the gradients.
    enc(num, cat)[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())
    # A whole table missing: the learned fill for every feature.
    x_none, ok = enc.scalars(None, None, batch_size=2)
    torch.testing.assert_close(x_none, enc.fill.detach().expand(2, 5))
    assert not ok.any()
    assert enc.kan.layers[0].grid_range == (-1.0, 1.0)
    with pytest.raises(ValueError, match="categorical"):
        TabularKANEncoder(1, (0,), 4)
    with pytest.raises(ValueError, match="no features"):
        TabularKANEncoder(0, (), 4)
    with pytest.raises(ValueError, match="numerical"):
        enc(torch.zeros(2, 3, dtype=torch.float64), cat)


def test_infinite_numerical_values_are_refused():
    tok = TabularTokenizer(2, (3,), 4)
    with pytest.raises(ValueError, match="numerical column 1 holds an infinite value"):
        tok(torch.tensor([[0.0, float("inf")]]), torch.tensor([[0]]))
    tokens, mask = tok(torch.tensor([[0.0, float("nan")]]), torch.tensor([[0]]))  # NaN = missing
    assert mask.tolist() == [[True, False, True]] and torch.isfinite(tokens).all()

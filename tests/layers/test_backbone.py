"""PyramidBackbone3d: pyramid shapes, the paper's size, stochastic depth, gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmscale.layers import DropPath, GroupedBottleneck3d, PyramidBackbone3d, SqueezeExcitation3d

SMALL = dict(widths=(16, 32, 64), depths=(1, 1, 1), stem_channels=8, cardinality=4)


def test_paper_pyramid_shapes_and_parameter_count():
    with torch.device("meta"):
        net = PyramidBackbone3d(in_channels=1, stem_in_channels=3)
        feats = net(torch.empty(2, 1, 12, 192, 192))
    assert [tuple(f.shape) for f in feats] == [(2, 256, 6, 48, 48), (2, 512, 3, 24, 24), (2, 1024, 2, 12, 12)]
    assert sum(p.numel() for p in net.parameters()) == 10_502_896  # "about 10.5 M" for the paper preset
    assert net.stem[0].in_channels == 3 and net.stem[0].kernel_size == (7, 7, 7)
    assert net.out_channels == (256, 512, 1024)
    assert [len(s) for s in net.stages] == [3, 4, 6]
    convs = [b.conv2 for s in net.stages for b in s]
    assert all(c.groups == 32 for c in convs)
    assert [s[0].conv2.stride for s in net.stages] == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]
    # Survival probability falls linearly from 1 to 0.5 over the 13 blocks.
    rates = [b.drop_path.drop_prob for s in net.stages for b in s]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.5, 13))


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    d=st.integers(1, 9),
    h=st.integers(5, 20),
    stages=st.integers(1, 4),
    outputs=st.integers(1, 3),
    in_ch=st.integers(1, 2),
)
def test_shapes_across_configurations(b, d, h, stages, outputs, in_ch):
    outputs = min(outputs, stages)
    widths = tuple(16 * 2**i for i in range(stages))
    net = PyramidBackbone3d(in_channels=in_ch, widths=widths, depths=(1,) * stages, stem_channels=8,
                            cardinality=4, num_outputs=outputs).eval()
    x = torch.randn(b, in_ch, d, h, h + 3)
    feats = net(x)
    assert len(feats) == outputs
    size = [d, -(-h // 2), -(-(h + 3) // 2)]  # stem stride (1, 2, 2)
    size = [-(-s // 2) for s in size]  # max pool
    expected = []
    for i in range(stages):
        if i:
            size = [-(-s // 2) for s in size]
        expected.append((b, widths[i], *size))
    assert [tuple(f.shape) for f in feats] == expected[-outputs:]


def test_channel_repeat_equals_summed_stem_weights():
    torch.manual_seed(0)
    net = PyramidBackbone3d(stem_in_channels=3, **SMALL).eval()
    ref = PyramidBackbone3d(stem_in_channels=1, **SMALL).eval()
    state = net.state_dict()
    state["stem.0.weight"] = state["stem.0.weight"].sum(1, keepdim=True)
    ref.load_state_dict(state)
    x = torch.randn(1, 1, 4, 16, 16)
    for a, b in zip(net(x), ref(x), strict=False):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_two_channel_input_fills_a_three_channel_stem():
    torch.manual_seed(0)
    net = PyramidBackbone3d(in_channels=2, stem_in_channels=3, **SMALL).eval()
    ref = PyramidBackbone3d(in_channels=3, stem_in_channels=3, **SMALL).eval()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(1, 2, 4, 16, 16)
    for a, b in zip(net(x), ref(torch.cat([x, x[:, :1]], dim=1)), strict=True):
        torch.testing.assert_close(a, b)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = PyramidBackbone3d(**SMALL, drop_path_rate=0.0)
    feats = net(torch.randn(2, 1, 4, 16, 16))
    sum(f.pow(2).mean() for f in feats).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(2000, 3)
    torch.testing.assert_close(dp.eval()(x), x)
    y = dp.train()(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert (y == y[:, :1]).all()  # whole samples dropped
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_squeeze_excitation_and_block():
    se = SqueezeExcitation3d(32, 16)
    x = torch.randn(2, 32, 2, 3, 3)
    g = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3, 4))))))
    torch.testing.assert_close(se(x), x * g[..., None, None, None])
    blk = GroupedBottleneck3d(16, 16, 16, cardinality=4).eval()
    assert isinstance(blk.shortcut, torch.nn.Identity)
    assert blk(torch.randn(1, 16, 2, 4, 4)).shape == (1, 16, 2, 4, 4)
    with pytest.raises(ValueError, match="cardinality"):
        GroupedBottleneck3d(16, 18, 16, cardinality=4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(widths=(16, 32), depths=(1,)), "widths and depths"),
        (dict(widths=(16,), depths=(0,)), "depths"),
        (dict(widths=(16,), depths=(1,), mid_widths=(6,), cardinality=4), "cardinality"),
        (dict(widths=(16,), depths=(1,), cardinality=4, in_channels=3, stem_in_channels=2), "stem_in_channels"),
        (dict(widths=(16,), depths=(1,), cardinality=4, num_outputs=2), "num_outputs"),
        (dict(widths=(16,), depths=(1,), cardinality=4, drop_path_rate=1.0), "drop_path_rate"),
    ],
)
def test_constructor_errors(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PyramidBackbone3d(**kwargs)


def test_input_error():
    net = PyramidBackbone3d(**SMALL)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(1, 2, 4, 16, 16))
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(1, 4, 16, 16))


# ------------------------------------------------------------------ PENet's choices (the paper preset)
def test_squeeze_excitation_leaky_relu_in_float64():
    torch.manual_seed(0)
    se = SqueezeExcitation3d(8, 4, activation="leaky_relu").double()
    x = torch.randn(2, 8, 2, 3, 3, dtype=torch.float64)
    s = x.mean((2, 3, 4))
    h = s @ se.fc1.weight.T + se.fc1.bias
    h = torch.where(h > 0, h, 0.01 * h)  # LeakyReLU, slope 0.01, written out
    g = 1 / (1 + torch.exp(-(h @ se.fc2.weight.T + se.fc2.bias)))
    torch.testing.assert_close(se(x), x * g[..., None, None, None], rtol=1e-12, atol=1e-12)
    assert (h < 0).any()  # the negative side is exercised
    relu = SqueezeExcitation3d(8, 4).double()
    relu.load_state_dict(se.state_dict())
    assert not torch.allclose(relu(x), se(x))
    net = PyramidBackbone3d(**SMALL, se_activation="leaky_relu")
    assert all(b.se.activation == "leaky_relu" for s in net.stages for b in s)
    with pytest.raises(ValueError, match="activation"):
        SqueezeExcitation3d(8, activation="gelu")
    with pytest.raises(ValueError, match="se_activation"):
        PyramidBackbone3d(**SMALL, se_activation="gelu")


def _branch(blk: GroupedBottleneck3d, x: torch.Tensor) -> torch.Tensor:
    h = blk.act(blk.norm1(blk.conv1(x)))
    h = blk.act(blk.norm2(blk.conv2(h)))
    return blk.se(blk.norm3(blk.conv3(h)))


def test_batch_drop_path_drops_the_whole_batch_without_rescale_or_activation():
    torch.manual_seed(0)
    blk = GroupedBottleneck3d(8, 8, 16, cardinality=4, drop_path=0.5, drop_path_mode="batch").double().train()
    x = torch.randn(3, 8, 2, 4, 4, dtype=torch.float64)
    shortcut = blk.shortcut(x)
    kept = torch.nn.functional.leaky_relu(shortcut + _branch(blk, x), 0.01)  # no 1 / keep factor
    outcomes = []
    for _ in range(40):
        y = blk(x)
        if torch.equal(y, shortcut):  # dropped: the shortcut, no LeakyReLU (it has negatives)
            outcomes.append(0)
        else:
            torch.testing.assert_close(y, kept, rtol=1e-12, atol=1e-12)
            outcomes.append(1)
    assert (shortcut < 0).any()
    assert 0 < sum(outcomes) < 40  # both happen, each time for the whole batch
    # The draw follows torch's seed.
    torch.manual_seed(5)
    first = [torch.equal(blk(x), shortcut) for _ in range(10)]
    torch.manual_seed(5)
    assert [torch.equal(blk(x), shortcut) for _ in range(10)] == first
    torch.testing.assert_close(blk.eval()(x), kept, rtol=1e-12, atol=1e-12)
    # The standalone layer: all or nothing, unscaled.
    dp = DropPath(0.5, mode="batch").train()
    ys = [dp(torch.ones(4, 3)).sum().item() for _ in range(30)]
    assert set(ys) == {0.0, 12.0}
    with pytest.raises(ValueError, match="mode"):
        DropPath(0.1, mode="token")
    with pytest.raises(ValueError, match="drop_path_mode"):
        GroupedBottleneck3d(8, 8, 8, cardinality=4, drop_path_mode="token")


def test_penet_survival_schedule():
    with torch.device("meta"):
        net = PyramidBackbone3d(drop_path_schedule="penet", drop_path_mode="batch")
    survival = [1 - b.drop_path.drop_prob for s in net.stages for b in s]
    want = [1 - (i / 13) * (1 - 0.5) for i in range(13)]
    assert survival == pytest.approx(want, abs=1e-15)
    assert survival[-1] == pytest.approx(7 / 13)
    assert all(b.drop_path.mode == "batch" for s in net.stages for b in s)
    with pytest.raises(ValueError, match="drop_path_schedule"):
        PyramidBackbone3d(**SMALL, drop_path_schedule="cosine")

"""model_throughput's plain reference composition: same weights, same function, plain modules."""

from __future__ import annotations

import torch

from benchmarks.model_throughput import PlainConv3d, image_path, plain_reference
from benchmarks.naive import NaiveMultiScaleConvAttention3d, NaiveUpConv3d
from mmscale import MMCAFNet, MultiScaleConvAttention3d, UpConv3d
from mmscale.layers.backbone import GroupedBottleneck3d


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_plain_reference_swaps_every_fast_layer_and_leaves_the_model_alone():
    model = MMCAFNet.from_preset("tiny").eval()
    n_msca, n_up = _count(model, MultiScaleConvAttention3d), _count(model, UpConv3d)
    assert n_msca > 0 and n_up > 0
    plain = plain_reference(model)
    assert _count(plain, MultiScaleConvAttention3d) == 0 and _count(plain, UpConv3d) == 0
    assert _count(plain, NaiveMultiScaleConvAttention3d) == n_msca
    assert _count(plain, NaiveUpConv3d) == n_up
    # the backbone's grouped convs are called as modules (ATen's backward), not through mmscale's op
    n_blocks = _count(model, GroupedBottleneck3d)
    assert n_blocks > 0 and _count(plain, PlainConv3d) == n_blocks
    assert all(type(m.conv2) is PlainConv3d for m in plain.modules() if isinstance(m, GroupedBottleneck3d))
    assert _count(model, MultiScaleConvAttention3d) == n_msca  # the original keeps its fast layers
    assert not plain.training


def test_plain_reference_computes_the_same_image_vector():
    torch.manual_seed(0)
    model = MMCAFNet.from_preset("tiny")
    for m in model.modules():  # non-trivial running statistics, so eval-mode folding is exercised
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    plain = plain_reference(model)
    vol = torch.randn(2, 1, 8, 32, 32)
    for train in (False, True):
        model.train(train)
        plain.train(train)
        torch.manual_seed(5)
        with torch.no_grad():
            a = image_path(model, vol)
        torch.manual_seed(5)
        with torch.no_grad():
            b = image_path(plain, vol)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_the_header_names_the_allocator_and_an_empty_table_is_not_printed(capsys, monkeypatch):
    from benchmarks.model_throughput import main

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    report = main(["--quick", "--no-throughput", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "allocator: " in out and "THP_MEM_ALLOC_ENABLE unset" in out
    assert report["versions"]["allocator"]["thp_mem_alloc_enable"] is False
    assert report["results"] == [] and "infer vol/s" not in out

"""BatchNorm bookkeeping in one place: the op updates running statistics and the batch counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmscale.ops.batch_norm import BatchNormState, begin_batch_norm, update_running_stats
from mmscale.ops.msdc import multiscale_depthwise_conv3d


def test_state_of_a_batchnorm_mirrors_its_forward():
    bn = nn.BatchNorm3d(3)
    state = BatchNormState.of(bn)
    assert state.running_mean is bn.running_mean and state.num_batches_tracked is bn.num_batches_tracked
    bn.track_running_stats = False  # training without tracking: no buffers reach the op
    assert BatchNormState.of(bn).running_mean is None and BatchNormState.of(bn).num_batches_tracked is None
    with pytest.raises(TypeError, match="bn must be a BatchNorm"):
        BatchNormState.of(nn.Conv3d(1, 1, 1))


def test_begin_counts_training_batches_only():
    bn = nn.BatchNorm3d(2, momentum=None)
    steps = [begin_batch_norm(BatchNormState.of(bn)) for _ in range(3)]
    assert [s.momentum for s in steps] == [1.0, 0.5, 1.0 / 3]  # cumulative average
    assert int(bn.num_batches_tracked) == 3 and all(s.use_batch_stats for s in steps)
    step = begin_batch_norm(BatchNormState.of(bn.eval()))
    assert int(bn.num_batches_tracked) == 3 and not step.use_batch_stats


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_op_keeps_batchnorm_books_like_nn_batchnorm(kernels_for, backend, momentum):
    """Two training steps through the op leave every buffer as two ``nn.BatchNorm3d`` calls do."""
    if backend == "triton":
        kernels_for("cpu", "msdc")
    torch.manual_seed(0)
    weights = [torch.randn(3, 1, k, k, k) for k in (1, 3)]
    ours = [nn.BatchNorm3d(3, momentum=momentum) for _ in weights]
    theirs = [nn.BatchNorm3d(3, momentum=momentum) for _ in weights]
    for _ in range(2):
        x = torch.randn(2, 3, 2, 4, 4)
        multiscale_depthwise_conv3d(x, weights, [BatchNormState.of(bn) for bn in ours], backend=backend)
        for w, bn in zip(weights, theirs, strict=True):
            bn(torch.nn.functional.conv3d(x, w, padding=w.shape[-1] // 2, groups=3))
    for a, b in zip(ours, theirs, strict=True):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)


def test_update_running_stats_uses_each_momentum():
    bns = [nn.BatchNorm3d(2, momentum=m) for m in (0.1, 0.5)]
    steps = [begin_batch_norm(BatchNormState.of(bn)) for bn in bns]
    update_running_stats(steps, torch.ones(2, 2), torch.full((2, 2), 3.0))
    assert bns[0].running_mean.tolist() == pytest.approx([0.1, 0.1])
    assert bns[1].running_var.tolist() == pytest.approx([2.0, 2.0])

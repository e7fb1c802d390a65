"""A BatchNorm as one value an op can take, and its per-call bookkeeping in one place.

Ops that fuse a BatchNorm (the multi-scale depthwise convolution, the layers' folded
1x1 convolutions) take a :class:`BatchNormState` per normalisation instead of six
parallel arguments. :func:`begin_batch_norm` is ``nn.BatchNorm3d.forward``'s
bookkeeping (``num_batches_tracked``, the cumulative-average momentum, batch or
running statistics) and :func:`update_running_stats` its running-statistic rule, for
the paths that compute the batch statistics themselves; ``F.batch_norm`` applies the
same rule on the PyTorch paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["BatchNormState", "BatchNormStep", "begin_batch_norm", "update_running_stats"]


class BatchNormState(NamedTuple):
    """A BatchNorm's parameters, buffers and settings, as an op receives them.

    Build it with :meth:`of` from an ``nn.BatchNorm*d`` module (buffers are shared,
    so the op updates the module's running statistics in place).

    Attributes:
        weight (torch.Tensor | None): scale [C] (None: no affine scale).
        bias (torch.Tensor | None): shift [C] (None: no affine shift).
        running_mean (torch.Tensor | None): running mean [C], updated in place.
        running_var (torch.Tensor | None): running variance [C], updated in place.
        num_batches_tracked (torch.Tensor | None): batch counter (a 0-d long tensor).
        training (bool): the BatchNorm's own ``training`` flag.
        momentum (float | None): running-statistics momentum (None: cumulative average).
        eps (float): epsilon added to the variance.

    Example:
        >>> state = BatchNormState.of(nn.BatchNorm3d(4).eval())
        >>> state.training, tuple(state.running_var.shape)
        (False, (4,))
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None
    training: bool
    momentum: float | None
    eps: float

    @classmethod
    def of(cls, bn: nn.modules.batchnorm._BatchNorm) -> BatchNormState:
        """The state of ``bn`` as its ``forward`` would use it.

        A BatchNorm in training mode without ``track_running_stats`` passes no running
        buffers (as ``nn.BatchNorm3d.forward`` does).

        Args:
            bn (nn.modules.batchnorm._BatchNorm): a ``BatchNorm1d/2d/3d`` with C features.

        Returns:
            BatchNormState: parameters [C] and buffers [C] of ``bn``, shared, not copied.

        Raises:
            TypeError: if ``bn`` is not a BatchNorm module.

        Example:
            >>> BatchNormState.of(nn.BatchNorm3d(2)).momentum
            0.1
        """
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
        track = not bn.training or bn.track_running_stats
        return cls(
            bn.weight,
            bn.bias,
            bn.running_mean if track else None,
            bn.running_var if track else None,
            bn.num_batches_tracked if bn.track_running_stats else None,
            bn.training,
            bn.momentum,
            bn.eps,
        )


class BatchNormStep(NamedTuple):
    """One call's BatchNorm: the ``F.batch_norm`` arguments after the bookkeeping.

    Attributes:
        weight (torch.Tensor | None): scale [C] (ones when the BatchNorm has none;
            None only for a BatchNorm without affine parameters and running statistics).
        bias (torch.Tensor | None): shift [C] (zeros when the BatchNorm has none; None as above).
        running_mean (torch.Tensor | None): running mean [C] (updated with batch statistics).
        running_var (torch.Tensor | None): running variance [C].
        use_batch_stats (bool): normalise with the batch's statistics.
        momentum (float): the momentum this call updates the running statistics with.
        eps (float): epsilon added to the variance.

    Example:
        >>> step = begin_batch_norm(BatchNormState.of(nn.BatchNorm3d(2).eval()))
        >>> step.use_batch_stats, step.momentum
        (False, 0.1)
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    use_batch_stats: bool
    momentum: float
    eps: float


def begin_batch_norm(state: BatchNormState) -> BatchNormStep:
    """``nn.BatchNorm3d.forward``'s bookkeeping for one call; counts the batch in training.

    In training mode with tracked statistics ``num_batches_tracked`` is incremented in
    place, and a ``momentum`` of None becomes ``1 / num_batches_tracked`` (cumulative
    average). Call it exactly once per normalised batch.

    Args:
        state (BatchNormState): the BatchNorm, parameters and buffers [C].

    Returns:
        BatchNormStep: the arguments of this call's normalisation.

    Example:
        >>> bn = nn.BatchNorm3d(2, momentum=None)
        >>> begin_batch_norm(BatchNormState.of(bn)).momentum, int(bn.num_batches_tracked)
        (1.0, 1)
    """
    momentum = 0.0 if state.momentum is None else float(state.momentum)
    if state.training and state.num_batches_tracked is not None:
        state.num_batches_tracked.add_(1)
        if state.momentum is None:
            momentum = 1.0 / float(state.num_batches_tracked)
    rm, rv = state.running_mean, state.running_var
    use_batch_stats = state.training or (rm is None and rv is None)
    weight, bias = state.weight, state.bias
    like = next((t for t in (weight, bias, rm, rv) if t is not None), None)
    if like is not None:  # without any tensor (no affine, no statistics) both stay None
        weight = torch.ones_like(like) if weight is None else weight
        bias = torch.zeros_like(like) if bias is None else bias
    return BatchNormStep(weight, bias, rm, rv, use_batch_stats, momentum, float(state.eps))


def update_running_stats(
    steps: Sequence[BatchNormStep], batch_mean: torch.Tensor, batch_var: torch.Tensor
) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` in place, per BatchNorm.

    The rule of ``F.batch_norm``, for paths that compute the batch statistics
    themselves. Missing running buffers are skipped.

    Args:
        steps (Sequence[BatchNormStep]): one per BatchNorm, each with its own momentum.
        batch_mean (torch.Tensor): batch means [N, C], one row per BatchNorm.
        batch_var (torch.Tensor): *unbiased* batch variances [N, C].

    Example:
        >>> bn = nn.BatchNorm3d(2)
        >>> update_running_stats([begin_batch_norm(BatchNormState.of(bn))], torch.ones(1, 2), torch.ones(1, 2))
        >>> bn.running_mean.tolist()
        [0.10000000149011612, 0.10000000149011612]
    """
    with torch.no_grad():
        for k, step in enumerate(steps):
            if step.running_mean is not None:
                step.running_mean.mul_(1.0 - step.momentum).add_(batch_mean[k].to(step.running_mean.dtype),
                                                                 alpha=step.momentum)
            if step.running_var is not None:
                step.running_var.mul_(1.0 - step.momentum).add_(batch_var[k].to(step.running_var.dtype),
                                                                alpha=step.momentum)

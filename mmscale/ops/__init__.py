"""Functional ops. Each op folder holds ``reference.py`` (plain PyTorch), Triton
kernels where they exist, and in ``__init__.py`` the op's ``supports(...)`` (why its
kernels cannot run some arguments) and the dispatching function."""

from mmscale.ops._dispatch import (
    check_backend,
    requested_backend,
    resolve_backend,
    select_backend,
    triton_available,
    triton_interpret,
)
from mmscale.ops.batch_norm import BatchNormState
from mmscale.ops.depthwise_conv3d import depthwise_conv3d
from mmscale.ops.gating import apply_gates, channel_pool, spatial_pool
from mmscale.ops.grouped_conv3d import grouped_conv3d
from mmscale.ops.msdc import multiscale_depthwise_conv3d

__all__ = [
    "BatchNormState",
    "apply_gates",
    "channel_pool",
    "check_backend",
    "depthwise_conv3d",
    "grouped_conv3d",
    "multiscale_depthwise_conv3d",
    "requested_backend",
    "resolve_backend",
    "select_backend",
    "spatial_pool",
    "triton_available",
    "triton_interpret",
]

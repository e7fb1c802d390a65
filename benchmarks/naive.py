"""The naive E3D-MSCA composition, the benchmarks' baseline: it lives in :mod:`mmscale.layers.reference`."""

from mmscale.layers.reference import (
    NaiveChannelAttention3d,
    NaiveMultiScaleConvAttention3d,
    NaiveMultiScaleConvBlock3d,
    NaiveMultiScaleDepthwiseConv3d,
    NaiveSpatialAttention3d,
    NaiveUpConv3d,
    channel_shuffle,
)

__all__ = [
    "NaiveChannelAttention3d",
    "NaiveMultiScaleConvAttention3d",
    "NaiveMultiScaleConvBlock3d",
    "NaiveMultiScaleDepthwiseConv3d",
    "NaiveSpatialAttention3d",
    "NaiveUpConv3d",
    "channel_shuffle",
]

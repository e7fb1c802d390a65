"""Drop-in ``nn.Module`` layers. Volumes are ``[B, C, D, H, W]``, token sets ``[B, N, C]``."""

from mmscale.layers.attention import (
    ChannelAttention3d,
    MultiScaleConvAttention3d,
    MultiScaleConvBlock3d,
    MultiScaleDepthwiseConv3d,
    SpatialAttention3d,
    UpConv3d,
)

__all__ = [
    "ChannelAttention3d",
    "MultiScaleConvAttention3d",
    "MultiScaleConvBlock3d",
    "MultiScaleDepthwiseConv3d",
    "SpatialAttention3d",
    "UpConv3d",
]

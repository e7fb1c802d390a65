"""Drop-in ``nn.Module`` layers. Volumes are ``[B, C, D, H, W]``, token sets ``[B, N, C]``."""

from mmscale.layers.attention import (
    ChannelAttention3d,
    MultiScaleConvAttention3d,
    SpatialAttention3d,
)
from mmscale.layers.backbone import GroupedBottleneck3d, PyramidBackbone3d
from mmscale.layers.cross_attention import (
    CrossAttention,
    GatedVectorFusion,
    MultiScaleCrossAttention,
    MultiScaleVectorCrossAttention,
)
from mmscale.layers.drop_path import DropPath
from mmscale.layers.kan import KANEncoder, KANLinear
from mmscale.layers.multiscale_conv import (
    MultiScaleConvBlock3d,
    MultiScaleDepthwiseConv3d,
    UpConv3d,
)
from mmscale.layers.pyramid import BidirectionalPyramid3d, GatedMapFusion3d
from mmscale.layers.squeeze_excitation import SqueezeExcitation3d
from mmscale.layers.tabular import TabularKANEncoder, TabularTokenizer

__all__ = [
    "ChannelAttention3d",
    "MultiScaleConvAttention3d",
    "MultiScaleConvBlock3d",
    "MultiScaleDepthwiseConv3d",
    "SpatialAttention3d",
    "UpConv3d",
    "BidirectionalPyramid3d",
    "CrossAttention",
    "DropPath",
    "GatedMapFusion3d",
    "GatedVectorFusion",
    "GroupedBottleneck3d",
    "KANEncoder",
    "KANLinear",
    "MultiScaleCrossAttention",
    "PyramidBackbone3d",
    "MultiScaleVectorCrossAttention",
    "SqueezeExcitation3d",
    "TabularKANEncoder",
    "TabularTokenizer",
]

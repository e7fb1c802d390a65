"""mmscale: multi-scale attention layers for multimodal 3D medical imaging.

Public names are re-exported here explicitly; see ``mmscale.layers``,
``mmscale.models`` and ``mmscale.data`` for the full surface.
"""

__version__ = "0.1.0"

from mmscale.layers import (
    BidirectionalPyramid3d,
    ChannelAttention3d,
    CrossAttention,
    DropPath,
    GatedFusion3d,
    GatedFusionUnit,
    GroupedBottleneck3d,
    KANEncoder,
    KANLinear,
    MultiScaleConvAttention3d,
    MultiScaleConvBlock3d,
    MultiScaleCrossAttention,
    MultiScaleDepthwiseConv3d,
    PyramidBackbone3d,
    SingleTokenCrossAttentionFusion,
    SpatialAttention3d,
    SqueezeExcitation3d,
    TabularTokenizer,
    UpConv3d,
)
from mmscale.models import MMCAFNet, MMCAFNetConfig

__all__ = [
    "__version__",
    "ChannelAttention3d",
    "MultiScaleConvAttention3d",
    "MultiScaleConvBlock3d",
    "MultiScaleDepthwiseConv3d",
    "SpatialAttention3d",
    "UpConv3d",
    "BidirectionalPyramid3d",
    "CrossAttention",
    "DropPath",
    "GatedFusion3d",
    "GatedFusionUnit",
    "GroupedBottleneck3d",
    "KANEncoder",
    "KANLinear",
    "MultiScaleCrossAttention",
    "PyramidBackbone3d",
    "SingleTokenCrossAttentionFusion",
    "SqueezeExcitation3d",
    "TabularTokenizer",
    "MMCAFNet",
    "MMCAFNetConfig",
]

"""mmscale: multi-scale attention layers for multimodal 3D medical imaging.

Public names are re-exported here explicitly; see ``mmscale.layers``,
``mmscale.models`` and ``mmscale.data`` for the full surface.
"""

__version__ = "0.1.0"

from mmscale.interop import SlicesLast, from_monai, to_monai
from mmscale.layers import (
    BidirectionalPyramid3d,
    ChannelAttention3d,
    CrossAttention,
    DropPath,
    GatedMapFusion3d,
    GatedVectorFusion,
    GroupedBottleneck3d,
    KANEncoder,
    KANLinear,
    MultiScaleConvAttention3d,
    MultiScaleConvBlock3d,
    MultiScaleCrossAttention,
    MultiScaleDepthwiseConv3d,
    MultiScaleVectorCrossAttention,
    PyramidBackbone3d,
    SpatialAttention3d,
    SqueezeExcitation3d,
    TabularKANEncoder,
    TabularTokenizer,
    UpConv3d,
)
from mmscale.models import BinaryFocalLoss, MMCAFNet, MMCAFNetConfig, binary_focal_loss

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
    "MMCAFNet",
    "MMCAFNetConfig",
    "BinaryFocalLoss",
    "binary_focal_loss",
    "SlicesLast",
    "from_monai",
    "to_monai",
]

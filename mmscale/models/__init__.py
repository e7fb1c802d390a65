"""Model assemblies built from ``mmscale.layers`` (config dataclass + presets)."""

from mmscale.models.losses import BinaryFocalLoss, binary_focal_loss
from mmscale.models.mmcafnet import CHECKPOINT_FORMAT, PRESETS, MMCAFNet, MMCAFNetConfig

__all__ = ["CHECKPOINT_FORMAT", "PRESETS", "MMCAFNet", "MMCAFNetConfig", "BinaryFocalLoss", "binary_focal_loss"]

"""Model assemblies built from ``mmscale.layers`` (config dataclass + presets)."""

from mmscale.models.mmcafnet import CHECKPOINT_FORMAT, PRESETS, MMCAFNet, MMCAFNetConfig

__all__ = ["CHECKPOINT_FORMAT", "PRESETS", "MMCAFNet", "MMCAFNetConfig"]

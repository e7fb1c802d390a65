"""MMCAF-Net: 3D pyramid backbone + bidirectional E3D-MSCA neck + multi-scale cross-attention.

Data flow: volume -> :class:`PyramidBackbone3d` -> per-level
BN + ReLU + Dropout -> :class:`BidirectionalPyramid3d` -> fusion with the clinical table
-> classifier head. Two fusion paths:

* ``"single"`` (the published model): the deepest fused map is global-max-pooled and
  projected to one image vector; the 7 clinical values go through a KAN
  (:class:`TabularKANEncoder`) to one table vector; the two vectors are fused at widths
  24/12/6 by :class:`MultiScaleVectorCrossAttention`.
* ``"tokens"`` (mmscale's generalisation): every pyramid level is pooled to a small token
  grid, every clinical feature is a token (:class:`TabularTokenizer`), and
  :class:`MultiScaleCrossAttention` fuses them.

Missing data: a sample's volume can be absent (``volume_present[b] = False``, or
``volume=None`` for the whole batch) and any table value can be absent (NaN numerical,
-1 categorical, or ``None`` for a whole table). Absent volumes are zeroed before the
backbone and masked in the fusion; absent table values are replaced by learned
embeddings (tokens) or learned fill values (KAN path). Absent inputs therefore never
influence the prediction (in training, the zeroed stand-ins of absent volumes still
count in BatchNorm's batch statistics, whatever their content was), and every sample
still gets a finite one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import IO, Any

import torch
from torch import nn

from mmscale._validation import check_dtype, check_volume, int_at_least
from mmscale.layers.backbone import DROP_PATH_SCHEDULES, PyramidBackbone3d
from mmscale.layers.cross_attention import MultiScaleCrossAttention, MultiScaleVectorCrossAttention
from mmscale.layers.drop_path import DROP_PATH_MODES
from mmscale.layers.pyramid import BidirectionalPyramid3d
from mmscale.layers.squeeze_excitation import SE_ACTIVATIONS
from mmscale.layers.tabular import TabularKANEncoder, TabularTokenizer, _eager, validate_table

__all__ = ["MMCAFNet", "MMCAFNetConfig", "CHECKPOINT_FORMAT", "PRESETS"]

CHECKPOINT_FORMAT = "mmscale.mmcafnet/1"
"""Value of the ``"format"`` key of :meth:`MMCAFNet.checkpoint_state` dicts."""

_FUSIONS = ("tokens", "single")


def _tupled(value: Any) -> Any:
    """Lists (e.g. from JSON, argparse or a checkpoint) back to (nested) tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


@dataclass
class MMCAFNetConfig:
    """Configuration of :class:`MMCAFNet` (every field is a plain, checkpoint-safe value).

    The default table is the paper's 7 clinical features as a
    ``mmscale.data.TableSchema`` encodes them: 2 numerical (age, weight; normalised)
    and 5 categorical (sex 2, T stage 10, N stage 4, M stage 7, smoking 2 categories).
    Override ``num_numerical`` / ``categorical_cardinalities`` from the schema in use.

    Fields marked *(published: X)* are where the published MMCAF-Net differs from
    mmscale's default; the ``"paper"`` preset sets X (see the docs page "Fidelity to
    the published MMCAF-Net").

    Attributes:
        in_channels: channels of the input volume (1 for CT).
        num_classes: classifier outputs (2 logits for cross-entropy; 1 logit for
            ``mmscale.models.binary_focal_loss``) *(published: 1)*.
        num_numerical: numerical table columns (NaN = missing).
        categorical_cardinalities: categories per categorical column (-1 = missing).
        fusion: ``"tokens"`` (multi-scale token cross-attention) or ``"single"`` (the
            published one-vector-per-modality fusion with a KAN table encoder).
        freeze_image_encoder: the image encoder gets no gradient (staged training).
        freeze_mode: what a frozen image encoder means. ``"eval"``: backbone, neck
            norms and pyramid get no gradient and stay in eval mode (BatchNorm
            statistics, dropout and stochastic depth fixed). ``"weights"``: backbone,
            neck norms, pyramid and the ``"single"`` path's image projection get no
            gradient but follow the model's train/eval mode *(published: "weights")*.
        stem_channels, stem_in_channels, widths, depths, mid_widths, cardinality,
            se_reduction, drop_path_rate: :class:`PyramidBackbone3d` arguments.
        se_activation: SE activation, ``"relu"`` or ``"leaky_relu"`` (slope 0.01)
            *(published: "leaky_relu")*.
        drop_path_mode: ``"sample"`` (per-sample, rescaled) or ``"batch"`` (one draw
            per block per step, no rescaling, a dropped block returns its shortcut
            without the output activation) *(published: "batch")*.
        drop_path_schedule: ``"linear"`` (the last block drops with
            ``drop_path_rate``) or ``"penet"`` (block ``i`` of ``n`` drops with
            ``drop_path_rate * i / n``) *(published: "penet")*.
        neck_dropout: dropout after each level's BN + ReLU.
        msca_kernel_sizes, msca_expansion, msca_reduction, spatial_kernel,
            share_spatial_attention, backend: :class:`BidirectionalPyramid3d` arguments.
        neck_align_corners: ``align_corners`` of every trilinear resize in the neck
            *(published: True)*.
        neck_always_project: the gated fusion projects the finer map even when no
            resize is needed *(published: False; identical in a strided pyramid)*.
        fusion_dims: fusion width per scale (one per pyramid level, finest first).
        num_heads: attention heads in the fusion, shared or one per scale
            *(published: 4, 2, 2)*.
        tokens_per_level: pooled token grid(s) for ``"tokens"``.
        table_dim: width of the table tokens for ``"tokens"``.
        attention_dropout: attention-weight dropout in the ``"tokens"`` fusion.
        image_dropout: dropout on the pooled image vector (``"single"``).
        fusion_combine: ``"single"`` fusion: ``"mean"`` or ``"sum"`` of the two
            directions *(published: "mean")*.
        fusion_down_dropout: ``"single"`` fusion: dropout of the down-projections.
        kan_hidden, kan_grid_size, kan_spline_order, kan_grid_range: the KAN table
            encoder of ``"single"`` (widths ``(F, *kan_hidden, fusion_dims[0])``).
        head_dropout: dropout before the classifier.

    Raises:
        ValueError: on construction (and :meth:`validate`), naming the first
            ill-typed or inconsistent field.

    Example:
        >>> cfg = MMCAFNetConfig(num_numerical=1, categorical_cardinalities=[2, 3])
        >>> cfg.categorical_cardinalities, cfg.num_features
        ((2, 3), 3)
    """

    in_channels: int = 1
    num_classes: int = 2
    num_numerical: int = 2
    categorical_cardinalities: tuple[int, ...] = (2, 10, 4, 7, 2)
    fusion: str = "tokens"
    freeze_image_encoder: bool = False
    freeze_mode: str = "eval"
    # backbone
    stem_channels: int = 64
    stem_in_channels: int | None = None
    widths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[int, ...] = (3, 4, 6)
    mid_widths: tuple[int, ...] | None = None
    cardinality: int = 32
    se_reduction: int = 16
    drop_path_rate: float = 0.5
    se_activation: str = "relu"
    drop_path_mode: str = "sample"
    drop_path_schedule: str = "linear"
    # neck
    neck_dropout: float = 0.3
    msca_kernel_sizes: tuple = (1, 3, 5)
    msca_expansion: int = 2
    msca_reduction: int = 16
    spatial_kernel: int = 7
    share_spatial_attention: bool = True
    backend: str = "auto"
    neck_align_corners: bool = False
    neck_always_project: bool = True
    # fusion
    fusion_dims: tuple[int, ...] = (64, 64, 64)
    num_heads: int | tuple[int, ...] = 4
    tokens_per_level: tuple = (2, 4, 4)
    table_dim: int = 64
    attention_dropout: float = 0.0
    image_dropout: float = 0.5
    fusion_combine: str = "mean"
    fusion_down_dropout: float = 0.5
    kan_hidden: tuple[int, ...] = ()
    kan_grid_size: int = 5
    kan_spline_order: int = 3
    kan_grid_range: tuple[float, float] = (-1.0, 1.0)
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _tupled(getattr(self, f.name)))
        self.validate()

    @property
    def num_features(self) -> int:
        """Number of clinical features (numerical + categorical)."""
        return self.num_numerical + len(self.categorical_cardinalities)

    def validate(self) -> None:
        """Check every field's type and the fields' consistency.

        Raises:
            ValueError: naming the first offending field.
        """
        for name in (
            "in_channels", "num_classes", "stem_channels", "table_dim", "cardinality",
            "msca_expansion", "msca_reduction", "spatial_kernel", "kan_grid_size",
        ):
            _int_field(self, name, 1)
        for name in ("num_numerical", "se_reduction", "kan_spline_order"):
            _int_field(self, name, 0)
        if self.stem_in_channels is not None:
            _int_field(self, "stem_in_channels", self.in_channels)
        for name in ("freeze_image_encoder", "share_spatial_attention", "neck_align_corners", "neck_always_project"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        _int_tuple_field(self, "categorical_cardinalities", 1, allow_empty=True)
        if self.num_features < 1:
            raise ValueError("num_numerical and categorical_cardinalities describe no table feature")
        _int_tuple_field(self, "widths", 1)
        _int_tuple_field(self, "depths", 1)
        if len(self.widths) < 2 or len(self.widths) != len(self.depths):
            raise ValueError(
                f"widths and depths must have the same length >= 2, got {self.widths}, {self.depths}"
            )
        if self.mid_widths is not None:
            _int_tuple_field(self, "mid_widths", 1)
            if len(self.mid_widths) != len(self.widths):
                raise ValueError(f"mid_widths must have one entry per stage ({len(self.widths)}), got {self.mid_widths}")
        for m in self.mid_widths or tuple(w // 2 for w in self.widths):
            if m < self.cardinality or m % self.cardinality:
                raise ValueError(
                    f"cardinality={self.cardinality} must divide every mid width "
                    f"{self.mid_widths or tuple(w // 2 for w in self.widths)}"
                )
        _int_tuple_field(self, "fusion_dims", 1)
        levels = min(3, len(self.widths))
        if len(self.fusion_dims) != levels:
            raise ValueError(
                f"fusion_dims must have one width per pyramid level ({levels}), got {self.fusion_dims}"
            )
        heads = self.num_heads
        if isinstance(heads, tuple):
            _int_tuple_field(self, "num_heads", 1)
            if len(heads) != levels:
                raise ValueError(f"num_heads must be an int or one int per scale ({levels}), got {heads}")
        else:
            _int_field(self, "num_heads", 1)
            heads = (heads,) * levels
        for d, h in zip(self.fusion_dims, heads, strict=True):
            if d % h:
                raise ValueError(f"num_heads={self.num_heads} must divide fusion_dims {self.fusion_dims} scale by scale")
        _int_tuple_field(self, "kan_hidden", 1, allow_empty=True)
        if not isinstance(self.msca_kernel_sizes, tuple) or not self.msca_kernel_sizes:
            raise ValueError(f"msca_kernel_sizes must be a non-empty tuple, got {self.msca_kernel_sizes!r}")
        if not isinstance(self.tokens_per_level, tuple) or not self.tokens_per_level:
            raise ValueError(f"tokens_per_level must be a non-empty tuple, got {self.tokens_per_level!r}")
        g = self.kan_grid_range
        if (
            not isinstance(g, tuple)
            or len(g) != 2
            or not all(_is_real(v) for v in g)
            or not math.isfinite(g[0])
            or not math.isfinite(g[1])
            or not g[0] < g[1]
        ):
            raise ValueError(f"kan_grid_range must be (low, high) with finite low < high, got {g!r}")
        for name in (
            "neck_dropout", "attention_dropout", "image_dropout", "head_dropout", "drop_path_rate",
            "fusion_down_dropout",
        ):
            v = getattr(self, name)
            if not _is_real(v) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be a float in [0, 1), got {v!r}")


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_field(cfg: MMCAFNetConfig, name: str, low: int) -> None:
    int_at_least(getattr(cfg, name), name, low)


def _int_tuple_field(cfg: MMCAFNetConfig, name: str, low: int, allow_empty: bool = False) -> None:
    v = getattr(cfg, name)
    if (
        not isinstance(v, tuple)
        or (not v and not allow_empty)
        or any(isinstance(x, bool) or not isinstance(x, int) or x < low for x in v)
    ):
        what = "a tuple" if allow_empty else "a non-empty tuple"
        raise ValueError(f"{name} must be {what} of ints >= {low}, got {v!r}")


_CHOICES: dict[str, tuple[str, ...]] = {
    "fusion": _FUSIONS,
    "freeze_mode": ("eval", "weights"),
    "se_activation": SE_ACTIVATIONS,
    "drop_path_mode": DROP_PATH_MODES,
    "drop_path_schedule": DROP_PATH_SCHEDULES,
    "fusion_combine": ("mean", "sum"),
    "backend": ("auto", "torch", "triton"),
}


_TINY = dict(
    stem_channels=16,
    widths=(32, 64, 128),
    depths=(1, 1, 1),
    cardinality=8,
    drop_path_rate=0.1,
    neck_dropout=0.1,
    fusion_dims=(32, 32, 32),
    num_heads=2,
    table_dim=32,
    image_dropout=0.1,
)
# Every field where the published MMCAF-Net differs from mmscale's defaults is set
# here to the published value (the docs page "Fidelity to the published MMCAF-Net").
_PAPER = dict(
    stem_in_channels=3,
    fusion="single",
    fusion_dims=(24, 12, 6),
    num_heads=(4, 2, 2),
    num_classes=1,
    freeze_mode="weights",
    se_activation="leaky_relu",
    drop_path_mode="batch",
    drop_path_schedule="penet",
    neck_align_corners=True,
    neck_always_project=False,
    fusion_combine="mean",
    fusion_down_dropout=0.5,
    kan_grid_range=(-1.0, 1.0),
)
PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, "paper": _PAPER}
"""Preset name -> config overrides on top of :class:`MMCAFNetConfig`'s defaults."""


class MMCAFNet(nn.Module):
    """Multimodal multiscale cross-attention fusion network (volume + clinical table).

    Presets (:meth:`from_preset`):

    * ``"paper"`` — the published MMCAF-Net: PENet-50-style encoder (stem 3->64,
      stages [3, 4, 6] of cardinality-32 grouped bottlenecks with SE, 256/512/1024
      channels; for a [B, 1, 12, 192, 192] crop the pyramid is 256@6x48x48,
      512@3x24x24, 1024@2x12x12), neck with BN + ReLU + Dropout(0.3), E3D-MSCA on
      every level with one shared spatial-attention conv, UpConv3d 1024->512->256,
      bottom-up gated fusion, global max pool, Linear(1024->24) + ReLU +
      Dropout(0.5); KAN table encoder 7->24; :class:`MultiScaleVectorCrossAttention`
      at widths 24/12/6; one logit (train it with
      :func:`mmscale.models.binary_focal_loss`). Every field where the published code
      differs from mmscale's defaults is set to the published value (see
      :class:`MMCAFNetConfig`). Parameter counts per part are in the docs
      ("MMCAF-Net" page), kept true by a test.
    * ``"tiny"`` — the same architecture at toy widths (stem 16, stages 32/64/128 of
      one block each, cardinality 8) with the ``"tokens"`` fusion (3 scales of width
      32, 2 heads, 2x4x4 tokens per level) and mmscale's defaults elsewhere.

    Args:
        config (MMCAFNetConfig | None): the configuration (default: ``MMCAFNetConfig()``).

    Shapes:
        volume: [B, in_channels, D, H, W]; numerical: [B, num_numerical];
        categorical: [B, len(categorical_cardinalities)]; volume_present: [B]
        -> logits [B, num_classes].

    Raises:
        ValueError: an invalid configuration (naming the field).

    Example:
        >>> model = MMCAFNet.from_preset("tiny").eval()
        >>> logits = model(torch.randn(2, 1, 16, 64, 64), torch.randn(2, 2),
        ...                torch.tensor([[0, 1, 2, 0, 1], [1, -1, 0, 3, 0]]))
        >>> logits.shape
        torch.Size([2, 2])
    """

    def __init__(self, config: MMCAFNetConfig | None = None) -> None:
        super().__init__()
        config = MMCAFNetConfig() if config is None else config
        if not isinstance(config, MMCAFNetConfig):
            raise ValueError(f"config must be an MMCAFNetConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.table_schema: dict | None = None
        c = config

        self.backbone = PyramidBackbone3d(
            in_channels=c.in_channels,
            widths=c.widths,
            depths=c.depths,
            mid_widths=c.mid_widths,
            stem_channels=c.stem_channels,
            stem_in_channels=c.stem_in_channels,
            cardinality=c.cardinality,
            se_reduction=c.se_reduction,
            drop_path_rate=c.drop_path_rate,
            num_outputs=len(c.fusion_dims),
            se_activation=c.se_activation,
            drop_path_mode=c.drop_path_mode,
            drop_path_schedule=c.drop_path_schedule,
        )
        levels = self.backbone.out_channels
        self.neck_norm = nn.ModuleList(
            nn.Sequential(nn.BatchNorm3d(ch), nn.ReLU(), nn.Dropout(c.neck_dropout)) for ch in levels
        )
        self.pyramid = BidirectionalPyramid3d(
            levels,
            kernel_sizes=c.msca_kernel_sizes,
            expansion=c.msca_expansion,
            reduction=c.msca_reduction,
            spatial_kernel=c.spatial_kernel,
            share_spatial_attention=c.share_spatial_attention,
            backend=c.backend,
            align_corners=c.neck_align_corners,
            always_project=c.neck_always_project,
        )
        d0 = c.fusion_dims[0]
        self.single = c.fusion == "single"
        if self.single:
            self.image_proj = nn.Sequential(nn.Linear(levels[-1], d0), nn.ReLU(), nn.Dropout(c.image_dropout))
            self.table_encoder = TabularKANEncoder(
                c.num_numerical,
                c.categorical_cardinalities,
                d0,
                hidden=c.kan_hidden,
                grid_size=c.kan_grid_size,
                spline_order=c.kan_spline_order,
                grid_range=c.kan_grid_range,
            )
            self.fusion = MultiScaleVectorCrossAttention(
                c.fusion_dims, c.num_heads, combine=c.fusion_combine, down_dropout=c.fusion_down_dropout
            )
            self.head = nn.Sequential(nn.Dropout(c.head_dropout), nn.Linear(d0, c.num_classes))
        else:
            self.tokenizer = TabularTokenizer(c.num_numerical, c.categorical_cardinalities, c.table_dim)
            self.fusion = MultiScaleCrossAttention(
                levels,
                c.table_dim,
                c.fusion_dims,
                num_heads=c.num_heads,
                tokens_per_level=c.tokens_per_level,
                dropout=c.attention_dropout,
            )
            self.head = nn.Sequential(
                nn.LayerNorm(d0), nn.Dropout(c.head_dropout), nn.Linear(d0, c.num_classes)
            )
        self.set_image_encoder_trainable(not c.freeze_image_encoder)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MMCAFNet:
        """Build a preset (``"paper"`` or ``"tiny"``), optionally overriding config fields.

        Args:
            name (str): preset name.
            **overrides: :class:`MMCAFNetConfig` fields to change.

        Returns:
            MMCAFNet: the model (random weights).

        Raises:
            ValueError: unknown preset or unknown/invalid field.

        Example:
            >>> MMCAFNet.from_preset("tiny", num_classes=4).config.num_classes
            4
        """
        return cls(cls.preset_config(name, **overrides))

    @staticmethod
    def preset_config(name: str, **overrides: Any) -> MMCAFNetConfig:
        """The :class:`MMCAFNetConfig` of a preset, with ``overrides`` applied.

        Raises:
            ValueError: unknown preset or unknown/invalid field.
        """
        if name not in PRESETS:
            raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
        known = {f.name for f in dataclasses.fields(MMCAFNetConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown MMCAFNetConfig field(s) in overrides: {unknown}")
        return MMCAFNetConfig(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ staged training
    def _image_encoder(self) -> list[nn.Module]:
        """The modules a freeze covers (``config.freeze_mode`` decides which)."""
        modules: list[nn.Module] = [self.backbone, self.neck_norm, self.pyramid]
        if self.config.freeze_mode == "weights" and self.single:
            modules.append(self.image_proj)
        return modules

    def set_image_encoder_trainable(self, flag: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) the image encoder.

        ``config.freeze_mode`` says what freezing means:

        * ``"eval"`` (mmscale's default): the backbone, the neck's per-level norms and
          the pyramid get ``requires_grad=False`` and stay in eval mode (BatchNorm
          statistics, dropout and stochastic depth fixed) even when the model trains.
        * ``"weights"`` (the published code): the same modules plus the ``"single"``
          path's image projection (1024 -> 24) get ``requires_grad=False``, but follow
          the model's train/eval mode: BatchNorm statistics keep updating and dropout
          and stochastic depth stay active while training.

        ``config.freeze_image_encoder`` is updated so checkpoints record the state.

        Args:
            flag (bool): True to train the encoder.
        """
        flag = bool(flag)
        modules = [self.backbone, self.neck_norm, self.pyramid] + ([self.image_proj] if self.single else [])
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(True)
        if not flag:
            for module in self._image_encoder():
                for p in module.parameters():
                    p.requires_grad_(False)
        self.config = dataclasses.replace(self.config, freeze_image_encoder=not flag)
        self.train(self.training)

    def train(self, mode: bool = True) -> MMCAFNet:
        """Set train/eval mode; with ``freeze_mode="eval"`` a frozen image encoder stays in eval mode."""
        super().train(mode)
        if self.config.freeze_image_encoder and self.config.freeze_mode == "eval":
            for module in self._image_encoder():
                module.eval()
        return self

    # ------------------------------------------------------------------ forward
    def encode_volume(self, volume: torch.Tensor) -> list[torch.Tensor]:
        """Backbone, neck norms and bidirectional pyramid.

        Args:
            volume (torch.Tensor): [B, in_channels, D, H, W].

        Returns:
            list[torch.Tensor]: fused pyramid levels, finest first.
        """
        feats = self.backbone(volume)
        feats = [norm(f) for norm, f in zip(self.neck_norm, feats, strict=False)]
        return self.pyramid(feats)

    @torch.no_grad()
    def spatial_attention_maps(self, volume: torch.Tensor) -> list[torch.Tensor]:
        """E3D-MSCA spatial gates of every pyramid level (for drawing over CT slices).

        Runs without gradient. Call it in eval mode: in train mode BatchNorm would
        use (and update) batch statistics.

        Args:
            volume (torch.Tensor): [B, in_channels, D, H, W].

        Returns:
            list[torch.Tensor]: one gate [B, 1, D_l, H_l, W_l] per level, finest first,
            values in (0, 1).

        Raises:
            TypeError: ``volume`` is not a floating-point tensor, or its dtype differs
                from the weights' outside autocast.
            ValueError: ``volume`` has the wrong shape, an empty dimension or a
                non-finite value.
        """
        self._check_volume(volume, None)
        feats = self.backbone(volume)
        feats = [norm(f) for norm, f in zip(self.neck_norm, feats, strict=False)]
        _, gates = self.pyramid.top_down(feats, return_gates=True)
        return gates

    def _check_volume(self, volume: object, present: torch.Tensor | None) -> None:
        check_volume(volume, self.config.in_channels, "volume")
        check_dtype(volume, self.backbone.stem[0].weight, "volume")
        if _eager() and volume.device.type != "meta":
            finite = torch.isfinite(volume).flatten(1).all(dim=1)  # [B]
            if present is not None:
                finite = finite | ~present.to(finite.device)
            if not bool(finite.all()):
                bad = (~finite).nonzero().flatten().tolist()
                raise ValueError(
                    f"volume has non-finite values (NaN or inf) in sample(s) {bad}; mark a missing "
                    "volume with volume_present=False instead"
                )

    def forward(
        self,
        volume: torch.Tensor | None = None,
        numerical: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        volume_present: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Classify a batch.

        Args:
            volume (torch.Tensor | None): [B, in_channels, D, H, W]; None = no volume
                for any sample.
            numerical (torch.Tensor | None): [B, num_numerical] floats, NaN = missing;
                None = all missing.
            categorical (torch.Tensor | None): [B, len(categorical_cardinalities)]
                integer codes, -1 = missing; None = all missing.
            volume_present (torch.Tensor | None): [B] bool presence flag, False = that
                sample has no volume (its content is ignored, NaN included). None = all
                present. Ignored when ``volume`` is None.
            return_attention (bool): also return the fusion's attention weights.

        Returns:
            torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: logits
            [B, num_classes], and with ``return_attention`` a dict of attention
            weights keyed ``"scale{s}.<direction>"``.

        Raises:
            TypeError: ``volume`` is not a floating-point tensor, or its dtype differs
                from the weights' outside autocast.
            ValueError: an input of the wrong shape, an empty dimension, a non-finite
                value in a present volume, an infinite numerical value, or no input.
        """
        c = self.config
        if volume is None and numerical is None and categorical is None:
            raise ValueError("at least one of volume, numerical or categorical must be given")
        present = None
        if volume is not None:
            check_volume(volume, c.in_channels, "volume")
            b = volume.shape[0]
            if volume_present is not None:
                if (
                    not isinstance(volume_present, torch.Tensor)
                    or volume_present.dtype != torch.bool
                    or tuple(volume_present.shape) != (b,)
                ):
                    got = (
                        f"{volume_present.dtype} {list(volume_present.shape)}"
                        if isinstance(volume_present, torch.Tensor)
                        else type(volume_present).__name__
                    )
                    raise ValueError(f"volume_present must be a bool tensor of shape [{b}], got {got}")
                present = volume_present.to(volume.device)
            self._check_volume(volume, present)
        b = validate_table(
            numerical,
            categorical,
            c.num_numerical,
            c.categorical_cardinalities,
            batch_size=None if volume is None else volume.shape[0],
        )

        feats = None
        if volume is not None:
            if present is None:
                present = torch.ones(b, dtype=torch.bool, device=volume.device)
            else:
                # Absent volumes are zeroed so their content (even NaN) cannot reach
                # the batch statistics or the output.
                volume = torch.where(present.view(b, 1, 1, 1, 1), volume, torch.zeros_like(volume))
            feats = self.encode_volume(volume)

        if self.single:
            img = None if feats is None else self.image_proj(feats[-1].amax(dim=(2, 3, 4)))
            tab, valid = self.table_encoder(numerical, categorical, batch_size=b)
            out = self.fusion(img, tab, present, valid.any(dim=1), return_attention)
        else:
            tokens, valid = self.tokenizer(numerical, categorical, batch_size=b)
            out = self.fusion(
                feats,
                tokens,
                table_padding_mask=~valid,
                volume_present=present,
                return_attention=return_attention,
            )
        if return_attention:
            fused, weights = out
            return self.head(fused), weights
        return self.head(out)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, table_schema: dict | None = None) -> dict[str, Any]:
        """A ``torch.save``-able, ``weights_only``-safe checkpoint dict.

        Args:
            table_schema (dict | None): the fitted table schema as plain values
                (e.g. ``TableSchema.to_dict()``); stored as is.

        Returns:
            dict: ``{"format", "config", "model", "table_schema"}``; callers may add keys.

        Raises:
            ValueError: ``table_schema`` is neither a dict nor None.

        Example:
            >>> state = MMCAFNet.from_preset("tiny").checkpoint_state()
            >>> state["format"]
            'mmscale.mmcafnet/1'
        """
        if table_schema is not None and not isinstance(table_schema, Mapping):
            raise ValueError(f"table_schema must be a dict or None, got {type(table_schema).__name__}")
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "model": self.state_dict(),
            "table_schema": None if table_schema is None else dict(table_schema),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MMCAFNet:
        """Rebuild a model from a :meth:`checkpoint_state` dict (unknown keys ignored).

        Raises:
            ValueError: the dict is not an MMCAFNet checkpoint, its config is invalid,
                its weights do not fit the config, or its table schema does not match
                the config.

        Example:
            >>> model = MMCAFNet.from_preset("tiny")
            >>> MMCAFNet.from_state(model.checkpoint_state()).config == model.config
            True
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"checkpoint must be a dict, got {type(state).__name__}")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format must be {CHECKPOINT_FORMAT!r}, got {state.get('format')!r}")
        raw = state.get("config")
        if not isinstance(raw, Mapping):
            raise ValueError("checkpoint has no 'config' dict")
        known = {f.name for f in dataclasses.fields(MMCAFNetConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"checkpoint config has unknown field(s) {unknown}")
        weights = state.get("model")
        if not isinstance(weights, Mapping):
            raise ValueError("checkpoint has no 'model' dict of weights")
        try:
            config = MMCAFNetConfig(**{k: _tupled(v) for k, v in raw.items()})
        except ValueError as err:
            raise ValueError(f"checkpoint config is invalid: {err}") from None
        schema = state.get("table_schema")
        _check_schema(schema, config)
        model = cls(config)
        try:
            model.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"checkpoint weights do not fit its config: {err}") from None
        model.table_schema = None if schema is None else dict(schema)
        return model

    @classmethod
    def from_checkpoint(
        cls, path: str | PathLike | IO[bytes], map_location: str | torch.device = "cpu"
    ) -> MMCAFNet:
        """Load a checkpoint written from :meth:`checkpoint_state` (``weights_only=True``).

        Args:
            path (str | PathLike | IO[bytes]): file path or binary file object.
            map_location (str | torch.device): where to put the tensors.

        Returns:
            MMCAFNet: the model with weights loaded and ``table_schema`` set.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is empty, not a torch checkpoint, holds objects
                ``weights_only`` refuses, or is not a valid MMCAFNet checkpoint; the
                message names the file and the problem.

        Example:
            >>> import io
            >>> buf = io.BytesIO()
            >>> torch.save(MMCAFNet.from_preset("tiny").checkpoint_state(), buf)
            >>> _ = buf.seek(0)
            >>> MMCAFNet.from_checkpoint(buf).config.fusion
            'tokens'
        """
        name = getattr(path, "name", None) if not isinstance(path, (str, PathLike)) else str(path)
        where = f"checkpoint {name!r}" if name else "checkpoint"
        if isinstance(path, (str, PathLike)) and os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ValueError(f"{where} is an empty file")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{where} could not be loaded with weights_only=True: {first}") from None
        except Exception as err:  # noqa: BLE001 - a foreign or damaged file fails in many ways
            # (EOFError, KeyError from a text file's bytes, IndexError from a truncated
            # pickle, RuntimeError from a damaged zip): all mean "not a checkpoint".
            detail = str(err).strip().splitlines()[0] if str(err).strip() else "unexpected end of file"
            raise ValueError(
                f"{where} is not a torch checkpoint (empty, truncated or another kind of file): "
                f"{type(err).__name__}: {detail}"
            ) from None
        try:
            return cls.from_state(state)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _check_schema(schema: object, config: MMCAFNetConfig) -> None:
    """A stored table schema must be None or a dict; a ``TableSchema.to_dict()`` (columns
    given as dicts) must be well formed and match the config's table."""
    if schema is None:
        return
    if not isinstance(schema, Mapping):
        raise ValueError(f"checkpoint table_schema must be a dict or None, got {type(schema).__name__}")
    columns = schema.get("columns")
    if not isinstance(columns, (list, tuple)) or not any(isinstance(col, Mapping) for col in columns):
        return  # not a TableSchema.to_dict(): a caller's own format, stored as given
    if not all(
        isinstance(col, Mapping) and isinstance(col.get("name"), str) and col.get("kind") in ("numerical", "categorical")
        for col in columns
    ):
        raise ValueError(
            "checkpoint table_schema 'columns' must be a list of {'name': str, 'kind': 'numerical' | "
            "'categorical', ...} dicts"
        )
    numerical = [c for c in columns if c["kind"] == "numerical"]
    categorical = [c for c in columns if c["kind"] == "categorical"]
    if len(numerical) != config.num_numerical or len(categorical) != len(config.categorical_cardinalities):
        raise ValueError(
            f"checkpoint table_schema has {len(numerical)} numerical and {len(categorical)} categorical "
            f"columns, but the config expects {config.num_numerical} and "
            f"{len(config.categorical_cardinalities)}"
        )
    for col, k in zip(categorical, config.categorical_cardinalities, strict=True):
        vocab = col.get("vocabulary", [])
        if not isinstance(vocab, (list, tuple)) or len(vocab) > k:
            raise ValueError(
                f"checkpoint table_schema column {col['name']!r} has a vocabulary of "
                f"{len(vocab) if isinstance(vocab, (list, tuple)) else type(vocab).__name__} entries, "
                f"more than its cardinality {k} in the config"
            )

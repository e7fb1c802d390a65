"""MMCAF-Net: 3D pyramid backbone + bidirectional E3D-MSCA neck + multi-scale cross-attention.

Data flow (DESIGN section 5): volume -> :class:`PyramidBackbone3d` -> per-level
BN + ReLU + Dropout -> :class:`BidirectionalPyramid3d` -> fusion with the clinical table
-> classifier head. Two fusion paths:

* ``"single"`` (the paper): the deepest fused map is global-max-pooled and projected to
  one image vector; the 7 clinical values go through a KAN to one table vector; the two
  vectors are fused at widths 24/12/6 by :class:`SingleTokenCrossAttentionFusion`.
* ``"tokens"`` (mmscale's generalisation): every pyramid level is pooled to a small token
  grid, every clinical feature is a token (:class:`TabularTokenizer`), and
  :class:`MultiScaleCrossAttention` fuses them.

Missing data: a sample's volume can be absent (``volume_present[b] = False``, or
``volume=None`` for the whole batch) and any table value can be absent (NaN numerical,
-1 categorical, or ``None`` for a whole table). Absent volumes are zeroed before the
backbone and masked in the fusion; absent table values are replaced by learned
embeddings (tokens) or learned fill values (KAN path). Absent inputs therefore never
influence the prediction, and every sample still gets a finite one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import IO, Any

import torch
from torch import nn

from mmscale.layers.backbone import PyramidBackbone3d
from mmscale.layers.cross_attention import MultiScaleCrossAttention, SingleTokenCrossAttentionFusion
from mmscale.layers.kan import KANEncoder
from mmscale.layers.pyramid import BidirectionalPyramid3d
from mmscale.layers.tabular import TabularTokenizer, validate_table

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

    Attributes:
        in_channels: channels of the input volume (1 for CT).
        num_classes: classifier outputs (2 for the paper's adenocarcinoma vs squamous).
        num_numerical: numerical table columns (NaN = missing).
        categorical_cardinalities: categories per categorical column (-1 = missing).
        fusion: ``"tokens"`` (multi-scale token cross-attention) or ``"single"`` (the
            paper's one-vector-per-modality fusion with a KAN table encoder).
        freeze_image_encoder: backbone, neck norms and pyramid get no gradient and stay
            in eval mode (staged training).
        stem_channels, stem_in_channels, widths, depths, mid_widths, cardinality,
            se_reduction, drop_path_rate: :class:`PyramidBackbone3d` arguments.
        neck_dropout: dropout after each level's BN + ReLU.
        msca_kernel_sizes, msca_expansion, msca_reduction, spatial_kernel,
            share_spatial_attention, backend: :class:`BidirectionalPyramid3d` arguments.
        fusion_dims: fusion width per scale (one per pyramid level, finest first).
        num_heads: attention heads in the fusion.
        tokens_per_level: pooled token grid(s) for ``"tokens"``.
        table_dim: width of the table tokens for ``"tokens"``.
        attention_dropout: attention-weight dropout in the fusion.
        image_dropout: dropout on the pooled image vector (``"single"``).
        kan_hidden, kan_grid_size, kan_spline_order, kan_grid_range: the KAN table
            encoder of ``"single"`` (widths ``(F, *kan_hidden, fusion_dims[0])``).
        head_dropout: dropout before the classifier.

    Raises:
        ValueError: on construction (and :meth:`validate`), naming the first
            inconsistent field.

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
    # backbone
    stem_channels: int = 64
    stem_in_channels: int | None = None
    widths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[int, ...] = (3, 4, 6)
    mid_widths: tuple[int, ...] | None = None
    cardinality: int = 32
    se_reduction: int = 16
    drop_path_rate: float = 0.5
    # neck
    neck_dropout: float = 0.3
    msca_kernel_sizes: tuple = (1, 3, 5)
    msca_expansion: int = 2
    msca_reduction: int = 16
    spatial_kernel: int = 7
    share_spatial_attention: bool = True
    backend: str = "auto"
    # fusion
    fusion_dims: tuple[int, ...] = (64, 64, 64)
    num_heads: int = 4
    tokens_per_level: tuple = (2, 4, 4)
    table_dim: int = 64
    attention_dropout: float = 0.0
    image_dropout: float = 0.5
    kan_hidden: tuple[int, ...] = ()
    kan_grid_size: int = 5
    kan_spline_order: int = 3
    kan_grid_range: tuple[float, float] = (-2.0, 2.0)
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
        """Check the fields' consistency.

        Raises:
            ValueError: naming the first offending field.
        """
        for name in ("in_channels", "num_classes", "stem_channels", "num_heads", "table_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.num_numerical, int) or self.num_numerical < 0:
            raise ValueError(f"num_numerical must be an int >= 0, got {self.num_numerical!r}")
        if any((not isinstance(c, int)) or c < 1 for c in self.categorical_cardinalities):
            raise ValueError(
                f"categorical_cardinalities must be ints >= 1, got {self.categorical_cardinalities!r}"
            )
        if self.num_features < 1:
            raise ValueError("num_numerical and categorical_cardinalities describe no table feature")
        if self.fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {self.fusion!r}")
        if len(self.widths) < 2 or len(self.widths) != len(self.depths):
            raise ValueError(
                f"widths and depths must have the same length >= 2, got {self.widths}, {self.depths}"
            )
        levels = min(3, len(self.widths))
        if len(self.fusion_dims) != levels:
            raise ValueError(
                f"fusion_dims must have one width per pyramid level ({levels}), got {self.fusion_dims}"
            )
        for d in self.fusion_dims:
            if d % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide every fusion_dims entry {self.fusion_dims}")
        for name in ("neck_dropout", "attention_dropout", "image_dropout", "head_dropout", "drop_path_rate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")


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
_PAPER = dict(
    stem_in_channels=3,
    fusion="single",
    fusion_dims=(24, 12, 6),
    num_heads=1,
)
PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, "paper": _PAPER}
"""Preset name -> config overrides on top of :class:`MMCAFNetConfig`'s defaults."""


class MMCAFNet(nn.Module):
    """Multimodal multiscale cross-attention fusion network (volume + clinical table).

    Presets (:meth:`from_preset`):

    * ``"paper"`` — DESIGN section 5: PENet-50-style encoder (stem 3->64, stages
      [3, 4, 6] of cardinality-32 grouped bottlenecks with SE, 256/512/1024 channels;
      for a [B, 1, 12, 192, 192] crop the pyramid is 256@6x48x48, 512@3x24x24,
      1024@2x12x12), neck with BN + ReLU + Dropout(0.3), E3D-MSCA on every level with
      one shared spatial-attention conv, UpConv3d 1024->512->256, bottom-up gated
      fusion, global max pool, Linear(1024->24) + ReLU + Dropout(0.5); KAN table
      encoder 7->24; single-token fusion at widths 24/12/6; binary head.
      **Exactly 89,268,999 parameters** (default 7-feature table, 2-class head):
      backbone 10,502,896; neck 78,733,238 (per-level BN 3,584; E3D-MSCA x3 with one
      shared spatial conv 6,258,350; UpConv3d 700,672; bottom-up gated fusion
      71,770,632); image projection 24,600; table 1,519 (KAN 7->24 1,512 + 7 learned
      fill values); fusion 6,696; head 50. This matches DESIGN's "about 89 M"
      (backbone "about 10.5 M", neck "about 78.8 M"). The fusion is 6.7 K rather than
      "about 4.8 K": that figure is just the six q/k/v cross-attention projections at
      widths 24/12/6 (4,788, identical here); the inter-scale linear maps (756) and
      the two gated fusion units (1,152) come on top. With one key per attention the
      fusion's q/k projections receive exactly zero gradient (softmax over one key is
      1); they are kept so the preset matches the paper's layer inventory.
    * ``"tiny"`` — the same architecture at toy widths (stem 16, stages 32/64/128 of
      one block each, cardinality 8) with the ``"tokens"`` fusion (3 scales of width
      32, 2 heads, 2x4x4 tokens per level); 1,438,646 parameters. One AdamW training
      step (forward + backward + step) on [2, 1, 16, 64, 64] measured a median of
      0.34 s (range 0.27-0.42 s over 10 steps; 0.60 s median on a busier run) on 2
      shared CPU cores with torch 2.13 (``benchmarks/model_throughput.py``).

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
        )
        d0 = c.fusion_dims[0]
        if c.fusion == "single":
            self.image_proj = nn.Sequential(nn.Linear(levels[-1], d0), nn.ReLU(), nn.Dropout(c.image_dropout))
            # Learned stand-in for a missing clinical value (KAN input space).
            self.table_fill = nn.Parameter(torch.zeros(c.num_features))
            self.table_encoder = KANEncoder(
                (c.num_features, *c.kan_hidden, d0),
                grid_size=c.kan_grid_size,
                spline_order=c.kan_spline_order,
                grid_range=c.kan_grid_range,
            )
            self.register_buffer(
                "category_scale",
                torch.tensor([2.0 / (k - 1) if k > 1 else 0.0 for k in c.categorical_cardinalities]),
                persistent=False,
            )
            self.fusion = SingleTokenCrossAttentionFusion(c.fusion_dims, c.num_heads)
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
        return [self.backbone, self.neck_norm, self.pyramid]

    def set_image_encoder_trainable(self, flag: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) the image encoder.

        The image encoder is the backbone, the neck's per-level norms and the pyramid.
        While frozen its parameters have ``requires_grad=False`` and it stays in eval
        mode (BatchNorm statistics and dropout fixed) even when the model trains.
        ``config.freeze_image_encoder`` is updated so checkpoints record the state.

        Args:
            flag (bool): True to train the encoder.
        """
        flag = bool(flag)
        for module in self._image_encoder():
            for p in module.parameters():
                p.requires_grad_(flag)
        self.config = dataclasses.replace(self.config, freeze_image_encoder=not flag)
        self.train(self.training)

    def train(self, mode: bool = True) -> MMCAFNet:
        """Set train/eval mode; a frozen image encoder always stays in eval mode."""
        super().train(mode)
        if self.config.freeze_image_encoder:
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
            ValueError: ``volume`` has the wrong shape.
        """
        self._check_volume(volume)
        feats = self.backbone(volume)
        feats = [norm(f) for norm, f in zip(self.neck_norm, feats, strict=False)]
        _, gates = self.pyramid.top_down(feats, return_gates=True)
        return gates

    def _check_volume(self, volume: torch.Tensor) -> None:
        if not isinstance(volume, torch.Tensor):
            raise ValueError(f"volume must be a torch.Tensor or None, got {type(volume).__name__}")
        if volume.dim() != 5 or volume.shape[1] != self.config.in_channels:
            raise ValueError(
                f"volume must have shape [B, {self.config.in_channels}, D, H, W], got {list(volume.shape)}"
            )
        if not volume.is_floating_point():
            raise ValueError(f"volume must be a floating-point tensor, got {volume.dtype}")

    def _table_scalars(
        self, numerical: torch.Tensor | None, categorical: torch.Tensor | None, b: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The KAN path's inputs: one scalar per feature (categorical codes mapped onto
        [-1, 1] in code order), missing values replaced by learned fill values."""
        c = self.config
        device, dtype = self.table_fill.device, self.table_fill.dtype
        cols, valid = [], []
        if c.num_numerical:
            if numerical is None:
                cols.append(torch.zeros(b, c.num_numerical, device=device, dtype=dtype))
                valid.append(torch.zeros(b, c.num_numerical, device=device, dtype=torch.bool))
            else:
                ok = ~torch.isnan(numerical)
                cols.append(torch.where(ok, numerical, torch.zeros_like(numerical)).to(dtype))
                valid.append(ok)
        if c.categorical_cardinalities:
            k = len(c.categorical_cardinalities)
            if categorical is None:
                cols.append(torch.zeros(b, k, device=device, dtype=dtype))
                valid.append(torch.zeros(b, k, device=device, dtype=torch.bool))
            else:
                ok = categorical >= 0
                codes = torch.where(ok, categorical, torch.zeros_like(categorical)).to(dtype)
                cols.append(codes * self.category_scale.to(dtype) - (self.category_scale > 0).to(dtype))
                valid.append(ok)
        x = torch.cat(cols, dim=1)
        ok = torch.cat(valid, dim=1)
        return torch.where(ok, x, self.table_fill.expand_as(x)), ok

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
            volume_present (torch.Tensor | None): [B] bool, False = that sample has no
                volume (its content is ignored). None = all present. Ignored when
                ``volume`` is None.
            return_attention (bool): also return the fusion's attention weights.

        Returns:
            torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: logits
            [B, num_classes], and with ``return_attention`` a dict of attention
            weights keyed ``"scale{s}.<direction>"``.

        Raises:
            ValueError: an input of the wrong shape/dtype, or no input at all.
        """
        c = self.config
        if volume is None and numerical is None and categorical is None:
            raise ValueError("at least one of volume, numerical or categorical must be given")
        if volume is not None:
            self._check_volume(volume)
        b = validate_table(
            numerical,
            categorical,
            c.num_numerical,
            c.categorical_cardinalities,
            batch_size=None if volume is None else volume.shape[0],
        )

        feats = None
        present = None
        if volume is not None:
            if volume_present is None:
                present = torch.ones(b, dtype=torch.bool, device=volume.device)
            else:
                if volume_present.dtype != torch.bool or tuple(volume_present.shape) != (b,):
                    raise ValueError(
                        f"volume_present must be a bool tensor of shape [{b}], got "
                        f"{volume_present.dtype} {list(volume_present.shape)}"
                    )
                present = volume_present.to(volume.device)
                # Absent volumes are zeroed so their content (even NaN) cannot reach
                # the batch statistics or the output.
                volume = torch.where(present.view(b, 1, 1, 1, 1), volume, torch.zeros_like(volume))
            feats = self.encode_volume(volume)

        if c.fusion == "single":
            if feats is None:
                img = self.table_fill.new_zeros(b, c.fusion_dims[0])
                present = torch.zeros(b, dtype=torch.bool, device=img.device)
            else:
                img = self.image_proj(feats[-1].amax(dim=(2, 3, 4)))
            x, ok = self._table_scalars(numerical, categorical, b)
            tab = self.table_encoder(x)
            out = self.fusion(img, tab, present, ok.any(dim=1), return_attention)
        else:
            tokens, mask = self.tokenizer(numerical, categorical, batch_size=b)
            out = self.fusion(feats, tokens, mask, present, return_attention)
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
            ValueError: the dict is not an MMCAFNet checkpoint or its config is invalid.
        """
        if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"checkpoint format must be {CHECKPOINT_FORMAT!r}, got {got!r}")
        raw = state.get("config")
        if not isinstance(raw, Mapping):
            raise ValueError("checkpoint has no 'config' dict")
        known = {f.name for f in dataclasses.fields(MMCAFNetConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"checkpoint config has unknown field(s) {unknown}")
        model = cls(MMCAFNetConfig(**{k: _tupled(v) for k, v in raw.items()}))
        model.load_state_dict(state["model"])
        schema = state.get("table_schema")
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
            ValueError: the file is not an MMCAFNet checkpoint.
        """
        state = torch.load(path, map_location=map_location, weights_only=True)
        return cls.from_state(state)

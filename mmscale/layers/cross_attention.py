"""Cross-attention between volume and table tokens, at several scales.

Key masks follow PyTorch's ``nn.MultiheadAttention`` convention: a
``key_padding_mask`` (or ``table_padding_mask``) is True where a key is padding and
must be ignored. Presence flags say so in their name (``volume_present``,
``image_present``, the tokenizer's validity mask): True = present. A query whose keys
are all ignored (the other modality is missing for that sample) gets a zero attention
output, so with the residual it passes through unchanged and ignored values never
influence it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmscale._validation import positive_int
from mmscale.layers.pooling import adaptive_avg_pool3d

__all__ = [
    "adaptive_avg_pool3d",
    "CrossAttention",
    "GatedVectorFusion",
    "MultiScaleCrossAttention",
    "MultiScaleVectorCrossAttention",
]


def _as_dims(name: str, dim: int | Sequence[int], count: int) -> tuple[int, ...]:
    """Expand a width (or one width per scale) to a tuple of ``count`` widths."""
    dims = (dim,) * count if isinstance(dim, int) else tuple(dim)
    if len(dims) != count:
        raise ValueError(f"{name} must be an int or {count} ints (one per scale), got {dim!r}")
    for d in dims:
        positive_int(d, name)
    return dims


def _refuse_removed(removed: dict[str, object], old: str, new: str) -> None:
    """Refuse a removed keyword argument by name (a pre-1.0 rename, never reinterpreted)."""
    if old in removed:
        raise TypeError(
            f"{old} was removed: pass {new} instead, with PyTorch's meaning (True = ignore that key), "
            f"i.e. {new}=~{old}"
        )
    if removed:
        raise TypeError(f"unexpected keyword argument(s) {sorted(removed)}")


class CrossAttention(nn.Module):
    """Multi-head cross-attention with a key padding mask.

    Uses :func:`torch.nn.functional.scaled_dot_product_attention`; when the attention
    weights are requested they are computed explicitly (the fused kernel does not
    return them) with the same math.

    Args:
        dim (int): query width (and output width).
        num_heads (int): number of heads; must divide ``dim``.
        context_dim (int | None): key/value input width (default ``dim``).
        qkv_bias (bool): bias in the query, key and value projections.
        out_proj (bool): apply an output projection ``Linear(dim, dim)`` (the paper's
            fusion has none).
        dropout (float): dropout on the attention weights (training only).

    Shapes:
        query: [B, Nq, dim], context: [B, Nk, context_dim], key_padding_mask: [B, Nk]
        -> [B, Nq, dim] (and weights [B, num_heads, Nq, Nk]).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``, or a size/probability is invalid.

    Example:
        >>> attn = CrossAttention(16, num_heads=4, context_dim=8)
        >>> pad = torch.tensor([[False, False, True], [False, False, False]])  # True = ignore
        >>> out, w = attn(torch.randn(2, 5, 16), torch.randn(2, 3, 8), key_padding_mask=pad,
        ...               return_attention=True)
        >>> out.shape, w.shape, w[0, :, :, 2].abs().max().item()
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 3]), 0.0)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        out_proj: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        positive_int(dim, "dim")
        positive_int(num_heads, "num_heads")
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        context_dim = dim if context_dim is None else positive_int(context_dim, "context_dim")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.context_dim = context_dim
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim) if out_proj else nn.Identity()

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        **removed: object,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``query`` tokens to ``context`` tokens.

        Args:
            query (torch.Tensor): [B, Nq, dim].
            context (torch.Tensor): [B, Nk, context_dim].
            key_padding_mask (torch.Tensor | None): [B, Nk] bool, True = ignore that
                key (``nn.MultiheadAttention``'s meaning). Queries whose keys are all
                ignored get a zero output (and zero weights). Keyword-only.
            return_attention (bool): also return the attention weights (keyword-only).
            **removed: the former ``key_mask`` (True = keep) is refused with a
                ``TypeError``, so an old call is never silently inverted.

        Returns:
            torch.Tensor | tuple[torch.Tensor, torch.Tensor]: output [B, Nq, dim], and
            with ``return_attention`` the weights [B, num_heads, Nq, Nk].

        Raises:
            TypeError: the removed ``key_mask`` argument, or any unknown keyword.
            ValueError: shapes do not match.
        """
        _refuse_removed(removed, "key_mask", "key_padding_mask")
        if query.dim() != 3 or query.shape[-1] != self.dim:
            raise ValueError(f"query must have shape [B, Nq, {self.dim}], got {list(query.shape)}")
        if context.dim() != 3 or context.shape[-1] != self.context_dim or context.shape[0] != query.shape[0]:
            raise ValueError(
                f"context must have shape [{query.shape[0]}, Nk, {self.context_dim}], "
                f"got {list(context.shape)}"
            )
        b, nk = context.shape[0], context.shape[1]
        if key_padding_mask is not None and (
            not isinstance(key_padding_mask, torch.Tensor)
            or key_padding_mask.dtype != torch.bool
            or tuple(key_padding_mask.shape) != (b, nk)
        ):
            got = (
                f"{key_padding_mask.dtype} {list(key_padding_mask.shape)}"
                if isinstance(key_padding_mask, torch.Tensor)
                else type(key_padding_mask).__name__
            )
            raise ValueError(f"key_padding_mask must be a bool tensor of shape [{b}, {nk}] (True = ignore), got {got}")
        h = self.num_heads
        q = rearrange(self.q_proj(query), "b n (h d) -> b h n d", h=h)
        k = rearrange(self.k_proj(context), "b n (h d) -> b h n d", h=h)
        v = rearrange(self.v_proj(context), "b n (h d) -> b h n d", h=h)
        dropout_p = self.dropout if self.training else 0.0

        if key_padding_mask is None:
            has_key = None
            attn_mask = None
        else:
            key_mask = ~key_padding_mask  # True = attend
            has_key = key_mask.any(dim=-1)  # [B]
            # A row with no present key would softmax over all -inf (NaN); let it see
            # every key instead and zero its output below.
            safe = key_mask | ~has_key.unsqueeze(-1)
            attn_mask = rearrange(safe, "b k -> b 1 1 k")

        if return_attention:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            if has_key is not None:
                weights = weights * rearrange(has_key, "b -> b 1 1 1").to(weights.dtype)
            weights_used = F.dropout(weights, p=dropout_p, training=self.training)
            out = torch.matmul(weights_used, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        out = self.out_proj(rearrange(out, "b h n d -> b n (h d)"))
        if has_key is not None:
            out = torch.where(rearrange(has_key, "b -> b 1 1"), out, torch.zeros_like(out))
        if return_attention:
            return out, weights
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, context_dim={self.context_dim}"


class GatedVectorFusion(nn.Module):
    """Gated fusion of two vectors: ``u = W_x a, v = W_y b, att = softmax(u * v)``,
    ``out = u + u * att + v + v * att``.

    Args:
        a_dim (int): width of ``a`` (the coarser input in a coarse-to-fine merge).
        b_dim (int): width of ``b``.
        out_dim (int): output width.

    Shapes:
        a: [..., a_dim], b: [..., b_dim] -> [..., out_dim]

    Raises:
        ValueError: a width is < 1.

    Example:
        >>> gfu = GatedVectorFusion(6, 12, 12)
        >>> gfu(torch.randn(2, 6), torch.randn(2, 12)).shape
        torch.Size([2, 12])
    """

    def __init__(self, a_dim: int, b_dim: int, out_dim: int) -> None:
        super().__init__()
        self.w_x = nn.Linear(positive_int(a_dim, "a_dim"), positive_int(out_dim, "out_dim"))
        self.w_y = nn.Linear(positive_int(b_dim, "b_dim"), out_dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fuse ``a`` and ``b``.

        Args:
            a (torch.Tensor): [..., a_dim].
            b (torch.Tensor): [..., b_dim].

        Returns:
            torch.Tensor: [..., out_dim].
        """
        u = self.w_x(a)
        v = self.w_y(b)
        att = torch.softmax(u * v, dim=-1)
        return u + u * att + v + v * att


_COMBINES = ("mean", "sum")


def _coarse_to_fine(units: nn.ModuleList, outputs: list[torch.Tensor]) -> torch.Tensor:
    """Merge per-scale outputs, coarsest (last) first: ``m = unit_s(m, out_s)``."""
    merged = outputs[-1]
    for s in range(len(outputs) - 2, -1, -1):
        merged = units[s](merged, outputs[s])
    return merged


class MultiScaleVectorCrossAttention(nn.Module):
    """The published MMCAF-Net fusion: one image vector and one table vector, three widths.

    With ``i_0 = BN_img(image)``, ``t_0 = BN_tab(table)`` (``BatchNorm1d(dims[0])``
    each) and ``CA_s`` one :class:`CrossAttention` per scale (q/k/v with bias, no
    output projection) that serves **both** directions with the same weights:

    * scale ``s``: ``a_i = CA_s(query=i_s, key/value=t_s) + i_s``,
      ``a_t = CA_s(query=t_s, key/value=i_s) + t_s``; the scale output is
      ``(a_i + a_t) / 2`` (``combine="mean"``, the original) or ``a_i + a_t``
      (``"sum"``);
    * next scale: ``i_{s+1} = down_s(i_0) + map^img_s(a_i)`` and
      ``t_{s+1} = down_s(t_0) + map^tab_s(a_t)``, where ``down_s`` is
      ``Linear(dims[0] -> dims[s+1]) + ReLU + Dropout(down_dropout)`` on the
      normalised input (shared by both modalities) and ``map_s`` is
      ``Linear(dims[s] -> dims[s+1])``, one per modality;
    * the scale outputs are merged coarse-to-fine by :class:`GatedVectorFusion`:
      for three scales ``f1 = G_1(out_2, out_1)``, ``f = G_0(f1, out_0)``.

    With a single key the softmax is identically 1, so each attention equals the
    value projection of the other modality (the query and key projections are kept,
    as in the original, but receive exactly zero gradient). At widths (24, 12, 6)
    the layer has 4,848 parameters: attentions 2,394, BatchNorms 96,
    down-projections 450, inter-scale maps 756, gated units 1,152.

    Missing modalities (an mmscale addition; the original has none): an absent
    image is zeroed before its BatchNorm, is no key for the table, and the scale
    output is then ``a_t`` alone; an absent table is no key for the image (the table
    vector itself still contributes: it carries the learned missing-value encoding).
    ``image=None`` means no sample has an image (its BatchNorm is then skipped, so
    its running statistics are not pulled towards zero).

    Args:
        dims (Sequence[int]): widths per scale, e.g. ``(24, 12, 6)``.
        num_heads (int | Sequence[int]): heads per scale (the original: 4, 2, 2);
            each must divide its width.
        combine (str): ``"mean"`` (the original) or ``"sum"`` of the two directions.
        down_dropout (float): dropout of the down-projections (the original: 0.5).

    Shapes:
        image: [B, dims[0]], table: [B, dims[0]], image_present: [B], table_present: [B]
        -> [B, dims[0]]

    Raises:
        ValueError: invalid widths, heads, ``combine`` or dropout, or inputs of the
            wrong shape.

    Example:
        >>> fusion = MultiScaleVectorCrossAttention((24, 12, 6), num_heads=(4, 2, 2))
        >>> sum(p.numel() for p in fusion.parameters())
        4848
        >>> fusion.eval()(torch.randn(2, 24), torch.randn(2, 24)).shape
        torch.Size([2, 24])
    """

    def __init__(
        self,
        dims: Sequence[int] = (24, 12, 6),
        num_heads: int | Sequence[int] = (4, 2, 2),
        combine: str = "mean",
        down_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        dims = tuple(dims)
        if not dims:
            raise ValueError("dims must list at least one width")
        dims = _as_dims("dims", dims, len(dims))
        heads = _as_dims("num_heads", num_heads, len(dims))
        for d, h in zip(dims, heads, strict=True):
            if d % h:
                raise ValueError(f"num_heads {heads} must divide dims {dims} scale by scale")
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
        if isinstance(down_dropout, bool) or not isinstance(down_dropout, (int, float)) or not 0.0 <= down_dropout < 1.0:
            raise ValueError(f"down_dropout must be a float in [0, 1), got {down_dropout!r}")
        self.dims = dims
        self.num_heads = heads
        self.combine = combine
        d0 = dims[0]
        self.image_norm = nn.BatchNorm1d(d0)
        self.table_norm = nn.BatchNorm1d(d0)
        self.attn = nn.ModuleList(
            CrossAttention(d, h, out_proj=False) for d, h in zip(dims, heads, strict=True)
        )
        self.down = nn.ModuleList(
            nn.Sequential(nn.Linear(d0, d), nn.ReLU(), nn.Dropout(down_dropout)) for d in dims[1:]
        )
        self.image_map = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.table_map = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.merge = nn.ModuleList(GatedVectorFusion(dims[s + 1], dims[s], dims[s]) for s in range(len(dims) - 1))

    @property
    def out_dim(self) -> int:
        """Width of the fused embedding (``dims[0]``)."""
        return self.dims[0]

    def forward(
        self,
        image: torch.Tensor | None,
        table: torch.Tensor,
        image_present: torch.Tensor | None = None,
        table_present: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fuse one image and one table vector per sample.

        Args:
            image (torch.Tensor | None): [B, dims[0]] image embedding; None = no
                sample has an image.
            table (torch.Tensor): [B, dims[0]] table embedding.
            image_present (torch.Tensor | None): [B] bool, True = the sample's image
                is present (a presence flag, not a padding mask). None = all present.
            table_present (torch.Tensor | None): [B] bool, True = the sample has at
                least one table value. None = all present.
            return_attention (bool): also return the attention weights
                (``"scale{s}.image_to_table"`` / ``"scale{s}.table_to_image"``, [B, heads, 1, 1]).

        Returns:
            torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: fused [B, dims[0]].

        Raises:
            ValueError: inputs of the wrong shape.
        """
        d0 = self.dims[0]
        if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != d0:
            got = list(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"table must have shape [B, {d0}], got {got}")
        b = table.shape[0]
        if image is not None and (not isinstance(image, torch.Tensor) or tuple(image.shape) != (b, d0)):
            got = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must have shape [{b}, {d0}] (like table), got {got}")
        ones = torch.ones(b, dtype=torch.bool, device=table.device)
        if image is None:
            image_present = torch.zeros(b, dtype=torch.bool, device=table.device)
        image_present = ones if image_present is None else image_present
        table_present = ones if table_present is None else table_present
        for name, m in (("image_present", image_present), ("table_present", table_present)):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (b,):
                got = f"{m.dtype} {list(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(f"{name} must be a bool tensor of shape [{b}], got {got}")

        if image is None:
            i0 = table.new_zeros(b, d0)
        else:
            # Absent images are zeroed first, so their content (even NaN) cannot reach
            # the BatchNorm statistics; in training the zeros themselves still count.
            i0 = self.image_norm(torch.where(image_present[:, None], image, torch.zeros_like(image)))
        t0 = self.table_norm(table)
        img_pad = rearrange(~image_present, "b -> b 1")  # key padding masks (True = ignore)
        tab_pad = rearrange(~table_present, "b -> b 1")
        i, t = i0.unsqueeze(1), t0.unsqueeze(1)  # [B, 1, d]
        a_i, a_t = i, t
        outputs, weights = [], {}
        for s in range(len(self.dims)):
            if s:
                down_i = self.down[s - 1](i0).unsqueeze(1)
                down_t = self.down[s - 1](t0).unsqueeze(1)
                i = down_i + self.image_map[s - 1](a_i)
                t = down_t + self.table_map[s - 1](a_t)
            ca_i = self.attn[s](i, t, key_padding_mask=tab_pad, return_attention=return_attention)
            ca_t = self.attn[s](t, i, key_padding_mask=img_pad, return_attention=return_attention)
            if return_attention:
                ca_i, weights[f"scale{s}.image_to_table"] = ca_i
                ca_t, weights[f"scale{s}.table_to_image"] = ca_t
            a_i, a_t = ca_i + i, ca_t + t
            both = (a_i + a_t) / 2 if self.combine == "mean" else a_i + a_t
            out = torch.where(rearrange(image_present, "b -> b 1 1"), both, a_t)
            outputs.append(out.squeeze(1))
        fused = _coarse_to_fine(self.merge, outputs)
        return (fused, weights) if return_attention else fused

    def extra_repr(self) -> str:
        return f"dims={self.dims}, num_heads={self.num_heads}, combine={self.combine!r}"


class MultiScaleCrossAttention(nn.Module):
    """Bidirectional volume <-> table cross-attention over pyramid levels.

    For scale ``s`` (pyramid level ``s``, finest first): the level's feature map is
    average-pooled to a small token grid, layer-normed and projected to ``dims[s]``
    (plus a learned position embedding), then
    ``V' = V + CA(LN(V) <- LN(T))`` (key mask: missing table features) and
    ``T' = T + CA(LN(T) <- LN(V))`` (key mask: missing volumes). Scale ``s`` feeds
    ``s + 1``: ``T_{s+1} = Linear(T'_s)``, and ``Linear(V'_s)`` (resampled to the next
    token grid) is added to the next level's volume tokens. The scale output is the
    mean of the present volume tokens plus the mean of the table tokens; outputs are
    merged coarse-to-fine by :class:`GatedVectorFusion`.

    Args:
        volume_dims (Sequence[int]): channels of each pyramid level, finest first.
        tabular_dim (int): width of the table tokens (``TabularTokenizer`` dim).
        dim (int | Sequence[int]): fusion width, shared or one per scale.
        num_heads (int | Sequence[int]): attention heads, shared or one per scale
            (each must divide its width).
        tokens_per_level (Sequence[int] | Sequence[Sequence[int]]): pooled token grid
            ``(d, h, w)``, shared by all levels, or one grid per level.
        dropout (float): attention dropout.

    Shapes:
        volume_features: list of [B, C_s, D_s, H_s, W_s]; table_tokens: [B, F, tabular_dim];
        table_padding_mask: [B, F]; volume_present: [B] -> [B, out_dim], where
        ``out_dim`` is ``dim`` (``dim[0]`` when ``dim`` gives one width per scale)

    Raises:
        ValueError: invalid arguments, or inputs that do not match them.

    Example:
        >>> msca = MultiScaleCrossAttention((8, 16), tabular_dim=4, dim=16, num_heads=2)
        >>> feats = [torch.randn(2, 8, 4, 8, 8), torch.randn(2, 16, 2, 4, 4)]
        >>> msca(feats, torch.randn(2, 3, 4)).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        volume_dims: Sequence[int],
        tabular_dim: int,
        dim: int | Sequence[int],
        num_heads: int = 4,
        tokens_per_level: Sequence[int] | Sequence[Sequence[int]] = (2, 4, 4),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        volume_dims = tuple(volume_dims)
        if not volume_dims:
            raise ValueError("volume_dims must list at least one pyramid level")
        for c in volume_dims:
            positive_int(c, "volume_dims")
        positive_int(tabular_dim, "tabular_dim")
        n = len(volume_dims)
        dims = _as_dims("dim", dim, n)
        grids = tuple(tokens_per_level)
        if len(grids) == 3 and all(isinstance(g, int) for g in grids):
            grids = (grids,) * n
        grids = tuple(tuple(g) if isinstance(g, Sequence) else (g,) for g in grids)
        if len(grids) != n or any(len(g) != 3 or any((not isinstance(v, int)) or v < 1 for v in g) for g in grids):
            raise ValueError(
                f"tokens_per_level must be one (d, h, w) grid of ints >= 1 or {n} such grids, "
                f"got {tokens_per_level!r}"
            )
        self.volume_dims = volume_dims
        self.tabular_dim = tabular_dim
        self.dims = dims
        heads = _as_dims("num_heads", num_heads, n)
        for d, h in zip(dims, heads, strict=True):
            if d % h:
                raise ValueError(f"num_heads {heads} must divide dim {dims} scale by scale")
        self.num_heads = heads
        self.grids = grids

        self.volume_proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(c), nn.Linear(c, d)) for c, d in zip(volume_dims, dims, strict=False)
        )
        self.volume_pos = nn.ParameterList(
            nn.Parameter(torch.randn(g[0] * g[1] * g[2], d) * 0.02) for g, d in zip(grids, dims, strict=False)
        )
        self.table_proj = nn.Linear(tabular_dim, dims[0])
        self.volume_norm = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.table_norm = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.volume_attn = nn.ModuleList(
            CrossAttention(d, h, dropout=dropout) for d, h in zip(dims, heads, strict=True)
        )
        self.table_attn = nn.ModuleList(
            CrossAttention(d, h, dropout=dropout) for d, h in zip(dims, heads, strict=True)
        )
        self.volume_next = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=False))
        self.table_next = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=False))
        self.merge = nn.ModuleList(GatedVectorFusion(dims[s + 1], dims[s], dims[s]) for s in range(n - 1))

    @property
    def out_dim(self) -> int:
        """Width of the fused embedding (``dims[0]``)."""
        return self.dims[0]

    def _volume_tokens(self, s: int, feat: torch.Tensor | None, b: int, ref: torch.Tensor) -> torch.Tensor:
        grid = self.grids[s]
        if feat is None:
            tokens = ref.new_zeros(b, grid[0] * grid[1] * grid[2], self.dims[s])
        else:
            pooled = adaptive_avg_pool3d(feat, grid)
            tokens = self.volume_proj[s](rearrange(pooled, "b c d h w -> b (d h w) c"))
        return tokens + self.volume_pos[s]

    def forward(
        self,
        volume_features: Sequence[torch.Tensor] | None,
        table_tokens: torch.Tensor,
        *,
        table_padding_mask: torch.Tensor | None = None,
        volume_present: torch.Tensor | None = None,
        return_attention: bool = False,
        **removed: object,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fuse pyramid levels with table tokens.

        Args:
            volume_features (Sequence[torch.Tensor] | None): one [B, C_s, D_s, H_s, W_s]
                map per level, finest first; None when no sample has a volume.
            table_tokens (torch.Tensor): [B, F, tabular_dim].
            table_padding_mask (torch.Tensor | None): [B, F] bool, True = ignore that
                table token (a missing feature; ``nn.MultiheadAttention``'s meaning).
                The tokenizer's validity mask is its inverse:
                ``table_padding_mask=~valid``. Keyword-only, like the arguments after it.
            volume_present (torch.Tensor | None): [B] bool presence flag, True = the
                sample's volume is present.
            return_attention (bool): also return the attention weights, keyed
                ``"scale{s}.volume_to_table"`` ([B, heads, N_s, F]) and
                ``"scale{s}.table_to_volume"`` ([B, heads, F, N_s]).
            **removed: the former ``table_mask`` (True = keep) is refused with a
                ``TypeError``, so an old call is never silently inverted.

        Returns:
            torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]: fused [B, out_dim]
            (``out_dim`` is ``dim``, or ``dim[0]`` for one width per scale).

        Raises:
            TypeError: the removed ``table_mask`` argument, or any unknown keyword.
            ValueError: inputs do not match the layer's configuration.
        """
        _refuse_removed(removed, "table_mask", "table_padding_mask")
        if table_tokens.dim() != 3 or table_tokens.shape[-1] != self.tabular_dim:
            raise ValueError(
                f"table_tokens must have shape [B, F, {self.tabular_dim}], got {list(table_tokens.shape)}"
            )
        b, f = table_tokens.shape[0], table_tokens.shape[1]
        device = table_tokens.device
        if table_padding_mask is None:
            table_padding_mask = torch.zeros(b, f, dtype=torch.bool, device=device)
        elif (
            not isinstance(table_padding_mask, torch.Tensor)
            or table_padding_mask.dtype != torch.bool
            or tuple(table_padding_mask.shape) != (b, f)
        ):
            got = (
                f"{table_padding_mask.dtype} {list(table_padding_mask.shape)}"
                if isinstance(table_padding_mask, torch.Tensor)
                else type(table_padding_mask).__name__
            )
            raise ValueError(f"table_padding_mask must be a bool tensor of shape [{b}, {f}] (True = ignore), got {got}")
        if volume_features is None:
            volume_present = torch.zeros(b, dtype=torch.bool, device=device)
            feats: list[torch.Tensor | None] = [None] * len(self.dims)
        else:
            feats = list(volume_features)
            if len(feats) != len(self.dims):
                raise ValueError(f"volume_features must hold {len(self.dims)} levels, got {len(feats)}")
            for s, (x, c) in enumerate(zip(feats, self.volume_dims, strict=False)):
                if x.dim() != 5 or x.shape[0] != b or x.shape[1] != c:
                    raise ValueError(
                        f"volume_features[{s}] must have shape [{b}, {c}, D, H, W], got {list(x.shape)}"
                    )
            if volume_present is None:
                volume_present = torch.ones(b, dtype=torch.bool, device=device)
        if volume_present.dtype != torch.bool or tuple(volume_present.shape) != (b,):
            raise ValueError(
                f"volume_present must be a bool tensor of shape [{b}], got {volume_present.dtype} "
                f"{list(volume_present.shape)}"
            )

        table = self.table_proj(table_tokens)
        outputs, weights = [], {}
        carried = None
        for s in range(len(self.dims)):
            vol = self._volume_tokens(s, feats[s], b, table)
            if carried is not None:
                vol = vol + self._resample(self.volume_next[s - 1](carried), self.grids[s - 1], self.grids[s])
                table = self.table_next[s - 1](table)
            vol_pad = (~volume_present).unsqueeze(-1).expand(b, vol.shape[1])
            nv, nt = self.volume_norm[s](vol), self.table_norm[s](table)
            a_vol = self.volume_attn[s](
                nv, nt, key_padding_mask=table_padding_mask, return_attention=return_attention
            )
            a_tab = self.table_attn[s](nt, nv, key_padding_mask=vol_pad, return_attention=return_attention)
            if return_attention:
                a_vol, weights[f"scale{s}.volume_to_table"] = a_vol
                a_tab, weights[f"scale{s}.table_to_volume"] = a_tab
            vol, table = vol + a_vol, table + a_tab
            vol_mean = torch.where(
                rearrange(volume_present, "b -> b 1"), vol.mean(dim=1), torch.zeros_like(vol[:, 0])
            )
            outputs.append(vol_mean + table.mean(dim=1))
            carried = vol
        fused = _coarse_to_fine(self.merge, outputs)
        return (fused, weights) if return_attention else fused

    @staticmethod
    def _resample(tokens: torch.Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> torch.Tensor:
        """Move tokens from one (d, h, w) token grid to another (identity when equal)."""
        if src == dst:
            return tokens
        grid = rearrange(tokens, "b (d h w) c -> b c d h w", d=src[0], h=src[1], w=src[2])
        grid = F.interpolate(grid, size=dst, mode="trilinear", align_corners=False)
        return rearrange(grid, "b c d h w -> b (d h w) c")

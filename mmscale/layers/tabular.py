"""Tabular (clinical table) encoders, with missing values.

Clinical tables are small (a handful of columns) and often incomplete. Two encoders
share one reading of a table batch (NaN numerical or -1 categorical = missing):

* :class:`TabularTokenizer`: every feature gets its own token and every missing entry
  a learned, per-feature "missing" embedding instead of an imputed number. The
  validity mask that comes with the tokens (True = present) is the inverse of an
  attention ``key_padding_mask`` (True = ignore).
* :class:`TabularKANEncoder`: the published MMCAF-Net's table path, one scalar per
  feature (a missing one replaced by a learned fill value) through a KAN, giving one
  table vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmscale._validation import non_negative_int, positive_int, positive_ints
from mmscale.layers.kan import KANEncoder

__all__ = ["TabularTokenizer", "TabularKANEncoder", "validate_table"]


def _eager() -> bool:
    """True when running eagerly, i.e. value-dependent checks are allowed.

    Checks that read tensor values (``.any()``) would break ``torch.export``,
    ``torch.compile`` and ONNX tracing, so they only run in plain eager mode.
    """
    compiler = getattr(torch, "compiler", None)
    for name in ("is_compiling", "is_exporting"):
        check = getattr(compiler, name, None)
        if check is not None and check():
            return False
    if isinstance(torch.empty(0), torch._subclasses.FakeTensor):  # fake-tensor tracing
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not torch.onnx.is_in_onnx_export()


def validate_table(
    numerical: torch.Tensor | None,
    categorical: torch.Tensor | None,
    num_numerical: int,
    categorical_cardinalities: Sequence[int],
    batch_size: int | None = None,
) -> int:
    """Check a table batch against its schema and return the batch size.

    Args:
        numerical (torch.Tensor | None): floats of shape [B, num_numerical]; NaN = missing.
        categorical (torch.Tensor | None): integer codes of shape [B, len(cardinalities)];
            -1 = missing, otherwise ``0 <= code < cardinality``.
        num_numerical (int): expected number of numerical columns.
        categorical_cardinalities (Sequence[int]): expected categories per categorical column.
        batch_size (int | None): batch size to use (and check against) when known.

    Returns:
        int: the batch size (``batch_size`` if given, else taken from the tensors).

    Raises:
        TypeError: ``numerical`` or ``categorical`` is not a tensor, or has the wrong
            dtype (floating-point, integer).
        ValueError: a tensor has the wrong rank, column count or batch size, a
            numerical value is infinite, a categorical code is out of range, or the
            batch size cannot be inferred.
    """
    sizes = []
    if numerical is not None:
        if not isinstance(numerical, torch.Tensor):
            raise TypeError(f"numerical must be a torch.Tensor or None, got {type(numerical).__name__}")
        if numerical.dim() != 2 or numerical.shape[1] != num_numerical:
            raise ValueError(
                f"numerical must have shape [B, {num_numerical}], got {list(numerical.shape)}"
            )
        if not numerical.is_floating_point():
            raise TypeError(f"numerical must be a floating-point tensor, got {numerical.dtype}")
        if _eager() and numerical.numel() > 0 and numerical.device.type != "meta":
            if bool(torch.isinf(numerical).any()):
                col = int(torch.isinf(numerical).any(dim=0).nonzero()[0, 0])
                raise ValueError(
                    f"numerical column {col} holds an infinite value (NaN marks a missing value; "
                    "inf is never a valid one)"
                )
        sizes.append(numerical.shape[0])
    num_cat = len(categorical_cardinalities)
    if categorical is not None:
        if not isinstance(categorical, torch.Tensor):
            raise TypeError(
                f"categorical must be a torch.Tensor or None, got {type(categorical).__name__}"
            )
        if categorical.dim() != 2 or categorical.shape[1] != num_cat:
            raise ValueError(
                f"categorical must have shape [B, {num_cat}], got {list(categorical.shape)}"
            )
        if categorical.is_floating_point() or categorical.is_complex() or categorical.dtype == torch.bool:
            raise TypeError(f"categorical must be an integer tensor, got {categorical.dtype}")
        if _eager() and categorical.numel() > 0 and categorical.device.type != "meta":
            high = torch.tensor(list(categorical_cardinalities), device=categorical.device)
            bad = (categorical < -1) | (categorical >= high)
            if bool(bad.any()):
                col = int(bad.any(dim=0).nonzero()[0, 0])
                raise ValueError(
                    f"categorical column {col} has codes outside [-1, {categorical_cardinalities[col] - 1}] "
                    f"(-1 = missing; cardinality {categorical_cardinalities[col]})"
                )
        sizes.append(categorical.shape[0])
    if batch_size is not None:
        sizes.append(batch_size)
    if not sizes:
        raise ValueError("batch_size is required when both numerical and categorical are None")
    if any(s != sizes[0] for s in sizes):
        raise ValueError(f"numerical, categorical and batch_size disagree on the batch size: {sizes}")
    return sizes[0]


def _read_table(
    numerical: torch.Tensor | None,
    categorical: torch.Tensor | None,
    num_numerical: int,
    num_categorical: int,
    b: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a validated table batch into values with missing entries replaced by 0.

    Missing values are replaced before any arithmetic, so NaN cannot reach outputs or
    gradients (``0 * NaN`` is NaN).

    Returns:
        numerical values [B, Fn] (``dtype``), their validity [B, Fn], categorical codes
        [B, Fc] (long, missing -> 0) and their validity [B, Fc].
    """
    if numerical is None:
        values = torch.zeros(b, num_numerical, device=device, dtype=dtype)
        num_valid = torch.zeros(b, num_numerical, device=device, dtype=torch.bool)
    else:
        num_valid = ~torch.isnan(numerical)
        values = torch.where(num_valid, numerical, torch.zeros_like(numerical)).to(dtype)
    if categorical is None:
        codes = torch.zeros(b, num_categorical, device=device, dtype=torch.long)
        cat_valid = torch.zeros(b, num_categorical, device=device, dtype=torch.bool)
    else:
        codes = categorical.long()
        cat_valid = codes >= 0
        codes = torch.where(cat_valid, codes, torch.zeros_like(codes))
    return values, num_valid, codes, cat_valid


class TabularTokenizer(nn.Module):
    """One token per clinical feature, with a learned embedding for missing values.

    Numerical feature ``i`` becomes ``x_i * w_i + b_i`` (``w_i, b_i: [dim]``);
    categorical feature ``j`` is looked up in its own embedding table. A NaN
    (numerical) or -1 (categorical) marks a missing value: its token is the learned
    missing embedding of that feature and its mask entry is False. Missing values
    never reach the arithmetic (they are replaced before the multiply), so they cannot
    leak NaN into outputs or gradients.

    Args:
        numerical (int): number of numerical features (may be 0).
        categorical (Sequence[int]): cardinality of each categorical feature (may be empty).
        dim (int): token width.

    Raises:
        ValueError: a count is negative, a cardinality is < 1, there are no features,
            or ``dim < 1``.

    Example:
        >>> tok = TabularTokenizer(numerical=2, categorical=(2, 4), dim=8)
        >>> x_num = torch.tensor([[0.5, float("nan")]])
        >>> x_cat = torch.tensor([[1, -1]])
        >>> tokens, mask = tok(x_num, x_cat)
        >>> tokens.shape, mask.tolist()
        (torch.Size([1, 4, 8]), [[True, False, True, False]])
    """

    def __init__(self, numerical: int, categorical: Sequence[int], dim: int) -> None:
        super().__init__()
        numerical = non_negative_int(numerical, "numerical")
        categorical = positive_ints(tuple(categorical), "categorical", allow_empty=True)
        if numerical + len(categorical) == 0:
            raise ValueError("numerical and categorical describe no features (need at least one)")
        dim = positive_int(dim, "dim")
        self.num_numerical = numerical
        self.categorical_cardinalities = categorical
        self.dim = dim
        self.num_features = numerical + len(categorical)

        self.num_weight = nn.Parameter(torch.empty(numerical, dim))
        self.num_bias = nn.Parameter(torch.empty(numerical, dim))
        # All categorical tables live in one embedding; each column reads its own slice.
        self.cat_embedding = nn.Embedding(max(sum(categorical), 1), dim)
        offsets = [0]
        for c in categorical[:-1]:
            offsets.append(offsets[-1] + c)
        self.register_buffer(
            "cat_offsets", torch.tensor(offsets[: len(categorical)], dtype=torch.long), persistent=False
        )
        self.missing = nn.Parameter(torch.empty(self.num_features, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise all weights (small normal values, like token embeddings)."""
        nn.init.normal_(self.num_weight, std=0.02)
        nn.init.normal_(self.num_bias, std=0.02)
        nn.init.normal_(self.cat_embedding.weight, std=0.02)
        nn.init.normal_(self.missing, std=0.02)

    def forward(
        self,
        numerical: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a table batch.

        Args:
            numerical (torch.Tensor | None): [B, numerical] floats, NaN = missing.
                None means every numerical value is missing.
            categorical (torch.Tensor | None): [B, len(categorical)] integer codes,
                -1 = missing. None means every categorical value is missing.
            batch_size (int | None): needed only when both tables are None.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: tokens [B, F, dim] (numerical features
            first, then categorical) and the validity mask [B, F] (bool, True =
            present; an attention ``key_padding_mask`` is its inverse, ``~valid``).

        Raises:
            ValueError: shapes, dtypes or codes do not match the schema.
        """
        b = validate_table(
            numerical, categorical, self.num_numerical, self.categorical_cardinalities, batch_size
        )
        num_cat = len(self.categorical_cardinalities)
        x, num_valid, codes, cat_valid = _read_table(
            numerical, categorical, self.num_numerical, num_cat, b, self.missing.device, self.missing.dtype
        )
        tokens, masks = [], []
        if self.num_numerical:
            valid = num_valid
            tok = x.unsqueeze(-1) * self.num_weight + self.num_bias  # [B, Fn, dim]
            miss = self.missing[: self.num_numerical].expand(b, -1, -1)
            tokens.append(torch.where(valid.unsqueeze(-1), tok, miss))
            masks.append(valid)
        if num_cat:
            valid = cat_valid
            tok = self.cat_embedding(codes + self.cat_offsets)  # [B, Fc, dim]
            miss = self.missing[self.num_numerical :].expand(b, -1, -1)
            tokens.append(torch.where(valid.unsqueeze(-1), tok, miss))
            masks.append(valid)
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)

    def extra_repr(self) -> str:
        return (
            f"numerical={self.num_numerical}, categorical={self.categorical_cardinalities}, "
            f"dim={self.dim}"
        )


class TabularKANEncoder(nn.Module):
    """One vector per table: one scalar per feature, a learned fill for missing ones, a KAN.

    Numerical features are used as given (normalised upstream, e.g. by
    ``mmscale.data.TableSchema``); a categorical code ``c`` of a column with ``k``
    categories becomes ``2c / (k - 1) - 1`` (codes spread over [-1, 1] in code order;
    0 when ``k == 1``). A missing value (NaN / -1) is replaced by a learned per-feature
    fill value, so it never reaches the arithmetic. The ``F`` scalars then go through
    :class:`KANEncoder` with widths ``(F, *hidden, out_dim)``.

    Args:
        numerical (int): number of numerical features (may be 0).
        categorical (Sequence[int]): cardinality of each categorical feature (may be empty).
        out_dim (int): width of the table vector.
        hidden (Sequence[int]): hidden KAN widths (the published model has none).
        grid_size (int): KAN grid intervals.
        spline_order (int): KAN spline degree.
        grid_range (tuple[float, float]): KAN grid span (the published model: (-1, 1)).

    Shapes:
        numerical: [B, numerical], categorical: [B, len(categorical)]
        -> vector [B, out_dim] and validity [B, F] (True = present).

    Raises:
        ValueError: invalid sizes, or a table batch that does not match them.

    Example:
        >>> enc = TabularKANEncoder(2, (2, 3), out_dim=24)
        >>> vec, valid = enc(torch.tensor([[0.5, float("nan")]]), torch.tensor([[1, -1]]))
        >>> vec.shape, valid.tolist()
        (torch.Size([1, 24]), [[True, False, True, False]])
    """

    def __init__(
        self,
        numerical: int,
        categorical: Sequence[int],
        out_dim: int,
        hidden: Sequence[int] = (),
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        numerical = non_negative_int(numerical, "numerical")
        categorical = positive_ints(tuple(categorical), "categorical", allow_empty=True)
        if numerical + len(categorical) == 0:
            raise ValueError("numerical and categorical describe no features (need at least one)")
        self.num_numerical = numerical
        self.categorical_cardinalities = categorical
        self.num_features = numerical + len(categorical)
        self.fill = nn.Parameter(torch.zeros(self.num_features))
        self.kan = KANEncoder(
            (self.num_features, *tuple(hidden), out_dim),
            grid_size=grid_size,
            spline_order=spline_order,
            grid_range=grid_range,
        )
        self.register_buffer(
            "category_scale",
            torch.tensor([2.0 / (k - 1) if k > 1 else 0.0 for k in categorical]),
            persistent=False,
        )

    @property
    def out_dim(self) -> int:
        """Width of the table vector."""
        return self.kan.dims[-1]

    def scalars(
        self,
        numerical: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The KAN's inputs: one scalar per feature, missing ones replaced by the fill.

        Args:
            numerical (torch.Tensor | None): [B, numerical] floats, NaN = missing.
            categorical (torch.Tensor | None): [B, len(categorical)] codes, -1 = missing.
            batch_size (int | None): needed only when both tables are None.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: scalars [B, F] and validity [B, F].

        Raises:
            ValueError: shapes, dtypes or codes do not match the schema.
        """
        b = validate_table(
            numerical, categorical, self.num_numerical, self.categorical_cardinalities, batch_size
        )
        dtype = self.fill.dtype
        values, num_valid, codes, cat_valid = _read_table(
            numerical, categorical, self.num_numerical, len(self.categorical_cardinalities), b,
            self.fill.device, dtype,
        )
        scale = self.category_scale.to(dtype)
        cat = codes.to(dtype) * scale - (scale > 0).to(dtype)
        x = torch.cat([values, cat], dim=1)
        ok = torch.cat([num_valid, cat_valid], dim=1)
        return torch.where(ok, x, self.fill.expand_as(x)), ok

    def forward(
        self,
        numerical: torch.Tensor | None = None,
        categorical: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a table batch.

        Args:
            numerical (torch.Tensor | None): [B, numerical] floats, NaN = missing;
                None = all missing.
            categorical (torch.Tensor | None): [B, len(categorical)] codes, -1 = missing;
                None = all missing.
            batch_size (int | None): needed only when both tables are None.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: the table vector [B, out_dim] and the
            validity mask [B, F] (True = present).

        Raises:
            ValueError: shapes, dtypes or codes do not match the schema.
        """
        x, ok = self.scalars(numerical, categorical, batch_size)
        return self.kan(x), ok

    def extra_repr(self) -> str:
        return f"numerical={self.num_numerical}, categorical={self.categorical_cardinalities}"

"""Argument and input validators shared by every layer and model.

One rule decides the error type (CONTRIBUTING.md states it for contributors):

* ``ValueError``: a value of the right kind that is out of range or the wrong
  shape, and every bad *configuration* value (a size, a count, a name), whatever
  its Python type: ``channels=0``, ``channels="8"``, ``combine="stack"``, a volume
  with 4 dimensions or the wrong channel count.
* ``TypeError``: data of the wrong kind reaching a computation: a forward input
  that is not a ``torch.Tensor``, a tensor of the wrong dtype (integer where floats
  are needed, or float64 data for float32 weights outside autocast), or an object
  argument that is not of the expected class (a ``spatial_attention`` that is not a
  ``SpatialAttention3d``).

Every message names the argument and what was expected; nothing is an ``assert``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "check_dtype",
    "check_tensor",
    "check_volume",
    "int_at_least",
    "non_negative_int",
    "odd_triple",
    "positive_int",
    "positive_ints",
    "triple",
]


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value: object, name: str) -> int:
    """``value`` as an int if it is an integer >= 1 (numpy integers too).

    Raises:
        ValueError: otherwise (booleans and floats included).

    Example:
        >>> positive_int(3, "channels")
        3
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def int_at_least(value: object, name: str, low: int) -> int:
    """``value`` as an int if it is an integer >= ``low`` (numpy integers too).

    Raises:
        ValueError: otherwise (booleans and floats included).

    Example:
        >>> int_at_least(4, "stem_in_channels", 3)
        4
    """
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def non_negative_int(value: object, name: str) -> int:
    """``value`` as an int if it is an integer >= 0 (numpy integers too).

    Raises:
        ValueError: otherwise.

    Example:
        >>> non_negative_int(0, "numerical")
        0
    """
    return int_at_least(value, name, 0)


def positive_ints(
    values: object, name: str, count: int | None = None, allow_empty: bool = False
) -> tuple[int, ...]:
    """A sequence of positive ints: non-empty unless ``allow_empty``, exactly ``count`` when given.

    Raises:
        ValueError: for a non-sequence, an empty or wrongly sized one, or a bad item.

    Example:
        >>> positive_ints([2, 3], "channels")
        (2, 3)
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not (values or allow_empty):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    if count is not None and len(values) != count:
        raise ValueError(f"{name} must hold {count} positive ints, got {values!r}")
    if not all(_is_int(v) and v >= 1 for v in values):
        raise ValueError(f"{name} must hold only positive ints, got {values!r}")
    return tuple(int(v) for v in values)


def odd_triple(value: object, name: str) -> tuple[int, int, int]:
    """A kernel size (odd int or odd ``(kd, kh, kw)``) as a 3-tuple.

    Raises:
        ValueError: for anything else (even or non-positive sizes included).

    Example:
        >>> odd_triple(3, "kernel_size")
        (3, 3, 3)
    """
    items = (value,) * 3 if _is_int(value) else value
    if not isinstance(items, Sequence) or len(items) != 3 or not all(_is_int(k) for k in items):
        raise ValueError(f"{name} must be an odd int or a tuple (kd, kh, kw) of odd ints, got {value!r}")
    if any(k < 1 or k % 2 == 0 for k in items):
        raise ValueError(f"{name} must contain only positive odd sizes (padding k // 2 keeps the shape), got {value!r}")
    return tuple(int(k) for k in items)


def triple(value: object, name: str) -> tuple[int, int, int]:
    """A stride (positive int or 3-tuple of positive ints) as a 3-tuple.

    Raises:
        ValueError: for anything else.

    Example:
        >>> triple(2, "stride")
        (2, 2, 2)
    """
    items = (value,) * 3 if _is_int(value) else value
    if not isinstance(items, Sequence) or len(items) != 3 or not all(_is_int(k) and k >= 1 for k in items):
        raise ValueError(f"{name} must be a positive int or a tuple of 3 positive ints, got {value!r}")
    return tuple(int(k) for k in items)


def check_tensor(x: object, name: str, dims: int | None = None, floating: bool = True) -> torch.Tensor:
    """``x`` if it is a tensor (floating-point unless ``floating=False``) with ``dims`` dimensions.

    Raises:
        TypeError: if ``x`` is not a ``torch.Tensor``, or not floating-point when required.
        ValueError: for a wrong number of dimensions.

    Example:
        >>> tuple(check_tensor(torch.zeros(2, 3), "table", dims=2).shape)
        (2, 3)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_volume(x: object, channels: int | None, name: str = "x") -> torch.Tensor:
    """``x`` if it is a non-empty floating [B, C, D, H, W] tensor with ``channels`` channels.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: for a wrong number of dimensions, channels, or an empty dimension.

    Example:
        >>> tuple(check_volume(torch.zeros(1, 2, 3, 4, 5), 2).shape)
        (1, 2, 3, 4, 5)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must have shape [B, C, D, H, W] (5 dims), got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the layer expects {channels} (shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_dtype(x: torch.Tensor, weight: torch.Tensor, name: str = "x") -> None:
    """Check that ``x`` has the dtype of the layer's weights (anything goes under autocast).

    Raises:
        TypeError: when the dtypes differ outside autocast.

    Example:
        >>> check_dtype(torch.zeros(1), torch.zeros(1))
    """
    if x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(
        f"{name} has dtype {x.dtype} but the layer's weights are {weight.dtype}: convert one of them "
        f"(e.g. layer.to({x.dtype})) or run under torch.autocast"
    )

"""Argument and input checks shared by the layers: clear ``ValueError``s, never asserts."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int if it is an integer >= 1 (numpy integers too), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_dtype(x: torch.Tensor, weight: torch.Tensor, name: str = "x") -> None:
    """Raise ``TypeError`` when ``x`` and the layer's weights differ in dtype outside autocast."""
    if x.dtype == weight.dtype:
        return
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4
        autocast = torch.is_autocast_cpu_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()
    if not autocast:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the layer's weights are {weight.dtype}: convert one of them "
            f"(e.g. layer.to({x.dtype})) or run under torch.autocast"
        )


def odd_triple(value: object, name: str) -> tuple[int, int, int]:
    """Normalise a kernel size (odd int or odd ``(kd, kh, kw)``) to a 3-tuple."""
    items = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or len(items) != 3
        or any(isinstance(k, bool) or not isinstance(k, int) for k in items)
    ):
        raise ValueError(f"{name} must be an odd int or a tuple (kd, kh, kw) of odd ints, got {value!r}")
    if any(k < 1 or k % 2 == 0 for k in items):
        raise ValueError(f"{name} must contain only positive odd sizes (padding k // 2 keeps the shape), got {value!r}")
    return tuple(items)


def triple(value: object, name: str) -> tuple[int, int, int]:
    """Normalise a stride (positive int or 3-tuple of positive ints) to a 3-tuple."""
    items = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or len(items) != 3
        or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in items)
    ):
        raise ValueError(f"{name} must be a positive int or a tuple of 3 positive ints, got {value!r}")
    return tuple(items)


def check_volume(x: object, channels: int | None, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a non-empty floating [B, C, D, H, W] tensor with ``channels`` channels.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: for a wrong number of dimensions, channels, or an empty dimension.
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

"""The shared validators and their one rule: ValueError for bad values, TypeError for wrong kinds of data."""

from __future__ import annotations

import pytest
import torch

from mmscale._validation import (
    check_dtype,
    check_tensor,
    check_volume,
    int_at_least,
    non_negative_int,
    odd_triple,
    positive_int,
    positive_ints,
    triple,
)


@pytest.mark.parametrize("value", [0, -1, 2.0, "3", True, None])
def test_bad_sizes_are_value_errors_naming_the_argument(value):
    with pytest.raises(ValueError, match="channels must be a positive int"):
        positive_int(value, "channels")


def test_sizes_accept_numpy_integers_and_return_ints():
    np = pytest.importorskip("numpy")
    assert positive_int(np.int64(3), "n") == 3 and type(positive_int(np.int64(3), "n")) is int
    assert odd_triple((np.int32(1), 3, 5), "k") == (1, 3, 5)
    assert triple(np.int64(2), "stride") == (2, 2, 2)
    assert non_negative_int(np.int8(0), "numerical") == 0


@pytest.mark.parametrize("call,match", [
    (lambda: odd_triple(4, "kernel_size"), "positive odd sizes"),
    (lambda: odd_triple((3, 3), "kernel_size"), "odd int or a tuple"),
    (lambda: triple((1, 0, 1), "stride"), "positive int or a tuple"),
    (lambda: non_negative_int(-1, "numerical"), "numerical must be an int >= 0"),
    (lambda: int_at_least(2, "stem_in_channels", 3), "stem_in_channels must be an int >= 3, got 2"),
    (lambda: positive_ints([], "channels"), "non-empty sequence"),
    (lambda: positive_ints([2, 0], "channels"), "only positive ints"),
    (lambda: positive_ints([2], "channels", count=3), "hold 3"),
    (lambda: check_volume(torch.zeros(1, 2, 3), None), r"\[B, C, D, H, W\]"),
    (lambda: check_volume(torch.zeros(1, 2, 3, 3, 3), 4), "expects 4"),
    (lambda: check_tensor(torch.zeros(2), "table", dims=2), "table must have 2 dims"),
])
def test_bad_values_and_shapes_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: check_volume([1.0], None), "x must be a torch.Tensor, got list"),
    (lambda: check_volume(torch.zeros(1, 1, 1, 1, 1, dtype=torch.long), None), "floating-point"),
    (lambda: check_tensor("table", "table"), "table must be a torch.Tensor"),
    (lambda: check_tensor(torch.zeros(2, dtype=torch.long), "table"), "floating-point"),
    (lambda: check_dtype(torch.zeros(1, dtype=torch.float64), torch.zeros(1)), "dtype torch.float64"),
])
def test_wrong_kinds_of_data_are_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_an_empty_sequence_only_where_allowed():
    assert positive_ints((), "categorical", allow_empty=True) == ()
    with pytest.raises(ValueError, match="categorical must be a non-empty sequence"):
        positive_ints((), "categorical")


def test_dtype_mismatch_is_allowed_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_dtype(torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1))
    assert check_tensor(torch.zeros(2, dtype=torch.long), "index", floating=False).dtype == torch.long

"""Former home of the validators: re-exports :mod:`mmscale._validation`, the one set for layers and models."""

from mmscale._validation import check_dtype, check_volume, odd_triple, positive_int, triple

__all__ = ["check_dtype", "check_volume", "odd_triple", "positive_int", "triple"]

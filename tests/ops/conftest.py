"""Fixtures for the Triton kernel tests.

On a machine without CUDA the kernels run through Triton's CPU interpreter. Triton
reads ``TRITON_INTERPRET`` when a kernel is *decorated*, and mmscale imports its
kernel modules lazily, so the ``interpret`` fixture only has to set the variable
before the first kernel-module import of the session; it is set per test (not for
the whole session) so other tests still see the environment they expect.
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from mmscale.ops import _triton_utils  # noqa: E402  (imports triton)

HAS_CUDA = torch.cuda.is_available()

# (device, marks): the CPU interpreter everywhere; CUDA only on GPU machines (`-m gpu`)
DEVICES = [
    pytest.param("cpu", id="interp"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]),
]


def _interpreted(module) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    kernels = [v for k, v in vars(module).items() if k.startswith("_") and k.endswith("_kernel")]
    return bool(kernels) and all(isinstance(k, InterpretedFunction) for k in kernels)


@pytest.fixture
def kernels_for(monkeypatch):
    """``kernels_for(device, "msdc" | "gating")``: the kernel module, runnable on ``device``.

    For ``"cpu"`` this switches Triton's interpreter on (before the first import)
    and skips if the module was already decorated for the GPU in this process.
    It also turns on output poisoning (NaN-filled outputs before every launch).
    """
    monkeypatch.setattr(_triton_utils, "POISON_OUTPUTS", True)

    def get(device: str, op: str):
        if device == "cpu":
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        else:
            monkeypatch.setenv("TRITON_INTERPRET", "0")
        module = importlib.import_module(f"mmscale.ops.{op}.triton")
        if device == "cpu" and not _interpreted(module):
            pytest.skip("kernels already compiled for the GPU in this process")
        if device == "cuda" and _interpreted(module):
            pytest.skip("kernels already decorated for the interpreter in this process")
        return module

    return get


@pytest.fixture
def small_blocks(monkeypatch):
    """Force tiny blocks so small shapes span several tiles: ``small_blocks(s, c)``."""

    def set_blocks(block_s: int, block_c: int) -> None:
        monkeypatch.setattr(_triton_utils, "BLOCK_OVERRIDE", (block_s, block_c))

    return set_blocks

"""Backend selection: explicit argument, MMSCALE_BACKEND, auto, fallback warnings, strict mode."""

import warnings

import pytest
import torch

from mmscale.ops import _dispatch
from mmscale.ops._dispatch import check_backend, requested_backend, resolve_backend, select_backend


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(_dispatch, "_warned", set())
    monkeypatch.delenv("MMSCALE_BACKEND", raising=False)
    monkeypatch.delenv("MMSCALE_STRICT", raising=False)


def test_explicit_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("MMSCALE_BACKEND", "triton")
    assert requested_backend("torch") == "torch"
    assert requested_backend("auto") == "triton"


def test_auto_on_cpu_is_torch():
    assert resolve_backend("auto", torch.zeros(1), op="t") == "torch"


def test_bad_names_raise():
    with pytest.raises(ValueError, match="backend"):
        check_backend("cuda")
    with pytest.raises(ValueError, match="MMSCALE_BACKEND"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MMSCALE_BACKEND", "fast")
            requested_backend("auto")


def test_environment_torch_forces_torch(monkeypatch):
    monkeypatch.setenv("MMSCALE_BACKEND", "torch")
    assert resolve_backend("auto", torch.zeros(1), op="t") == "torch"


def test_explicit_triton_without_kernel_warns_once_then_strict_raises(monkeypatch):
    x = torch.zeros(1)
    with pytest.warns(RuntimeWarning, match="no Triton kernel"):
        assert resolve_backend("triton", x, op="demo", has_kernel=False) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("triton", x, op="demo", has_kernel=False) == "torch"
    monkeypatch.setenv("MMSCALE_STRICT", "1")
    with pytest.raises(RuntimeError, match="MMSCALE_STRICT"):
        resolve_backend("triton", x, op="demo", has_kernel=False)


def test_cpu_tensor_runs_triton_only_under_the_interpreter(monkeypatch):
    if not _dispatch.triton_available():
        pytest.skip("triton is not installed")
    x = torch.zeros(1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", x, op="interp") == "triton"
    assert resolve_backend("auto", x, op="interp") == "torch"  # auto never picks the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.warns(RuntimeWarning, match="CUDA"):
        assert resolve_backend("triton", x, op="cpu") == "torch"


def test_select_backend_follows_the_ops_reason(monkeypatch):
    x = torch.zeros(1)
    assert select_backend("triton", x, op="demo", reason=None) == "triton"
    assert select_backend("auto", x, op="demo", reason=None) == "torch"  # auto: CUDA tensors only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back silently
        assert select_backend("auto", x, op="demo", reason="stride 2") == "torch"
    with pytest.warns(RuntimeWarning, match="demo: backend='triton' requested but stride 2"):
        assert select_backend("triton", x, op="demo", reason="stride 2") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per op and reason
        select_backend("triton", x, op="demo", reason="stride 2")
    with pytest.warns(RuntimeWarning, match="float64"):
        select_backend("triton", x, op="demo", reason="dtype float64")
    monkeypatch.setenv("MMSCALE_STRICT", "1")
    with pytest.raises(RuntimeError, match="stride 2"):
        select_backend("triton", x, op="demo", reason="stride 2")


def test_each_op_publishes_why_its_kernels_cannot_run(monkeypatch):
    from mmscale.ops import gating, msdc

    x = torch.zeros(1, 2, 3, 3, 3)
    w3 = torch.zeros(2, 1, 3, 3, 3)
    assert "stride" in msdc.supports(x, [w3], stride=(1, 2, 2))
    assert "5 branches" in msdc.supports(x, [w3] * 5)
    assert "even kernel size" in msdc.supports(x, [torch.zeros(2, 1, 2, 3, 3)])
    assert "float64" in msdc.supports(x.double(), [w3])
    assert "combine" in msdc.supports(x, [w3], combine="stack")
    assert "float64" in gating.supports(x, torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "CUDA" in msdc.supports(x, [w3]) and "CUDA" in gating.supports(x)
    if _dispatch.triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert msdc.supports(x, [w3]) is None and gating.supports(x) is None


def test_a_lazy_reason_is_computed_only_when_triton_is_in_question():
    asked = []

    def reason():
        asked.append(1)
        return "a reason"

    x = torch.zeros(1)
    assert select_backend("torch", x, op="lazy", reason=reason) == "torch"
    assert select_backend("auto", x, op="lazy", reason=reason) == "torch"  # a CPU tensor: no question
    assert asked == []
    with pytest.warns(RuntimeWarning, match="a reason"):
        assert select_backend("triton", x, op="lazy", reason=reason) == "torch"
    assert asked == [1]

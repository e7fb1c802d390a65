"""Triton is optional: without it every layer runs its PyTorch path.

Triton stays installed in the development environment (the kernel tests use its
interpreter), so these tests hide it in a fresh interpreter: every finder on
``sys.meta_path`` is wrapped so that ``triton`` and its submodules are not found,
exactly as on a machine where it was never installed (``importlib.util.find_spec``
returns None and ``import triton`` raises ``ModuleNotFoundError``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_HIDE_TRITON = textwrap.dedent("""\
    import sys

    class _Hidden:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                return None
            find = getattr(self.finder, "find_spec", None)
            return None if find is None else find(name, path, target)

        def invalidate_caches(self):
            if hasattr(self.finder, "invalidate_caches"):
                self.finder.invalidate_caches()

    sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
    import importlib.util
    assert importlib.util.find_spec("triton") is None
    try:
        import triton  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("triton is still importable")
    """)


def _run_without_triton(body: str, **env: str) -> subprocess.CompletedProcess:
    code = _HIDE_TRITON + textwrap.dedent(body)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MMSCALE_", "TRITON_"))}
    environ.update(env)
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


def _check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


_LAYERS = """
import warnings
import torch
import mmscale
from mmscale import MultiScaleConvAttention3d
from mmscale.ops import triton_available

assert not triton_available()
assert "triton" not in sys.modules
x = torch.randn(1, 8, 3, 6, 6)
"""


def test_auto_backend_runs_pytorch_silently_without_triton():
    out = _check(_run_without_triton(_LAYERS + """
with warnings.catch_warnings():
    warnings.simplefilter("error")   # any warning fails the run
    for backend in ("auto", "torch"):
        block = MultiScaleConvAttention3d(8, backend=backend)
        y = block(x)
        y.sum().backward()
        assert y.shape == x.shape
print("ok")
""", TRITON_INTERPRET="1"))
    assert out.strip() == "ok"


def test_explicit_triton_warns_once_without_triton():
    out = _check(_run_without_triton(_LAYERS + """
block = MultiScaleConvAttention3d(8, backend="triton")
ref = MultiScaleConvAttention3d(8, backend="torch")
ref.load_state_dict(block.state_dict())
counts = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        y = block(x)
        assert torch.equal(y, ref(x))
        counts.append(len(caught))
assert all(issubclass(w.category, RuntimeWarning) for w in caught)
assert all("backend='triton' requested but triton is not installed" in str(w.message) for w in caught), [
    str(w.message) for w in caught]
print(*counts)
""", TRITON_INTERPRET="1"))
    first, second, third = map(int, out.split())
    # the first call warns (once per fused op the block uses); later calls add nothing
    assert first >= 1 and second == first and third == first, out


def test_explicit_triton_raises_in_strict_mode_without_triton():
    proc = _run_without_triton(_LAYERS + """
MultiScaleConvAttention3d(8, backend="triton")(x)
""", TRITON_INTERPRET="1", MMSCALE_STRICT="1")
    assert proc.returncode != 0
    assert "triton is not installed" in proc.stderr, proc.stderr


def test_the_model_runs_without_triton():
    out = _check(_run_without_triton("""
import warnings
import torch
from mmscale import MMCAFNet

with warnings.catch_warnings():
    warnings.simplefilter("error")
    model = MMCAFNet.from_preset("tiny").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, 8, 32, 32), torch.zeros(1, 2), torch.zeros(1, 5, dtype=torch.long))
print(tuple(logits.shape))
"""))
    assert out.strip() == "(1, 2)"


def test_triton_is_an_extra_not_a_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("triton")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("triton") for d in extras["triton"])
    assert any("triton" in d for d in extras["dev"]), "the dev set keeps triton for the kernel tests"
    demo = (ROOT / "requirements-demo.txt").read_text(encoding="utf-8")
    assert "triton" not in demo.lower().replace("no triton", "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

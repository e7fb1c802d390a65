"""The install instructions work today, and `make demo` installs only the demo's set.

* mmscale is not on an index yet: no command block tells a reader to
  ``pip install mmscale``; that command appears only in prose about the first release.
* Every extra the pages install exists in ``pyproject.toml``, and the torch minimum
  they state is the one ``pyproject.toml`` declares.
* ``make demo`` installs ``requirements-demo.txt`` (CPU torch + ``.[examples]``) and
  nothing of the development set; ``make test`` installs ``requirements-dev.txt``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.test_snippets import extract

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
_INDEX_INSTALL = re.compile(r"pip install\s+[\"']?mmscale\b")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_command_installs_from_an_index_yet(page):
    for block in extract(page):
        assert not _INDEX_INSTALL.search(block.code), (
            f"{block.where()}: mmscale is not on PyPI yet; show `pip install .` instead")
    text = page.read_text(encoding="utf-8")
    for paragraph in re.split(r"\n\s*\n", text):
        if _INDEX_INSTALL.search(paragraph) and "```" not in paragraph:
            assert "release" in paragraph, f"{page.name}: `pip install mmscale` outside a note about the release"
    assert "not on PyPI yet" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_extras_and_torch_minimum_match_pyproject(page):
    project = _pyproject()
    text = page.read_text(encoding="utf-8")
    extras = set(re.findall(r"pip install (?:-e )?\"\.\[(\w+)\]\"", text))
    assert extras, f"{page.name} shows no install of an extra"
    assert extras <= set(project["optional-dependencies"]), extras - set(project["optional-dependencies"])
    torch_min = next(re.search(r"torch>=([\d.]+)", d).group(1) for d in project["dependencies"]
                     if d.startswith("torch"))
    stated = set(re.findall(r"(?:torch|PyTorch) ?>= ?(\d+(?:\.\d+)*)", text))
    assert stated == {torch_min}, f"{page.name} states torch >= {stated}, pyproject.toml says {torch_min}"


def _make_dry_run(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_installs_only_the_demo_set(tmp_path):
    out = _make_dry_run("demo", tmp_path)
    assert "-r requirements-demo.txt" in out and "requirements-dev.txt" not in out, out
    assert "examples/lung_pet_ct/train.py" in out
    demo = [ln.split("#")[0].strip() for ln in (ROOT / "requirements-demo.txt").read_text().splitlines()]
    demo = [ln for ln in demo if ln]
    assert demo == ["-c constraints.txt", "torch==2.13.0", "-e .[examples]"], demo
    dev_tools = {"pytest", "ruff", "onnxruntime", "mkdocs", "monai"}
    examples = " ".join(_pyproject()["optional-dependencies"]["examples"])
    assert not [t for t in dev_tools if t in examples], "the examples extra pulls development tools"


def test_make_test_installs_the_development_set(tmp_path):
    out = _make_dry_run("test", tmp_path)
    assert "-r requirements-dev.txt" in out and "requirements-demo.txt" not in out, out
    assert "-m pytest" in out
    dev = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    assert "-e .[dev]" in dev and "triton==" in dev and "-c constraints.txt" in dev

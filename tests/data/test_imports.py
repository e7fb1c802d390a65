"""``mmscale.data`` imports without its optional extra and never imports the models."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "mmscale" / "data"


def test_import_without_the_data_extra():
    code = (
        "import sys\n"
        "for m in ('pydicom', 'pandas', 'openpyxl', 'tqdm'): sys.modules[m] = None\n"
        "import mmscale, mmscale.data\n"
        "from mmscale.data import read_header\n"
        "try:\n"
        "    read_header('x.dcm')\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=DATA.parents[1], check=True).stdout
    assert "pip install 'mmscale[data]'" in out


def test_data_never_imports_models():
    for path in DATA.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("mmscale.models") for n in names), path.name

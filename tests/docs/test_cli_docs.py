"""Every command-line flag of the example scripts and benchmarks is documented.

The flags are read from the scripts' ``add_argument("--...")`` calls (without
running them) and must each appear, as written, on the page that documents the
script. A new flag without documentation fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# script -> the docs page that documents its flags
SCRIPTS = {
    # the three example scripts' parsers (train.py, evaluate.py, predict.py)
    "examples/lung_pet_ct/lung_trainer/cli.py": "docs/lung-pet-ct.md",
    "benchmarks/attention_speed.py": "docs/benchmarks.md",
    "benchmarks/model_throughput.py": "docs/benchmarks.md",
    "benchmarks/kernel_speed.py": "docs/benchmarks.md",
    "benchmarks/kernel_resources.py": "docs/kernels.md",
}

_FLAG = re.compile(r"add_argument\(\s*\"(--[a-z0-9][a-z0-9-]*)\"")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_flags_are_documented(script):
    path = ROOT / script
    if not path.is_file():
        pytest.skip(f"{script} is not in this checkout")
    flags = sorted(set(_FLAG.findall(path.read_text(encoding="utf-8"))))
    assert flags, f"no flags found in {script}"
    page = (ROOT / SCRIPTS[script]).read_text(encoding="utf-8")
    missing = [f for f in flags if not re.search(re.escape(f) + r"(?![a-z0-9-])", page)]
    assert not missing, f"{SCRIPTS[script]} does not mention these flags of {script}: {missing}"

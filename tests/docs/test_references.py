"""The documentation speaks of what is in the repository, and states shapes that hold.

* No page, docstring, comment or example cites design notes that are not part of the
  repository (``DESIGN section 4``, ``PERFORMANCE.md``, ...): a reader cannot follow
  such a reference.
* The cross-attention output width the docs state is the one the layer returns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mmscale import MultiScaleCrossAttention

ROOT = Path(__file__).resolve().parents[2]

_INTERNAL = re.compile(r"\bDESIGN\b(?:\.md)?|\b(?:PERFORMANCE|DATASET|STYLE)\.md\b")


def _files() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder, pattern in (("mmscale", "*.py"), ("docs", "*.md"), ("examples", "*"), ("benchmarks", "*"),
                            ("tests", "*.py")):
        found += [p for p in (ROOT / folder).rglob(pattern)
                  if p.is_file() and p.suffix in (".py", ".md", ".sh", ".txt") and "__pycache__" not in p.parts]
    return [p for p in found if p.is_file() and p != Path(__file__).resolve()]


def test_no_references_to_notes_outside_the_repository():
    hits = []
    for path in _files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _INTERNAL.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not hits, "references to documents that are not in the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("dim, width", [(16, 16), ((16, 8), 16)])
def test_multiscale_cross_attention_output_width_is_as_documented(dim, width):
    msca = MultiScaleCrossAttention((8, 16), tabular_dim=4, dim=dim, num_heads=2).eval()
    feats = [torch.randn(2, 8, 4, 8, 8), torch.randn(2, 16, 2, 4, 4)]
    with torch.no_grad():
        out = msca(feats, torch.randn(2, 3, 4))
    assert out.shape == (2, width) and msca.out_dim == width
    # the docs table states that width (and no longer the undefined ``dims[0]``)
    table = (ROOT / "docs" / "layers.md").read_text(encoding="utf-8")
    row = next(line for line in table.splitlines() if line.startswith("| `MultiScaleCrossAttention("))
    assert "-> `[B, out_dim]` (`out_dim` = `dim`, or `dim[0]`" in row, row

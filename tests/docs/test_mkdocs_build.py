"""The documentation site builds with ``mkdocs build --strict`` (as CI builds it).

Strict mode turns every warning into an error: a broken link or anchor, a page
missing from the nav, an API entry (``::: mmscale...``) that does not resolve, a
docstring griffe cannot parse. The build needs no network access (no web fonts, no
social cards, no remote includes).

The built HTML is then read: no Sphinx role (``:class:`X```) may show as raw text
(docs/_ext/griffe_roles.py turns them into links), and every relative link opens a
file, so the site can be browsed from disk.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

def _missing_tools() -> list[str]:
    missing = []
    for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # the parent package of a dotted name is absent
            found = False
        if not found:
            missing.append(name)
    return missing


_MISSING = _missing_tools()


_needs_tools = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"documentation tools not installed ({', '.join(_MISSING)}): "
    "pip install mkdocs mkdocs-material 'mkdocstrings[python]'",
)

# a Sphinx role left as text, as it shows in HTML (``:class:<code>X</code>``) or in source form
_RAW_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const|type):(?:`|<code>)")
_HREF = re.compile(r'href="([^"#?]*)(?:#[^"]*)?"')


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module's tests with ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@_needs_tools
def test_mkdocs_build_strict(site):
    # use_directory_urls is off: page.html files, so the site browses from disk
    for page in ("index.html", "getting-started.html", "interoperability.html", "api/layers.html"):
        assert (site / page).is_file(), f"{page} was not built"
    # the API pages really contain the rendered docstrings, not just headings
    api = (site / "api" / "layers.html").read_text(encoding="utf-8")
    assert "MultiScaleConvAttention3d" in api and "Raises" in api


@_needs_tools
def test_no_raw_sphinx_roles_in_the_built_site(site):
    found = []
    for page in sorted(site.rglob("*.html")):
        for line_no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in _RAW_ROLE.finditer(line):
                found.append(f"{page.relative_to(site)}:{line_no}: {line[match.start():match.start() + 60]}")
    assert not found, "raw Sphinx roles in the built HTML:\n" + "\n".join(found[:30])
    # the roles became links: the model page links to the classes it is assembled from
    models = (site / "api" / "models.html").read_text(encoding="utf-8")
    assert re.search(r'<a class="autorefs[^"]*"[^>]*href="layers\.html#mmscale\.layers\.PyramidBackbone3d"',
                     models), "a :class: role on the models page did not become a link"


@_needs_tools
def test_internal_links_open_files_from_disk(site):
    """Every relative link names a file that exists: no folder links (directory listings)."""
    broken = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "404.html":
            continue  # only a web server shows it, and its links are root-absolute on purpose
        for href in set(_HREF.findall(page.read_text(encoding="utf-8"))):
            if not href or "://" in href or href.startswith(("mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / href).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {href}")
    assert not broken, "links that do not open a file from disk:\n" + "\n".join(sorted(broken)[:30])


def test_api_reference_covers_every_public_name():
    """Each name in the public ``__all__`` lists has a ``::: module.name`` entry in docs/api/."""
    import importlib
    import re

    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s*([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    short = {d.rsplit(".", 1)[-1] for d in documented}
    missing = []
    for modname in ("mmscale.layers", "mmscale.models", "mmscale.data", "mmscale.ops", "mmscale"):
        module = importlib.import_module(modname)
        for name in module.__all__:
            if name == "__version__":
                continue
            # names re-exported by the top-level package are documented under their home module
            if f"{modname}.{name}" not in documented and not (modname == "mmscale" and name in short):
                missing.append(f"{modname}.{name}")
    assert not missing, f"add these to a docs/api/*.md page as '::: name': {missing}"

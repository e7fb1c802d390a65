"""Every ```python block in the documentation runs.

Pages are ``docs/**/*.md`` and ``README.md``. The python blocks of one page run in
order in one shared namespace (a page reads as one session), with a temporary
folder as the working directory so that snippets may write files. Blocks in other
languages (``bash``, ``text``, ...) are not run.

Opting out: the only way to keep a python block from running is an HTML comment
on the line right before its fence, with a reason:

    <!-- skip: needs the real TCIA download -->
    ```python
    ...
    ```

Use it for things that cannot run in CI (real data, a GPU), never to hide a
failure. A marker without a reason, or one that is not followed by a python block,
is an error, so a marker cannot silently stop applying.

A page whose snippets need optional packages (say, MONAI) names them once, anywhere
on the page; its test is skipped, naming the missing ones, where they are not
installed (the development install has them all):

    <!-- requires: monai torchio -->
"""

from __future__ import annotations

import importlib.util
import os
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_SKIP = re.compile(r"^\s*<!--\s*skip\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")
_REQUIRES = re.compile(r"<!--\s*requires:\s*(?P<names>[\w. ]*?)\s*-->")
_PYTHON = {"python", "py", "python3", "pycon"}
# the whole documentation test (all pages) is meant to stay well under a minute on 2 cores;
# measured as this process's CPU time, which a busy machine does not inflate the way it
# does wall time (the snippets' own threads count in full)
_PAGE_BUDGET_S = 45.0


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when opted out

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The Markdown pages whose python blocks must run."""
    found = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
    readme = ROOT / "README.md"
    return found + ([readme] if readme.is_file() else [])


def extract(page: Path) -> list[Block]:
    """Fenced blocks of ``page`` in order, with their skip markers.

    Raises:
        ValueError: an unterminated fence, or a skip marker without a reason or
            without a python block right after it.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending_skip: tuple[int, str | None] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        skip = _SKIP.match(line)
        if skip:
            if pending_skip is not None:
                raise ValueError(f"{page}:{pending_skip[0]}: skip marker not followed by a python block")
            reason = (skip.group("reason") or "").strip()
            if not reason:
                raise ValueError(f"{page}:{i + 1}: a skip marker needs a reason: <!-- skip: why -->")
            pending_skip = (i + 1, reason)
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending_skip is not None:
                raise ValueError(f"{page}:{pending_skip[0]}: skip marker not followed by a python block")
            i += 1
            continue
        indent, ticks = fence.group("indent"), fence.group("ticks")
        lang = fence.group("info").lower().lstrip("{.").rstrip("}")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(ticks[0] * len(ticks)) and not close.strip(ticks[0]):
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        else:
            raise ValueError(f"{page}:{start + 1}: unterminated code fence")
        i += 1
        reason = None
        if pending_skip is not None:
            if lang not in _PYTHON:
                raise ValueError(f"{page}:{pending_skip[0]}: skip marker not followed by a python block")
            reason = pending_skip[1]
            pending_skip = None
        blocks.append(Block(page, start + 1, lang, textwrap.dedent("\n".join(body)) + "\n", reason))
    if pending_skip is not None:
        raise ValueError(f"{page}:{pending_skip[0]}: skip marker not followed by a python block")
    return blocks


def requirements(page: Path) -> list[str]:
    """The importable names a page's ``<!-- requires: ... -->`` markers list."""
    return [n for m in _REQUIRES.finditer(page.read_text(encoding="utf-8")) for n in m.group("names").split()]


def python_blocks(page: Path) -> list[Block]:
    return [b for b in extract(page) if b.lang in _PYTHON]


def _source(block: Block) -> str:
    if block.lang != "pycon":
        return block.code
    # console transcripts: keep only the statements
    kept = [ln[4:] for ln in block.code.splitlines() if ln.startswith((">>> ", "... ")) or ln in (">>>", "...")]
    return "\n".join(kept) + "\n"


PAGES = pages()
RUNNABLE = [p for p in PAGES if any(not b.skip for b in python_blocks(p))]


def test_there_are_pages_with_snippets():
    assert PAGES, "no documentation pages found"
    assert sum(len(python_blocks(p)) for p in PAGES) >= 10, "the docs should show runnable code"


def test_skip_markers_are_rare_and_explained():
    skipped = [b for p in PAGES for b in python_blocks(p) if b.skip]
    run = [b for p in PAGES for b in python_blocks(p) if not b.skip]
    # opting out is for real data and GPUs only: far fewer skipped blocks than run ones
    assert len(skipped) <= max(3, len(run) // 3), [f"{b.where()}: {b.skip}" for b in skipped]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_snippets_run(page: Path, tmp_path, monkeypatch):
    missing = [n for n in requirements(page) if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"{page.name} needs {', '.join(missing)} (pip install 'mmscale[interop]' or '.[dev]')")
    blocks = [b for b in python_blocks(page) if not b.skip]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    environ = dict(os.environ)  # snippets may set MMSCALE_* variables: undo that afterwards
    start = time.process_time()
    try:
        for block in blocks:
            try:
                code = compile(_source(block), block.where(), "exec")
                exec(code, namespace)
            except Exception as err:  # noqa: BLE001 - reported with the snippet's location
                pytest.fail(
                    f"snippet at {block.where()} failed: {type(err).__name__}: {err}\n"
                    f"--- code ---\n{block.code}",
                    pytrace=False,
                )
    finally:
        os.environ.clear()
        os.environ.update(environ)
    elapsed = time.process_time() - start
    assert elapsed < _PAGE_BUDGET_S, f"{page.name}: snippets took {elapsed:.1f} s of CPU; keep them tiny"


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text), encoding="utf-8")
    return page


def test_extractor_reads_blocks_and_markers(tmp_path):
    page = _page(tmp_path, """\
        # Title

        ```python
        a = 1
        ```

        ```bash
        echo no
        ```

        <!-- skip: needs a GPU -->
        ```python
        raise SystemExit
        ```

        !!! note
            ```python
            b = a + 1
            ```
        """)
    blocks = extract(page)
    assert [(b.lang, b.skip) for b in blocks] == [
        ("python", None), ("bash", None), ("python", "needs a GPU"), ("python", None)]
    assert blocks[3].code == "b = a + 1\n"


def test_requires_marker_lists_names(tmp_path):
    page = _page(tmp_path, """\
        # Title
        <!-- requires: monai torchio -->

        <!-- requires: lightning -->
        """)
    assert requirements(page) == ["monai", "torchio", "lightning"]


@pytest.mark.parametrize("text, message", [
    ("<!-- skip -->\n```python\nx = 1\n```\n", "needs a reason"),
    ("<!-- skip: why -->\n```bash\nls\n```\n", "not followed by a python block"),
    ("<!-- skip: why -->\nsome prose\n```python\nx = 1\n```\n", "not followed by a python block"),
    ("```python\nx = 1\n", "unterminated"),
])
def test_extractor_rejects_misused_markers(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        extract(_page(tmp_path, text))

"""Griffe extension used only when building the docs site (mkdocs.yml loads it).

The package's docstrings are Google style, with two habits griffe's parser reads
differently from ``help()`` and doctest:

* ``Example:`` (singular) would become a plain admonition, so the ``>>>`` lines
  were rendered as Markdown paragraphs; it is renamed ``Examples:`` so griffe
  renders them as code.
* An ``Attributes:`` entry naming several attributes (``a, b, c: what they are``)
  is split into one entry per name, each with the shared description, instead of
  being dropped with a warning.

Only the rendered text changes; the source is untouched.
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_SECTION = re.compile(r"^(\s*)Attributes:\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_attributes(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = _SECTION.match(line)
        if not m:
            continue
        base = len(m.group(1))
        # the entries of this section: every following line indented deeper (or blank)
        j = i
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        section = lines[i:j]
        i = j
        item_indent = min((_indent(s) for s in section if s.strip()), default=base + 4)
        k = 0
        while k < len(section):
            first = section[k]
            if not first.strip() or _indent(first) != item_indent:
                out.append(first)
                k += 1
                continue
            entry = [first]
            k += 1
            while k < len(section) and section[k].strip() and _indent(section[k]) > item_indent:
                entry.append(section[k])
                k += 1
            text = " ".join(s.strip() for s in entry)
            head, sep, desc = text.partition(":")
            names = [n.strip() for n in head.split(",") if n.strip()]
            if sep and len(names) > 1 and all(n.isidentifier() for n in names):
                pad = " " * item_indent
                out.extend(f"{pad}{n}: {desc.strip()}" for n in names)
            else:
                out.extend(entry)
    return out


class SectionNames(griffe.Extension):
    """Normalise ``Example:`` headings and multi-name ``Attributes:`` entries."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        doc = obj.docstring
        if doc is None or not doc.value:
            return
        lines = [_EXAMPLE.sub(r"\1Examples:", line) for line in doc.value.split("\n")]
        doc.value = "\n".join(_split_attributes(lines))

"""Griffe extension used only when building the docs site (mkdocs.yml loads it).

The package's docstrings use Sphinx cross-reference roles (``:class:`MMCAFNet```,
``:meth:`from_preset```, ``:func:`mmscale.data.prepare```), which ``help()`` shows
as they are and which Markdown would render as raw text. Once the package is
loaded, every role in every docstring is rewritten:

* a target that names an object rendered on an API page (``::: name`` in
  ``docs/api/*.md``, or a public member of one) becomes a link to it,
  ``[`title`][identifier]``, which mkdocs-autorefs resolves;
* any other target (a private helper, a PyTorch function) becomes inline code.

Targets are resolved the way Python resolves names, from the docstring's own
scope outwards (``:meth:`to_dict``` in a method finds its class's ``to_dict``);
``~a.b.C`` shows as ``C``, and ``title <target>`` shows the title. Only the
rendered text changes; the source is untouched.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

#: A Sphinx role: ``:class:`X```, ``:py:meth:`~a.B.c```, ``:func:`title <a.f>```.
ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|attr|mod|data|exc|obj|const|type):`(?P<body>[^`]+)`"
)

_API_DIR = Path(__file__).resolve().parents[1] / "api"
_ENTRY = re.compile(r"^:::\s*([\w.]+)\s*$", re.M)


def _public_members(obj: griffe.Object, rendered: str, out: dict[str, str]) -> None:
    """Map the canonical path of ``obj`` and its public members to their rendered identifiers."""
    out.setdefault(obj.path, rendered)
    for name, member in obj.members.items():
        # mkdocstrings renders no submodules (show_submodules is off) and no imported names
        if name.startswith("_") or member.is_alias or member.is_module:
            continue
        _public_members(member, f"{rendered}.{name}", out)


def rendered_identifiers(pkg: griffe.Module, api_dir: Path = _API_DIR) -> dict[str, str]:
    """Canonical path -> the identifier under which an API page renders it."""
    out: dict[str, str] = {}
    for page in sorted(api_dir.glob("*.md")):
        for ident in _ENTRY.findall(page.read_text(encoding="utf-8")):
            parts = ident.split(".")
            if parts[0] != pkg.name:
                continue
            try:
                obj = pkg[".".join(parts[1:])] if len(parts) > 1 else pkg
                target = obj.final_target if obj.is_alias else obj
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue  # the strict build reports an entry that does not resolve
            _public_members(target, ident, out)
    return out


def _resolve(obj: griffe.Object, pkg: griffe.Module, target: str) -> str | None:
    """The canonical path ``target`` names from ``obj``'s scope, or None."""
    head, _, rest = target.partition(".")
    try:
        if head == pkg.name:
            found = pkg[rest] if rest else pkg
        else:
            path = obj.resolve(head)
            if not path.startswith(pkg.name + ".") and path != pkg.name:
                return None
            found = pkg[path.split(".", 1)[1]] if "." in path else pkg
            if rest:
                found = found[rest]
        if found.is_alias:
            found = found.final_target
        return found.path
    except (KeyError, ValueError, griffe.NameResolutionError, griffe.AliasResolutionError,
            griffe.CyclicAliasError):
        return None


def rewrite(text: str, obj: griffe.Object, pkg: griffe.Module, rendered: dict[str, str]) -> str:
    """Replace every Sphinx role in ``text`` (a docstring of ``obj``) by a link or code."""

    def one(match: re.Match[str]) -> str:
        body = match.group("body").strip()
        titled = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^<>]+)>", body)
        if titled:
            title, target = titled.group("title"), titled.group("target").strip()
        else:
            target = body
            title = None
        short = target.startswith("~")
        target = target.lstrip("~.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
        path = _resolve(obj, pkg, target)
        ident = rendered.get(path) if path else None
        return f"[`{title}`][{ident}]" if ident else f"`{title}`"

    return ROLE.sub(one, text)


def _objects(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Render Sphinx roles in docstrings as autorefs links (or inline code)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        rendered = rendered_identifiers(pkg)
        for obj in _objects(pkg):
            doc = obj.docstring
            if doc is not None and doc.value and ":" in doc.value:
                doc.value = rewrite(doc.value, obj, pkg, rendered)

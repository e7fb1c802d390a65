"""Every public name is documented, and its examples run.

Public names are those in ``__all__`` of ``mmscale``, ``mmscale.layers``,
``mmscale.models``, ``mmscale.data`` and ``mmscale.ops`` (``__version__`` aside).
The rules, per kind of name:

* **classes and functions** need their own docstring (an inherited one, or the
  signature dataclasses generate, does not count) with an ``Example:`` (or
  ``Examples:``) section holding at least one ``>>>`` line.
* **they validate input => they say so**: a function, or a class whose
  ``__init__``, ``__post_init__``, ``forward`` or ``__call__`` contains a ``raise``
  statement or calls one of mmscale's validators (``check_*``, ``validate*``,
  ``positive_int``, ``odd_triple``, ``triple``), needs a ``Raises:`` section. A
  callable that only lets errors from other libraries through need not list them.
* **tensor layers and ops state shapes**: an ``nn.Module`` subclass or a function
  of ``mmscale.ops`` needs at least one shape in brackets, such as
  ``[B, C, D, H, W]`` or ``[..., dim]``.
* **constants** (strings, tuples, dicts) cannot carry a ``__doc__``; they need an
  attribute docstring (a string literal right after the assignment) or a comment
  on the line above the assignment, in the module that defines them.

Then every ``>>>`` example in those docstrings (methods included) runs as a doctest,
with the defining module's globals, in a temporary working directory; examples
that need real data are marked ``# doctest: +SKIP`` in the source.

Gaps in code this documentation does not own are listed in ``KNOWN_GAPS``: such a
test is reported as an expected failure (xfail) while the gap remains and simply
passes once the docstring is fixed (so fixing a docstring never breaks the suite);
``test_known_gaps_are_still_gaps`` lists the entries that can then be deleted.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

# submodules first, so that a name re-exported by ``mmscale`` is reported under its home
MODULES = ("mmscale.layers", "mmscale.models", "mmscale.data", "mmscale.ops", "mmscale")

# (rule, public name) -> owner file; see the module docstring.
KNOWN_GAPS: dict[tuple[str, str], str] = {}

_EXAMPLE = re.compile(r"^\s*Examples?:\s*$", re.M)
_RAISES = re.compile(r"^\s*Raises:\s*$", re.M)
_SHAPE = re.compile(r"\[(B|N|\.\.\.|[A-Z][A-Za-z_0-9']*)\s*,")


def _public() -> list[tuple[str, str, object]]:
    """``(module, name, object)`` for every public name, each object once."""
    seen: set[int] = set()
    out = []
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            if name == "__version__":
                continue
            obj = getattr(module, name)
            if not callable(obj):
                key = hash((modname, name))  # constants: by name (equal strings are one object)
            else:
                key = id(obj)
            if key in seen:
                continue
            seen.add(key)
            out.append((modname, name, obj))
    return out


PUBLIC = _public()
CALLABLES = [(m, n, o) for m, n, o in PUBLIC if callable(o)]
CONSTANTS = [(m, n, o) for m, n, o in PUBLIC if not callable(o)]


def _id(item) -> str:
    return f"{item[0]}.{item[1]}"


_FIXED_GAPS: list[str] = []


def _check(rule: str, qualname: str, ok: bool, message: str) -> None:
    owner = KNOWN_GAPS.get((rule, qualname))
    if owner is not None:
        if ok:
            _FIXED_GAPS.append(f"({rule!r}, {qualname!r})")
            return
        pytest.xfail(f"known gap in {owner}: {message}")
    assert ok, message


def _own_doc(obj: object) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc:
        return ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the signature a dataclass writes when it has no docstring
    return inspect.cleandoc(doc)


_VALIDATORS = re.compile(r"^(check_\w+|_check\w*|validate\w*|positive_int|odd_triple|triple)$")


def _validates(obj: object) -> bool:
    """Whether the callable's own code raises or calls an mmscale validator."""
    if not inspect.isclass(obj):
        parts = [obj]
    else:
        parts = [obj.__dict__[n] for n in ("__init__", "__post_init__", "forward", "__call__") if n in obj.__dict__]
    for part in parts:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(part))))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:  # a bare re-raise validates nothing
                return True
            if isinstance(node, ast.Call):
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if _VALIDATORS.match(fname):
                    return True
    return False


def test_public_surface_is_not_empty():
    assert len(CALLABLES) >= 40, [_id(c) for c in CALLABLES]


def test_known_gaps_name_public_objects():
    names = {_id(c) for c in PUBLIC} | {f"mmscale.{n}" for _, n, _ in PUBLIC}
    stale = [q for _, q in KNOWN_GAPS if q not in names]
    assert not stale, f"KNOWN_GAPS names that are not public (any more): {stale}"


@pytest.mark.parametrize("item", CALLABLES, ids=_id)
def test_has_docstring_with_example(item):
    modname, name, obj = item
    doc = _own_doc(obj)
    assert doc, f"{modname}.{name} has no docstring of its own"
    has_example = bool(_EXAMPLE.search(doc)) and ">>>" in doc
    _check("example", f"{modname}.{name}", has_example,
           f"{modname}.{name}: the docstring has no 'Example:' section with a >>> line")


@pytest.mark.parametrize("item", CALLABLES, ids=_id)
def test_validation_is_documented(item):
    modname, name, obj = item
    if not _validates(obj):
        return
    _check("raises", f"{modname}.{name}", bool(_RAISES.search(_own_doc(obj))),
           f"{modname}.{name} validates its input but its docstring has no 'Raises:' section")


@pytest.mark.parametrize(
    "item",
    [c for c in CALLABLES if (inspect.isclass(c[2]) and issubclass(c[2], torch.nn.Module))
     or (inspect.isfunction(c[2]) and c[0] == "mmscale.ops" and c[2].__module__ != "mmscale.ops._dispatch")],
    ids=_id,
)
def test_tensor_api_states_shapes(item):
    modname, name, obj = item
    doc = _own_doc(obj)
    if inspect.isclass(obj) and "forward" in obj.__dict__:
        doc += "\n" + (inspect.getdoc(obj.forward) or "")
    _check("shapes", f"{modname}.{name}", bool(_SHAPE.search(doc)),
           f"{modname}.{name}: no tensor shape such as [B, C, D, H, W] in its docstring")


def _defining_module(package: str, name: str) -> tuple[str, ast.Module] | None:
    """Follow ``from X import name`` re-exports to the module that assigns ``name``."""
    for _ in range(5):
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return str(path), tree
        nxt = None
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
                nxt = node.module
        if nxt is None:
            return None
        package = nxt
    return None


@pytest.mark.parametrize("item", CONSTANTS, ids=_id)
def test_constants_are_documented(item):
    modname, name, _ = item
    found = _defining_module(modname, name)
    assert found is not None, f"cannot find where {modname}.{name} is assigned"
    path, tree = found
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, node in enumerate(tree.body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        after = tree.body[i + 1] if i + 1 < len(tree.body) else None
        attr_doc = (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str))
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        documented = attr_doc or above.startswith("#")
        _check("constant", f"{modname}.{name}", documented,
               f"{modname}.{name} ({path}:{node.lineno}) has neither an attribute docstring nor a comment above it")
        return
    pytest.fail(f"{modname}.{name}: assignment not found in {path}")


def _doctests(item) -> list[doctest.DocTest]:
    modname, name, obj = item
    obj = inspect.unwrap(obj)
    module = sys.modules[obj.__module__]
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    tests = finder.find(obj, f"{obj.__module__}.{obj.__qualname__}", module=module, globs=dict(module.__dict__))
    return [t for t in tests if t.examples]


DOCTESTED = [c for c in CALLABLES if _doctests(c)]


@pytest.mark.parametrize("item", DOCTESTED, ids=_id)
def test_examples_run(item, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in _doctests(item):
        out: list[str] = []
        result = runner.run(test, out=out.append, clear_globs=True)
        if result.failed:
            failures.append("".join(out))
    assert not failures, "\n".join(failures)


def test_known_gaps_are_still_gaps():
    """Runs last in this file: report KNOWN_GAPS entries whose docstring has been fixed."""
    if _FIXED_GAPS:
        pytest.skip("fixed, delete from KNOWN_GAPS: " + ", ".join(sorted(set(_FIXED_GAPS))))

#!/usr/bin/env bash
# Release check: can a new user install what we would upload, and is it clean?
#
#   1. build the sdist and, from it, the wheel (python -m build) into a temp dir;
#   2. twine check --strict both (metadata, README rendering);
#   3. inspect the archives: the wheel holds only the mmscale package and its
#      metadata (no tests, examples, benchmarks or their results, docs, data caches,
#      bytecode); the sdist holds no virtual environments, caches or run outputs;
#   4. install the wheel into a fresh virtual environment (torch==2.13.0 first, so
#      pip takes the CPU build instead of resolving a CUDA one), import mmscale from
#      outside the source tree, check the version matches the source and that no
#      triton came with it (triton is the optional extra mmscale[triton]).
#
# Usage: bash .ci/release_check.sh        (PYTHON=... to choose the interpreter that
# has `build` and `twine`; default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
TORCH_SPEC=${RELEASE_CHECK_TORCH:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/mmscale-release.XXXXXX")
trap 'rm -rf "$work"' EXIT
dist="$work/dist"

step() { printf '\n== release check: %s\n' "$*"; }
fail() { printf 'release check FAILED: %s\n' "$*" >&2; exit 1; }

for mod in build twine; do
  "$PY" -c "import $mod" 2>/dev/null || fail "$PY cannot import '$mod' (pip install build twine)"
done

expected=$("$PY" - <<'EOF'
import ast, pathlib
tree = ast.parse(pathlib.Path("mmscale/__init__.py").read_text())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
        print(node.value.value)
EOF
)
[ -n "$expected" ] || fail "no __version__ in mmscale/__init__.py"

step "build sdist and wheel (version $expected)"
# Build from a copy of the tracked files: untracked files cannot leak into the sdist,
# and the checkout gets no build/ or *.egg-info/ (stale build/lib files end up in
# wheels). build's default then makes the sdist, and the wheel from the unpacked
# sdist, so a file missing from the sdist breaks the wheel here, not for a user.
src="$work/src"
mkdir -p "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
else
  tar --exclude=./.venv --exclude=./.ci-venv --exclude=./.git -cf - . | tar -xf - -C "$src"
fi
"$PY" -m build --outdir "$dist" "$src" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "python -m build"; }
sdist=$(ls "$dist"/*.tar.gz 2>/dev/null | head -1)
wheel=$(ls "$dist"/*.whl 2>/dev/null | head -1)
[ -n "$sdist" ] && [ -n "$wheel" ] || fail "build produced no sdist or no wheel: $(ls "$dist")"
echo "$(basename "$sdist")  $(basename "$wheel")"
case "$(basename "$wheel")" in
  "mmscale-$expected-py3-none-any.whl") ;;
  *) fail "unexpected wheel name $(basename "$wheel") (want mmscale-$expected-py3-none-any.whl)" ;;
esac

step "twine check --strict"
"$PY" -m twine check --strict "$sdist" "$wheel"

step "archive contents"
"$PY" - "$wheel" "$sdist" "$expected" <<'EOF'
import re
import sys
import tarfile
import zipfile

wheel, sdist, version = sys.argv[1:4]
problems = []

names = zipfile.ZipFile(wheel).namelist()
dist_info = f"mmscale-{version}.dist-info/"
for name in names:
    if not (name.startswith("mmscale/") or name.startswith(dist_info)):
        problems.append(f"wheel: {name} is outside the mmscale package")
# nothing that belongs to the repository rather than the library
banned = re.compile(
    r"(^|/)(tests?|examples|benchmarks|docs|site|runs|\.cache|\.hypothesis|\.pytest_cache|__pycache__)(/|$)"
    r"|\.(pyc|pyo|json|csv|npy|npz|pt|pth|dcm|xlsx|png|log)$|(^|/)RESULTS\.md$|conftest\.py$|(^|/)test_[^/]*\.py$"
)
for name in names:
    if banned.search(name):
        problems.append(f"wheel: {name} should not be shipped")
for required in ("mmscale/__init__.py", "mmscale/layers/attention.py", "mmscale/ops/msdc/triton.py",
                 "mmscale/ops/gating/triton.py", "mmscale/models/mmcafnet.py", "mmscale/data/phantom.py",
                 f"{dist_info}METADATA", f"{dist_info}RECORD"):
    if required not in names:
        problems.append(f"wheel: {required} is missing")

members = tarfile.open(sdist).getnames()
junk = re.compile(r"(^|/)(\.venv|\.ci-venv|\.git|\.cache|\.hypothesis|\.pytest_cache|\.ruff_cache|__pycache__|site|runs|build|dist)(/|$)|\.pyc$")
for name in members:
    if junk.search(name.split("/", 1)[-1]):
        problems.append(f"sdist: {name} should not be shipped")

# dependencies: triton only behind the "triton" extra (a CPU install must not pull it)
metadata = zipfile.ZipFile(wheel).read(f"{dist_info}METADATA").decode()
requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
for req in requires:
    if req.lower().startswith("triton") and 'extra == "triton"' not in req:
        problems.append(f"wheel: {req!r} makes triton a dependency outside the triton extra")
for extra in ("triton", "data", "examples", "interop", "dev"):
    if extra not in extras:
        problems.append(f"wheel: extra {extra!r} is missing from the metadata")

print(f"wheel: {len(names)} files, all under mmscale/ and {dist_info}")
print(f"sdist: {len(members)} entries")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
EOF

step "install the wheel into a fresh virtual environment"
"$PY" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: pip then keeps this (CPU) build for the wheel's torch>=2.3
# --no-compile: no .pyc for all of torch (only what is imported gets compiled), which
# makes both the install and the clean-up much faster
"$vpy" -m pip install --quiet --no-compile "$TORCH_SPEC"
"$vpy" -m pip install --quiet --no-compile "$wheel"

step "import from outside the source tree"
got=$(cd "$work" && "$vpy" - <<'EOF'
import mmscale
import mmscale.data  # the data extra is optional: the package must import without it
import mmscale.layers
import mmscale.models
import mmscale.ops
from mmscale import MultiScaleConvAttention3d

assert "site-packages" in mmscale.__file__, mmscale.__file__
import importlib.util

# torch's CPU build and the wheel bring no triton: the layers run their PyTorch path
assert importlib.util.find_spec("triton") is None, "installing the wheel pulled triton"
import torch

y = MultiScaleConvAttention3d(8)(torch.randn(1, 8, 2, 6, 6))
assert y.shape == (1, 8, 2, 6, 6)
print(mmscale.__version__)
EOF
)
echo "installed mmscale $got"
[ "$got" = "$expected" ] || fail "installed version $got != source version $expected"

rm -rf "$work"
echo
echo "release check passed: mmscale $expected (sdist + wheel) in $(( $(date +%s) - start )) s"

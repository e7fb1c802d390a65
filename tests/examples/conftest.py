"""A tiny phantom run shared by the trainer tests (small model, 24 patients, 2 epochs)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lung_pet_ct"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

# A model a few times smaller than "tiny": the tests check plumbing, not accuracy.
SMALL_MODEL = {"stem_channels": 8, "widths": [16, 32, 64], "cardinality": 4,
               "fusion_dims": [16, 16, 16], "table_dim": 16}
N_PATIENTS = 24  # letters cycle A G A B G A E A G B: 10 A and 7 G for the "ag" task


def small_args(phantom_dir: Path, cache_root: Path, out: Path, *extra: str) -> list[str]:
    """train.py arguments for a fast run on the shared phantom."""
    import json

    return ["--phantom-dir", str(phantom_dir), "--phantom-patients", str(N_PATIENTS),
            "--cache-root", str(cache_root), "--out", str(out), "--depth", "4", "--crop", "16",
            "--margin", "2", "--batch-size", "4", "--epochs", "2", "--no-progress",
            "--attention-patients", "2", "--model-overrides", json.dumps(SMALL_MODEL), *extra]


def run_script(name: str, *args: str, timeout: float = 240, launcher: list[str] | None = None,
               fails: bool = False, preexec_fn=None):
    """Run an example script in a subprocess; fail with its output when it fails.

    With ``fails=True`` the script must instead end with a non-zero exit code and one
    ``error: ...`` line on stderr, never a traceback.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = (launcher or [sys.executable]) + [str(EXAMPLE / name), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
                          preexec_fn=preexec_fn)
    if fails:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if proc.returncode == 0 or "Traceback" in proc.stderr or len(errors) != 1:
            raise AssertionError(f"{' '.join(cmd)} should fail with one error line "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory):
    """Phantom and cache folders shared by every trainer test (built once)."""
    from mmscale.data import make_phantom

    base = tmp_path_factory.mktemp("lung")
    phantom = base / "phantom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_phantom(phantom, n_patients=N_PATIENTS, seed=0, size=64, slices=8)
    (phantom / ".complete").write_text("ok\n")
    return phantom, base / "cache"


@pytest.fixture(scope="session")
def trained(shared_dirs, tmp_path_factory):
    """One finished in-process run; returns its output folder."""
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args as parse_args

    phantom, cache = shared_dirs
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(parse_args(small_args(phantom, cache, out)))
    assert metrics is not None
    return out

"""Fault tolerance for real: stop or SIGKILL a training subprocess, resume it, and get
the same weights as an uninterrupted run; and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.examples.conftest import EXAMPLE, ROOT, run_script, small_args

EPOCHS = ["--epochs", "3"]


def _state(out):
    return torch.load(out / "fold0" / "checkpoint.pt", weights_only=True)


def _assert_same_run(a, b):
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert [h["val_auroc"] for h in a["history"]] == [h["val_auroc"] for h in b["history"]]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.fixture(scope="module")
def uninterrupted(shared_dirs, tmp_path_factory):
    phantom, cache = shared_dirs
    out = tmp_path_factory.mktemp("full")
    run_script("train.py", *small_args(phantom, cache, out, *EPOCHS))
    return _state(out)


@pytest.mark.slow
def test_stop_after_then_resume_equals_uninterrupted(uninterrupted, shared_dirs, tmp_path):
    phantom, cache = shared_dirs
    run_script("train.py", *small_args(phantom, cache, tmp_path, *EPOCHS, "--stop-after", "1"))
    partial = _state(tmp_path)
    assert partial["epoch"] == 1 and not partial["finished"]
    assert not (tmp_path / "metrics.json").exists()
    stale = tmp_path / "fold0" / ".checkpoint.pt.k1ll3d.tmp"  # what a kill mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    proc = run_script("train.py", *small_args(phantom, cache, tmp_path, *EPOCHS, "--resume"))
    assert "resumed from" in proc.stdout
    assert not stale.exists()
    _assert_same_run(_state(tmp_path), uninterrupted)
    assert json.loads((tmp_path / "metrics.json").read_text())["auroc"] is not None


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted(uninterrupted, shared_dirs, tmp_path):
    phantom, cache = shared_dirs
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(EXAMPLE / "train.py"), *small_args(phantom, cache, tmp_path, *EPOCHS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "fold0" / "checkpoint.pt"
    deadline = time.time() + 240
    try:
        # Kill as soon as the first epoch's checkpoint is on disk (training is mid-epoch 2).
        while time.time() < deadline and proc.poll() is None:
            if ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _state(tmp_path)["epoch"]  # loads: the checkpoint is never half-written
    assert 1 <= killed_at < 3
    # a kill during a checkpoint write may leave that write's temp file; resuming clears it
    run_script("train.py", *small_args(phantom, cache, tmp_path, *EPOCHS, "--resume"))
    _assert_same_run(_state(tmp_path), uninterrupted)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_torchrun_two_processes_gloo(shared_dirs, tmp_path):
    phantom, cache = shared_dirs
    proc = run_script("train.py", *small_args(phantom, cache, tmp_path, "--epochs", "2"),
                      launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node=2"], timeout=400)
    assert "world size 2" in proc.stdout
    assert proc.stdout.count("epoch 2/2") == 1  # rank 0 logs, rank 1 stays quiet
    state = _state(tmp_path)
    assert state["epoch"] == 2 and state["finished"]
    assert set(json.loads((tmp_path / "metrics.json").read_text())) >= {"auroc", "npv"}

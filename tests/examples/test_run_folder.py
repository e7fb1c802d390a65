"""A run is never lost or silently changed: the lock on the output folder, no silent
overwrite, resume that compares settings, clear one-line failures, non-finite batches,
predict's refusals, and ``--help``."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from tests.examples.conftest import EXAMPLE, ROOT, run_script, small_args


@pytest.fixture
def finished_copy(trained, tmp_path):
    """A copy of the shared finished run (2 epochs) that a test may change."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _state(out):
    return torch.load(out / "fold0" / "checkpoint.pt", weights_only=True)


def test_a_second_run_on_a_locked_out_exits_at_once_naming_the_holder(shared_dirs, tmp_path):
    from lung_trainer.rundir import RunLock

    phantom, cache = shared_dirs
    with RunLock(tmp_path):
        proc = run_script("train.py", *small_args(phantom, cache, tmp_path), fails=True)
    assert "is in use by another run" in proc.stderr and f"pid {os.getpid()} on " in proc.stderr
    assert not list(tmp_path.glob("fold*"))  # nothing was trained or written
    with RunLock(tmp_path) as lock:  # released by the holder: free again
        assert lock.held


@pytest.mark.slow
def test_a_finished_run_is_refused_then_overwrite_replaces_it_and_lists_every_file(
        finished_copy, shared_dirs):
    phantom, cache = shared_dirs
    out = finished_copy
    (out / "fold7").mkdir()  # a file of the earlier run that the new one would not rewrite
    (out / "fold7" / "best.pt").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")  # not the trainer's: kept
    proc = run_script("train.py", *small_args(phantom, cache, out), fails=True)
    assert "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert (out / "fold7" / "best.pt").is_file()  # the refusal changed nothing

    proc = run_script("train.py", *small_args(phantom, cache, out, "--overwrite", "--epochs", "1"))
    assert not (out / "fold7").exists() and (out / "notes.txt").read_text() == "mine"
    assert _state(out)["epoch"] == 1
    listed = proc.stdout.split("files written (")[1].splitlines()[1:]
    listed = {line.strip() for line in listed if line.startswith("  ")}
    on_disk = {str(p) for p in out.rglob("*") if p.is_file() and p.name not in (".lock", "notes.txt")}
    assert on_disk and listed == on_disk


def test_resume_refuses_changed_settings_and_lists_each(finished_copy, shared_dirs):
    phantom, cache = shared_dirs
    before = _state(finished_copy)
    proc = run_script("train.py", *small_args(phantom, cache, finished_copy, "--resume", "--lr", "0.1",
                                              "--modality", "image"), fails=True)
    assert "lr: 0.002 -> 0.1" in proc.stderr and "modality: 'both' -> 'image'" in proc.stderr
    assert "epochs" not in proc.stderr.split("cannot change")[1]  # unchanged fields are not listed
    assert torch.equal(_state(finished_copy)["rng"]["torch"], before["rng"]["torch"])


@pytest.mark.slow
def test_resume_with_more_epochs_continues_a_finished_run_and_never_shortens_it(finished_copy, shared_dirs):
    phantom, cache = shared_dirs
    proc = run_script("train.py", *small_args(phantom, cache, finished_copy, "--resume", "--epochs", "1"),
                      fails=True)
    assert "cannot shorten" in proc.stderr
    proc = run_script("train.py", *small_args(phantom, cache, finished_copy, "--resume", "--epochs", "3"))
    assert "--epochs 2 -> 3" in proc.stdout and "epochs: 2 -> 3" in proc.stdout
    state = _state(finished_copy)
    assert state["epoch"] == 3 and state["finished"] and len(state["history"]) == 3
    assert state["train_config"]["epochs"] == 3


def test_unwritable_out_or_cache_root_is_refused_before_any_work(shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args

    phantom, cache = shared_dirs
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_script("train.py", *small_args(phantom, cache, blocker / "out"), fails=True)
    assert f"error: out: cannot write to {blocker / 'out'}" in proc.stderr
    with pytest.raises(ValueError, match="cache_root: cannot write"):
        run(parse_train_args(small_args(phantom, blocker / "cache", tmp_path / "out")))


def test_a_failed_write_mid_run_ends_with_one_line_and_no_temp_file(trained, shared_dirs, tmp_path):
    """Out of space, for real: the file-size limit makes the checkpoint write fail (EFBIG)."""
    phantom, cache = shared_dirs
    limit = (trained / "fold0" / "checkpoint.pt").stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_script("train.py", *small_args(phantom, cache, tmp_path), fails=True, preexec_fn=small_files)
    assert "error: cannot write" in proc.stderr and ".pt: File too large" in proc.stderr
    assert "epoch 1/2" in proc.stdout  # it failed after an epoch of work, cleanly
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_damaged_checkpoint_on_resume_is_one_line(finished_copy, shared_dirs):
    phantom, cache = shared_dirs
    (finished_copy / "fold0" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    proc = run_script("train.py", *small_args(phantom, cache, finished_copy, "--resume"), fails=True)
    assert "checkpoint.pt' cannot be read" in proc.stderr


@pytest.mark.slow
def test_a_killed_phantom_build_leaves_no_temp_folder(tmp_path):
    cache = tmp_path / "cache"
    parent = cache / "phantom"
    args = ["--cache-root", str(cache), "--phantom-patients", "24", "--out", str(tmp_path / "out"),
            "--no-progress", "--stop-after", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE / "train.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if parent.is_dir() and list(parent.glob("*.tmp*/Lung-PET-CT-Dx/*")):
                break  # mid-build: some patients written
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(parent.glob("*.tmp*"))  # what a kill leaves ...
    done = run_script("train.py", *args)  # ... the next run removes, then builds the phantom
    assert "unfinished phantom build left by a killed run" in done.stdout
    assert [p.name for p in parent.iterdir()] == ["v4-n24-s0"]
    assert (parent / "v4-n24-s0" / ".complete").is_file()


def test_predict_refuses_a_guessed_crop_and_bad_rows_and_warns_on_a_missing_table(trained, shared_dirs, capsys):
    from lung_trainer.cli import parse_train_args, predict_main

    phantom, _ = shared_dirs
    ckpt = str(trained / "fold0" / "best.pt")
    patient = str(phantom / "Lung-PET-CT-Dx" / "Lung_Dx-G0001")
    proc = run_script("predict.py", "--checkpoint", ckpt, "--patient-dir", patient, fails=True)
    assert "--center-crop" in proc.stderr and "lesion" in proc.stderr
    proc = run_script("predict.py", "--checkpoint", ckpt, "--patient-dir", patient, "--center-crop")
    out = json.loads(proc.stdout)
    assert out["lesion_centred"] is False and out["clinical_row"] is False
    assert "warning: patient G0001: it has no lesion box; cropping the volume centre" in proc.stderr
    assert "warning: no clinical row" in proc.stderr

    annotations = str(next(phantom.glob("*Annotations*")))
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['age', 'sex'\].*'Age'"):
        predict_main(["--checkpoint", ckpt, "--patient-dir", patient, "--annotations", annotations,
                      "--row", '{"age": 61, "sex": "M", "Ｍ-Stage": 0}'])
    for argv in (["--checkpoint", ckpt, "--patient-dir", patient, "--row", "[1, 2]"],
                 ["--checkpoint", ckpt, "--patient-dir", patient, "--row", "{age: 61}"]):
        with pytest.raises(SystemExit):
            predict_main(argv)
        assert "argument --row:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_train_args(["--model-overrides", '"drop_path_rate=0"'])
    assert "expected a JSON object" in capsys.readouterr().err


def _poisoned_cache(shared_dirs, tmp_path):
    """A copy of the prepared cache with one training patient's crop all NaN."""
    from lung_trainer.cli import parse_train_args
    from lung_trainer.data import make_splits, task_patients

    from mmscale.data import PreparedData

    phantom, cache = shared_dirs
    (src,) = [p for p in (cache / "prepared").iterdir() if p.is_dir()]
    dst = tmp_path / "poisoned"
    shutil.copytree(src, dst)
    cfg = parse_train_args(small_args(phantom, cache, tmp_path / "out"))
    data = PreparedData.load(dst)
    ids, labels = task_patients(data, cfg.classes)
    pid = make_splits(ids, labels, cfg)[0].train[0]
    crop = np.load(dst / "crops" / f"{pid}.npy")
    np.save(dst / "crops" / f"{pid}.npy", np.full_like(crop, np.nan))
    return dst, pid


@pytest.mark.slow
def test_a_nonfinite_batch_stops_the_run_or_is_skipped_never_reaching_batchnorm(
        trained, shared_dirs, tmp_path):
    from lung_trainer import run
    from lung_trainer.cli import parse_train_args
    from lung_trainer.rundir import RunError

    phantom, cache = shared_dirs
    poisoned, pid = _poisoned_cache(shared_dirs, tmp_path)
    args = small_args(phantom, cache, tmp_path / "out", "--cache-dir", str(poisoned), "--epochs", "1",
                      "--attention-patients", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RunError, match=f"non-finite volume in the training batch of patients .*{pid}"):
            run(parse_train_args(args))
        run(parse_train_args([*args, "--on-nonfinite", "skip", "--overwrite"]))
    state = _state(tmp_path / "out")
    assert state["history"][0]["skipped_batches"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", ["train_parser", "evaluate_parser", "predict_parser"])
def test_help_gives_every_option_a_line_and_its_default(name):
    from lung_trainer import cli

    parser = getattr(cli, name)()
    formatter = cli.HelpFormatter(parser.prog)
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        assert "default" in formatter._get_help_string(action), f"{action.option_strings} hides its default"
    text = parser.format_help()
    assert "(default: 30)" in text if name == "train_parser" else "(default:" in text

"""One writer per run directory (rcvcore/_runlock.py, issue 25.4): a second process is refused
with one line, a killed holder frees the directory, and temporary files of interrupted
checkpoint writes are removed by the next claimant."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_fixtures import cli, tiny_flags

from rcvcore._runlock import LOCK_NAME, claim_run_dir
from rcvcore.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CLAIM = ("import sys, time\nfrom rcvcore._runlock import claim_run_dir\n"
         "lock = claim_run_dir(sys.argv[1])\nprint('claimed', flush=True)\n"
         "time.sleep(float(sys.argv[2]))\n")


def _claim_in_child(run: Path, hold_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(run), str(hold_s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_process_is_refused_while_the_first_holds_it(tmp_path):
    run = tmp_path / "run"
    lock = claim_run_dir(run)
    child = _claim_in_child(run)
    _, err = child.communicate(timeout=120)
    assert child.returncode != 0
    assert "is being written by process" in err and str(os.getpid()) in err and str(run) in err
    lock.release()
    child = _claim_in_child(run)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and "claimed" in out, err


def test_a_killed_holder_frees_the_directory(tmp_path):
    run = tmp_path / "run"
    child = _claim_in_child(run, hold_s=120)
    assert child.stdout.readline().strip() == "claimed"
    with pytest.raises(UserError, match="being written by process"):
        claim_run_dir(run)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    claim_run_dir(run).release()          # the stale lock file blocks nothing


def test_claims_nest_within_one_process(tmp_path):
    run = tmp_path / "run"
    a, b = claim_run_dir(run), claim_run_dir(run)
    a.release()
    child = _claim_in_child(run)
    assert child.wait(timeout=120) != 0   # still held by b
    b.release()
    assert _claim_in_child(run).wait(timeout=120) == 0


def test_temporary_files_of_killed_checkpoint_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / f".checkpoint.{pid}.tmp.pt" for pid in (os.getpid(), 999_999)]
    for p in stale:
        p.write_bytes(b"half a checkpoint")       # fresh: the age rule alone would keep them
    keep = run / "checkpoint.pt"
    keep.write_bytes(b"the checkpoint")
    claim_run_dir(run).release()
    assert not any(p.exists() for p in stale) and keep.exists()
    assert (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_train_into_a_held_directory_is_one_line(tmp_path):
    """The CLI: ``train`` into a run directory another process writes ends with one line."""
    run = tmp_path / "run"
    lock = claim_run_dir(run)
    t0 = time.monotonic()
    proc = cli("train", "--dataset", "demo-scale", "--cut", "add_4", "--run-dir", run,
               *tiny_flags())
    lock.release()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is being written by process" in lines[0], proc.stderr
    assert not (run / "config.json").exists() and time.monotonic() - t0 < 120

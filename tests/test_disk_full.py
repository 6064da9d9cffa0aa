"""A disk that refuses writes (issue 25.4): every write path ends in one line naming the folder,
never a traceback; a training run's status ends ``failed`` with that line. Real refusals where
the system gives them without root (``/dev/full``: ENOSPC; a read-only folder), simulated ones
(the exceptions SQLite and torch raise on a full disk) elsewhere."""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import warnings

import pytest
from _train_fixtures import dataset

from rcvcore._cache import Store
from rcvcore.cli import main
from rcvcore.errors import DiskError, Notice, disk_error


def test_cli_output_to_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path))
    assert main(["runs", "--json", "/dev/full"]) == 2      # the kernel's ENOSPC
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot write in /dev/full: no space left on the device; free space "
                   "there."), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_output_to_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["runs", "--json", str(ro / "list.json")]) == 2
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write in {ro}: permission denied") and "\n" not in err


@pytest.mark.parametrize("exc, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x/f.png"),
     "cannot write in /data/x: no space left on the device; free space there"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    (sqlite3.OperationalError("database or disk is full"), "full or read-only"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 10 vs 2; "
                  "PytorchStreamWriter failed writing file data/0: file write failed"),
     "full or read-only"),
])
def test_refused_writes_are_recognised(exc, words):
    err = disk_error(exc, "/the/folder")
    assert isinstance(err, DiskError) and words in str(err) and "\n" not in str(err)


def test_not_a_disk_problem_is_left_alone():
    assert disk_error(ValueError("bad value"), "/x") is None
    assert disk_error(OSError(errno.ENOENT, "No such file"), "/x") is None


def test_a_full_cache_warns_once_and_the_caller_goes_on(tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store._cache, "set", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.put("a", 1)
        store.put("b", 2)
    notes = [w for w in caught if issubclass(w.category, Notice)]
    assert len(notes) == 1 and str(tmp_path / "cache") in str(notes[0].message)
    assert "RCV_CACHE_DIR" in str(notes[0].message)
    assert store.get("a") is None


def test_dataset_generation_on_a_full_disk_names_the_cache(tmp_path, monkeypatch):
    import rcvcore.data.demo_scale as demo_scale
    from rcvcore.data import load_dataset

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo_scale, "load", full)
    with pytest.raises(DiskError, match=f"cannot write in {tmp_path}.*RCV_CACHE_DIR"):
        load_dataset("demo-scale", cache_dir=tmp_path)


@pytest.mark.slow
def test_a_full_disk_during_training_ends_the_run_failed_with_one_line(tmp_path, monkeypatch):
    """The checkpoint write fails as torch fails on a full disk; status.json says failed with
    the one-line reason (it was left at "running")."""
    import torch

    from rcvcore.train import TrainConfig, train

    def full(*a, **k):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    cfg = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset="unused",
                      epochs=1, batch_size=8, lr=1e-3, image_size=32, log_every=5)
    run = tmp_path / "run"
    with pytest.raises(DiskError) as e:
        train(cfg, run, dataset=dataset(tmp_path / "data", n=24), handle_signals=False)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == str(e.value)
    assert f"cannot write in {run}" in status["error"] and "--run-dir" in status["error"]
    assert not [p for p in run.iterdir() if ".tmp" in p.name]

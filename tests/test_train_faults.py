"""Training faults that heal: a kill -9 mid-epoch then ``--resume`` gives the metrics log of an
uninterrupted run; a damaged latest checkpoint falls back to the previous one; ``--restart``
starts a run directory afresh; temporary files of killed writes are removed."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from _train_fixtures import dataset

from rcvcore.runs import CHECKPOINT, PREVIOUS_CHECKPOINT, read_metrics
from rcvcore.train import TrainConfig, train

TINY = TrainConfig(arch="resnet18", weights="random", cut="add_2", dataset="unused", epochs=2,
                   batch_size=4, lr=1e-3, image_size=32, log_every=1, checkpoint_every=2,
                   workers=0)
KILL_AT = 5          # global step: mid-epoch 1, one step after the checkpoint at step 4


def _losses(run: Path) -> list[tuple]:
    """The metrics log without its timings: what must not change with a kill and a resume."""
    out = []
    for m in read_metrics(run):
        out.append(tuple((k, v) for k, v in sorted(m.items())
                         if k not in ("images_per_s", "epoch_time_s", "time")))
    return out


CHILD = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from rcvcore.train import TrainConfig, train
from _train_fixtures import dataset

config = TrainConfig.from_dict({config!r})

def on_record(rec):   # die like kill -9: no cleanup, no status written
    if rec.get("kind") == "step" and rec.get("global_step") == {kill_at}:
        os._exit(9)

train(config, Path({run!r}), dataset=dataset(Path({data!r}), n=36), on_record=on_record)
"""


def _run_and_die(config, run: Path, data_root: Path) -> int:
    """Train in a child process that dies like kill -9 right after step KILL_AT (a subprocess,
    not a fork: a forked torch can hang on its thread pool)."""
    import subprocess
    import sys

    code = CHILD.format(tests=str(Path(__file__).parent), config=config.to_dict(),
                        kill_at=KILL_AT, run=str(run), data=str(data_root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RCV_NO_DOWNLOAD": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=600,
                          capture_output=True).returncode


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The child trains on one thread: so do the reference and the resumed runs, so that the
    logs can be compared exactly (thread counts change the order of float sums)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    train(TINY, root / "run", dataset=dataset(root / "data", n=36))
    return root


def _killed_run(tmp_path) -> Path:
    run = tmp_path / "run"
    assert _run_and_die(TINY, run, tmp_path / "data") == 9
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "running"                       # died without a word
    return run


def test_kill_9_mid_epoch_then_resume_gives_the_same_metrics_log(reference, tmp_path):
    run = _killed_run(tmp_path)
    res = train(None, run, resume=True, dataset=dataset(tmp_path / "data", n=36))
    assert res.state == "done"
    ref = _losses(reference / "run")
    assert _losses(run) == ref
    # the epoch that was interrupted reports the loss of the whole epoch, not of its tail
    epochs = [m for m in read_metrics(run) if m["kind"] == "epoch"]
    assert len(epochs) == 2 and not any("train_loss_partial" in m for m in epochs)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    run = _killed_run(tmp_path)
    assert (run / PREVIOUS_CHECKPOINT).is_file()
    ck = run / CHECKPOINT
    ck.write_bytes(ck.read_bytes()[:1000])                 # the latest one damaged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train(None, run, resume=True, dataset=dataset(tmp_path / "data", n=36))
    assert res.state == "done"
    assert any(PREVIOUS_CHECKPOINT in str(w.message) for w in caught)
    assert _losses(run) == _losses(reference / "run")


def test_restart_starts_a_run_directory_afresh(reference, tmp_path, capsys):
    from rcvcore.cli import main

    run = _killed_run(tmp_path)
    (run / ".checkpoint.999999.tmp.pt").write_bytes(b"partial")     # a killed write's leftover
    os.utime(run / ".checkpoint.999999.tmp.pt", (0, 0))
    flags = ["--arch", "resnet18", "--weights", "random", "--cut", "add_2", "--epochs", "1",
             "--batch-size", "8", "--image-size", "32", "--quiet", "--run-dir", str(run)]
    folder = tmp_path / "folder"
    from _train_fixtures import write_folder

    write_folder(folder, n=24)
    flags += ["--dataset", f"folder:{folder}", "--dataset-cache-dir", str(tmp_path / "c")]
    assert main(["train", *flags]) == 2                    # a run is there: refused, one line
    assert "--restart" in capsys.readouterr().err
    assert main(["train", "--restart", *flags]) == 0
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "done" and not st["resumed"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 1 and cfg["dataset"] == f"folder:{folder}"
    assert [m["epoch"] for m in read_metrics(run) if m["kind"] == "epoch"] == [1]
    assert not (run / ".checkpoint.999999.tmp.pt").exists()

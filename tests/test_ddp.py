"""Data-parallel training with torchrun (2 CPU processes, gloo) behaves like a single process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _train_fixtures import REPO, tiny_flags, write_folder

from rcvcore.runs import read_run


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    folder = write_folder(tmp_path / "data", n=30)
    flags = tiny_flags(cut="add_4", epochs="2", dataset=f"folder:{folder}")
    env = {**os.environ, "RCV_NO_DOWNLOAD": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rcvcore", "train", "--run-dir", str(tmp_path / "ddp"), "--quiet", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "rcvcore", "train", "--run-dir", str(tmp_path / "one"), "--quiet",
         *flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = read_run(tmp_path / "ddp"), read_run(tmp_path / "one")
    assert a.state == b.state == "done"
    assert a.result["world_size"] == 2 and b.result["world_size"] == 1
    assert [e["epoch"] for e in a.epochs] == [e["epoch"] for e in b.epochs] == [1, 2]
    # same data, same splits; each step of the 2 processes covers the same global batch
    for k in ("n_train", "n_val", "n_test"):
        assert a.result[k] == b.result[k]
    assert [p["path"] for p in a.result["test_predictions"]] == \
        [p["path"] for p in b.result["test_predictions"]]
    assert a.result["global_step"] == b.result["global_step"]
    assert a.result["test"]["mae"] is not None
    # one writer: a single status, one line per logged step, a loadable checkpoint
    steps = [s["global_step"] for s in a.steps]
    assert steps == sorted(set(steps))
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and not any(k.startswith("module.") for k in ck["model"])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_ddp_resume_uses_the_configured_device(tmp_path):
    """A DDP resume initialises on the run's configured device, not on "auto": a run configured
    for CUDA, resumed under torchrun on a machine without CUDA, says so (it used to train on
    the CPU silently)."""
    import json

    from rcvcore.train import TrainConfig

    folder = write_folder(tmp_path / "data", n=30)
    run = tmp_path / "run"
    run.mkdir()
    # a run launched for CUDA and killed before it wrote any status
    cfg = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset=f"folder:{folder}",
                      epochs=1, batch_size=8, image_size=32, device="cuda")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "RCV_NO_DOWNLOAD": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rcvcore", "train", "--resume", "--run-dir", str(run), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0
    assert "--device cuda: CUDA is not available" in r.stderr, r.stderr[-3000:]
    assert read_run(run).status.get("state") != "done"

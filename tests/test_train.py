"""Training runs: loss goes down, the run directory is complete and consistent, resume continues
the log where it stopped, NaN fails loudly, SIGTERM cancels cleanly, compare pairs seeds."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from _train_fixtures import CLASSES, TINY, cli, dataset, tiny_flags, write_folder
from sklearn.metrics import cohen_kappa_score, mean_absolute_error, r2_score

import rcvcore.train.loop as loop
from rcvcore.errors import UserError
from rcvcore.runs import RunFailed, cancel, launch, read_run
from rcvcore.train import TrainConfig, split_dataset, train


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("tiny"), n=36)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder"), n=36)


def test_training_decreases_loss_and_writes_run(ds, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=4)
    res = train(cfg, tmp_path / "run", dataset=ds)
    assert res.state == "done"
    st = read_run(tmp_path / "run")
    assert st.state == "done" and st.status["error"] is None
    losses = [e["train_loss"] for e in st.epochs]
    assert [e["epoch"] for e in st.epochs] == [1, 2, 3, 4]
    assert losses[-1] < 0.5 * losses[0]
    for e in st.epochs:
        assert {"train_loss", "val_loss", "val_mae", "val_r2", "val_kappa", "lr",
                "images_per_s"} <= set(e)
    steps = st.steps
    assert [s["global_step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all({"loss", "lr", "images_per_s"} <= set(s) for s in steps)
    # config round-trips; checkpoint loads with weights_only=True
    assert TrainConfig.from_dict(st.config) == cfg
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 4 and ck["global_step"] == steps[-1]["global_step"]
    assert {"model", "optimizer", "task"} <= set(ck)
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_result_metrics_match_sklearn(ds, tmp_path):
    train(TINY, tmp_path / "run", dataset=ds)
    r = read_run(tmp_path / "run").result
    t = r["test"]
    preds = r["test_predictions"]
    y = [p["target"] for p in preds]
    yhat = [p["prediction"] for p in preds]
    assert t["mae"] == pytest.approx(mean_absolute_error(y, yhat))
    assert t["r2"] == pytest.approx(r2_score(y, yhat))
    # magnification: nearest mean *training-set* area
    splits = split_dataset(ds, seed=0)
    areas, labels = ds.measures, ds.labels
    tr = splits["train"]
    means = {c: areas[tr][labels[tr] == c].mean() for c in CLASSES}
    assert dict(r["task"]["class_means"]) == pytest.approx(means)
    by_path = {s.path: s.label for s in ds.samples}
    true = [by_path[p["path"]] for p in preds]
    pred = [min(means, key=lambda c: abs(means[c] - a)) for a in yhat]
    assert t["kappa"] == pytest.approx(cohen_kappa_score(true, pred, labels=list(CLASSES)),
                                       abs=1e-9)
    assert t["kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(true, pred, labels=list(CLASSES), weights="quadratic"), abs=1e-9)
    assert np.sum(t["confusion_matrix"]) == len(preds) == r["n_test"]
    assert t["classes"] == list(CLASSES)
    assert r["model"]["pruned_params"] < r["model"]["full_params"]


def test_magnification_target(ds, tmp_path):
    cfg = dataclasses.replace(TINY, target="magnification", cut="none", epochs=2)
    r = train(cfg, tmp_path / "run", dataset=ds).result
    assert r["task"]["kind"] == "classification"
    cm = np.asarray(r["test"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == r["n_test"]
    assert "mae" not in r["test"] and r["test"]["accuracy"] is not None


def test_splits_grouped_and_deterministic(ds):
    a = split_dataset(ds, seed=3)
    b = split_dataset(ds, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    groups = ds.groups
    seen = [set(groups[a[k]]) for k in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(v) for v in a.values()) == len(ds)


def test_nan_loss_fails_the_run(ds, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_objective", lambda out, y, task: out.sum() * float("nan"))
    with pytest.raises(RunFailed, match="non-finite|nan.*lower --lr"):
        train(TINY, tmp_path / "run", dataset=ds)
    st = read_run(tmp_path / "run")
    assert st.state == "failed" and "--lr" in st.status["error"]


def test_bad_config_and_existing_run_dir(ds, tmp_path):
    with pytest.raises(UserError, match="--target"):
        train(dataclasses.replace(TINY, target="area"), tmp_path / "a", dataset=ds)
    with pytest.raises(UserError, match="add_9.*Did you mean"):
        train(dataclasses.replace(TINY, cut="add_9"), tmp_path / "a", dataset=ds)
    train(TINY, tmp_path / "b", dataset=ds)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(TINY, tmp_path / "b", dataset=ds)
    with pytest.raises(UserError, match="not a run directory"):
        train(None, tmp_path / "nothing", resume=True)


def test_cli_rejects_bad_flags_with_exit_2(tmp_path):
    r = cli("train", "--run-dir", tmp_path / "r", *tiny_flags(cut="add_99", dataset="demo-scale"))
    assert r.returncode == 2 and "add_99" in r.stderr and "Traceback" not in r.stderr


def _wait(pred, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(folder, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(**{**dataclasses.asdict(TINY), "dataset": f"folder:{folder}",
                         "epochs": 4, "batch_size": 4, "log_every": 1})
    proc = launch(cfg, run, env={"OMP_NUM_THREADS": "1"})
    try:
        assert _wait(lambda: read_run(run).status.get("epoch", 0) >= 1), \
            (run / "train.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = read_run(run)
    assert before.state == "interrupted"
    first = before.epochs[0]
    r = cli("train", "--resume", "--run-dir", run)
    assert r.returncode == 0, r.stderr
    after = read_run(run)
    assert after.state == "done"
    assert [e["epoch"] for e in after.epochs] == [1, 2, 3, 4]
    assert after.epochs[0] == first                      # the log continued, not restarted
    gs = [s["global_step"] for s in after.steps]
    assert gs == list(range(1, len(gs) + 1))             # no duplicated or missing step
    assert after.status["resumed"] is True


def _cancel_while_running(folder, run, epochs: int, min_steps: int, cancel_fn) -> None:
    """Launch a tiny run as a subprocess, cancel it with ``cancel_fn(run)`` once it has logged
    ``min_steps`` steps, and check the process ends as cancelled (exit 143)."""
    cfg = TrainConfig(**{**dataclasses.asdict(TINY), "dataset": f"folder:{folder}",
                         "epochs": epochs, "batch_size": 4})
    proc = launch(cfg, run, env={"OMP_NUM_THREADS": "1"})
    try:
        assert _wait(lambda: len(read_run(run).steps) >= min_steps), \
            (run / "train.log").read_text()
        cancel_fn(run)
        assert proc.wait(30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_cancels_consistently_then_resume(folder, tmp_path):
    run = tmp_path / "run"
    _cancel_while_running(folder, run, 3, 2,
                          lambda d: assert_equal(cancel(d, wait=60), "cancelled"))
    st = read_run(run)
    assert st.state == "cancelled" and "resume" in st.status["message"]
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] == st.steps[-1]["global_step"]
    r = cli("train", "--resume", "--run-dir", run)
    assert r.returncode == 0, r.stderr
    st = read_run(run)
    assert st.state == "done" and [e["epoch"] for e in st.epochs] == [1, 2, 3]


def test_cli_cancel_stops_a_running_run(folder, tmp_path):
    def cancel_cli(d):
        r = cli("cancel", d, "--wait", "60")   # the dashboard's Cancel button, headless
        assert r.returncode == 0 and "cancelled" in r.stdout, (r.stdout, r.stderr)
        assert "--resume" in r.stdout

    run = tmp_path / "long"
    _cancel_while_running(folder, run, 500, 1, cancel_cli)
    assert read_run(run).state == "cancelled"


def assert_equal(a, b):
    assert a == b, (a, b)


def test_compare_pairs_seeds_and_writes_table(ds, tmp_path):
    from rcvcore.compare import compare

    comp = compare(TINY, "none,add_2", 2, tmp_path / "cmp", dataset=ds)
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["cuts"] == ["none", "add_2"] and saved["seeds"] == [1001, 1002]
    rows = {r["cut"]: r for r in saved["rows"]}
    assert rows["add_2"]["n"] == 2 and rows["none"]["states"] == ["done", "done"]
    mae = rows["add_2"]["metrics"]["mae"]
    assert mae["mean"] == pytest.approx(np.mean(mae["values"]))
    assert mae["std"] == pytest.approx(np.std(mae["values"], ddof=1))
    assert saved["tests"][0]["metrics"]["mae"]["n"] == 2
    assert "ResNet18 pruned at add_2" in comp.table() and "MAE (px)" in comp.table()
    # replicates over data: the cuts of one seed share its split, each seed has its own
    tests = {d: [p["path"] for p in json.loads((tmp_path / "cmp" / d / "result.json")
                                                .read_text())["test_predictions"]]
             for d in ("none_seed1001", "add_2_seed1001", "none_seed1002")}
    assert tests["none_seed1001"] == tests["add_2_seed1001"] != tests["none_seed1002"]
    # two replicates: no verdict of significance, n shown, the unit named
    t = saved["tests"][0]["metrics"]["mae"]
    assert t["verdict"] == "not testable" and t["p"] is None and "3" in t["why"]
    assert saved["unit"] == "group split (one per replicate)"
    assert "not testable (n=2)" in comp.table() and "unit of inference" in comp.table()
    # a second call reuses the finished runs
    t0 = time.monotonic()
    compare(TINY, "none,add_2", 2, tmp_path / "cmp", dataset=ds)
    assert time.monotonic() - t0 < 5


def test_cli_train_on_folder_dataset(folder, tmp_path, monkeypatch):
    r = cli("train", "--run-dir", tmp_path / "r", "--dataset", f"folder:{folder}", "--quiet",
            *tiny_flags(cut="add_4"))
    assert r.returncode == 0, r.stderr
    assert "test (" in r.stdout and "parameters" in r.stdout
    st = read_run(tmp_path / "r")
    assert st.state == "done"
    # classes in magnification order (labels.csv gives strings): quadratic kappa needs it
    assert st.result["task"]["classes"] == list(CLASSES) == ["5x", "10x", "20x"]
    # the run list, headless
    r = cli("runs", tmp_path, "--json", tmp_path / "runs.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:4] == ["r", "done", "resnet18", "add_4"]
    listed = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [x["name"] for x in listed] == ["r"] and listed[0]["epochs_done"] == 1
    assert listed[0]["test"]["mae"] == pytest.approx(st.result["test"]["mae"])
    r = cli("cancel", tmp_path / "r")
    assert r.returncode == 0 and "nothing to cancel" in r.stdout
    r = cli("runs", tmp_path / "nope")
    assert r.returncode == 2 and "not a folder" in r.stderr
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "none-yet"))
    r = cli("runs")   # the default folder, before any run: a note, not an error
    assert r.returncode == 0 and "no runs yet" in r.stdout


def test_config_is_hashable_and_spells_the_full_network_once():
    a = dataclasses.replace(TINY, dataset_options={"max_per_level": 4})
    b = dataclasses.replace(TINY, dataset_options={"max_per_level": 4})
    assert a == b and hash(a) == hash(b) and len({a, b, TINY}) == 2
    for alias in ("full", "", None):
        assert TrainConfig(cut=alias).cut == "none"
    assert TrainConfig.from_dict(TrainConfig(cut="full").to_dict()).cut == "none"

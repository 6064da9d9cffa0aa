"""The run concept (rcvcore.runs): groups, the scheduler, and the CLI on groups."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
from _train_fixtures import cli, dataset, tiny_flags, write_folder

from rcvcore import runs
from rcvcore.train import TrainConfig, train

TINY = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset="unused",
                   target="nuclei-area", epochs=1, batch_size=8, lr=1e-3, image_size=32,
                   log_every=1)


def test_runs_root_is_resolved_in_one_place(tmp_path, monkeypatch):
    monkeypatch.delenv("RCV_RUNS_DIR", raising=False)
    assert runs.runs_root() == runs.runs_root(None) and runs.runs_root().name == "runs"
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "r"))
    assert runs.runs_root() == tmp_path / "r" and not (tmp_path / "r").exists()
    assert runs.runs_root(create=True).is_dir()
    assert runs.runs_root(tmp_path / "x") == tmp_path / "x"


def test_group_completion_writes_comparison_reading_does_not(tmp_path):
    ds = dataset(tmp_path / "data", n=24)
    group = runs.plan_group(tmp_path / "g", TINY, ["none", "add_4"], [1001], max_parallel=2)
    assert runs.group_state(group) == "waiting"
    for cut, seed, d, st in runs.group_runs(group):
        assert st is None
        train(dataclasses.replace(TINY, cut=cut, seed=seed), d, dataset=ds)
    comp = runs.group_comparison(group)             # what a page shows while it renders
    assert [r["cut"] for r in comp.rows] == ["none", "add_4"]
    assert not (group / "comparison.json").exists()
    assert runs.Scheduler(tmp_path).advance(group) == 0   # nothing left: the group finishes
    saved = json.loads((group / "comparison.json").read_text())
    assert saved["table"] == comp.table() and saved["rows"] == json.loads(json.dumps(comp.rows))
    plan = runs.read_group(group)
    assert plan["state"] == "done" and plan["finished"] and runs.group_state(group) == "done"
    # the dashboard's layout: the group lists its runs, newest group first
    assert runs.list_groups(tmp_path)["g"] == [group / "add_4_seed1001", group / "none_seed1001"]


def test_scheduler_records_a_broken_group_and_keeps_going(tmp_path, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "group.json").write_text(json.dumps({"base": {"nope": 1}, "cuts": ["none"],
                                                "seeds": [1], "max_parallel": 1}))
    good = runs.plan_group(tmp_path / "good", TINY, ["add_4"], [1])
    runs.Scheduler(tmp_path).cancel_group(good)   # nothing to start in the good group
    sched = runs.Scheduler(tmp_path)
    sched.step()                                   # must not raise
    assert "unknown configuration keys" in runs.read_group(bad)["error"]
    assert "bad" in sched.errors[str(bad)] or "unknown" in sched.errors[str(bad)]
    assert any("run scheduler" in r.message for r in caplog.records)
    assert runs.group_state(good) == "cancelled" and not (good / "add_4_seed1").exists()


@pytest.mark.slow
def test_cli_compare_parallel_and_runs_on_the_group(tmp_path):
    folder = write_folder(tmp_path / "data", n=24)
    run_dir = tmp_path / "cmp"
    r = cli("compare", "--cuts", "none,add_4", "--seeds", "1", "--parallel", "2",
            "--run-dir", run_dir, "--quiet", "--json", tmp_path / "c.json",
            *tiny_flags(dataset=f"folder:{folder}"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ResNet18 pruned at add_4" in r.stdout
    plan = runs.read_group(run_dir)
    assert plan["cuts"] == ["none", "add_4"] and plan["max_parallel"] == 2
    assert plan["state"] == "done"
    saved = json.loads((run_dir / "comparison.json").read_text())
    assert [row["states"] for row in saved["rows"]] == [["done"], ["done"]]
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == saved["rows"]
    # both ran at the same time: each started before the other ended
    st = [runs.read_run(run_dir / d).status for d in ("none_seed1001", "add_4_seed1001")]
    assert st[0]["started_at"] < st[1]["updated_at"] and st[1]["started_at"] < st[0]["updated_at"]
    r = cli("runs", run_dir, "--json", tmp_path / "runs.json")
    assert r.returncode == 0, r.stderr
    assert "group cmp: done, 2/2 runs ended, 0 waiting (2 at a time)" in r.stdout
    listed = json.loads((tmp_path / "runs.json").read_text())
    assert listed["groups"][0]["state"] == "done" and len(listed["runs"]) == 2
    r = cli("cancel", run_dir)
    assert r.returncode == 0 and "nothing to cancel" in r.stdout
    # run again: everything is reused
    t0 = time.monotonic()
    r = cli("compare", "--cuts", "none,add_4", "--seeds", "1", "--parallel", "2",
            "--run-dir", run_dir, "--quiet", *tiny_flags(dataset=f"folder:{folder}"))
    assert r.returncode == 0 and time.monotonic() - t0 < 60


@pytest.mark.slow
def test_cli_cancel_a_group(tmp_path):
    folder = write_folder(tmp_path / "data", n=24)
    cfg = dataclasses.replace(TINY, dataset=f"folder:{folder}", epochs=500, batch_size=4)
    sched = runs.Scheduler(tmp_path, env={"OMP_NUM_THREADS": "1"})
    group = sched.launch_group(cfg, [1, 2], baseline=False, max_parallel=1,
                               group=tmp_path / "grp")
    first = group / "add_4_seed1"
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and not runs.read_run(first).steps:
            sched.advance(group)
            time.sleep(0.5)
        assert runs.read_run(first).state == "running", (first / "train.log").read_text()
        assert not (group / "add_4_seed2").exists()      # one at a time
        r = cli("cancel", group, "--wait", "120")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "group cancelled" in r.stdout
        assert runs.read_run(first).state == "cancelled"
        assert sched.advance(group) == 0 and not (group / "add_4_seed2").exists()
        assert runs.group_state(group) == "cancelled"
    finally:
        for proc in sched.children.values():
            if proc.poll() is None:
                proc.kill()

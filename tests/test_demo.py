"""The transfer demo: the Predict page trains the demo model and tries it on held-out patches;
``demo transfer`` runs scan -> cut -> compare.

The demo's own settings (efficientnet_lite0 on demo-he) need the demo-he source, which tests never
download; these tests give the same code paths a tiny configuration (resnet18, random weights,
demo-histology), so the button, the run process, the held-out patches and the comparison are
all real.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from _data_fixtures import demo_he_into
from streamlit.testing.v1 import AppTest

import rcvcore.demo as demo
from rcvcore.train import TrainConfig

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TINY = TrainConfig(arch="resnet18", weights="random", cut="add_2", dataset="demo-histology",
                   target="magnification", n=36, epochs=1, batch_size=8, image_size=64,
                   device="cpu", log_every=1)


def test_demo_settings_are_the_documented_ones():
    cfg = demo.demo_model_config()
    assert (cfg.arch, cfg.weights, cfg.cut, cfg.dataset) == (
        "efficientnet_lite0", "imagenet", demo.DEMO_CUT, "demo-he")
    assert cfg.protocol == "recommended" and cfg.head_init == "rcv"
    assert cfg.target == "magnification"
    cfg.validate()      # the cut is a layer of efficientnet_lite0


@pytest.mark.slow
def test_demo_cut_is_what_a_scan_without_the_demo_models_test_data_gives(tmp_path, monkeypatch):
    """DEMO_CUT is derived, not picked: a scan of demo-he that saw none of the demo model's test
    source images (nothing significant there: the fallback rule, said so)."""
    demo_he_into(tmp_path / "cache")                       # the real source, private cache
    monkeypatch.setenv("RCV_CACHE_DIR", str(tmp_path / "cache"))
    # as a user checks it: `python -m rcvcore demo cut --json FILE` (exit 1 if it differed)
    from rcvcore.cli import main

    assert main(["demo", "cut", "--quiet", "--json", str(tmp_path / "cut.json")]) == 0
    info = json.loads((tmp_path / "cut.json").read_text())
    assert info["cut"] == info["demo_cut"] == demo.DEMO_CUT, info["how"]
    # the demo model's own test source images were left out of the scan that chose it
    cfg = demo.demo_model_config()
    held = demo.comparison_test_groups(cfg, [cfg.seed], replicate="seed")
    assert info["excluded_groups"] == len(held) > 0 and info["excluded"] > 0
    # measured: no layer significant; the rule says so instead of a silent pick
    assert info["rule"] == demo.FALLBACK_RULE and "not significant" in info["how"]
    assert info["cut"] == max((k for k in info["scan"] if k not in ("pre_softmax", "softmax",
                                                                       "head")),
                              key=info["scan"].get)


def test_predict_page_trains_the_demo_model_and_tries_held_out_patches(tmp_path, monkeypatch):
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(demo, "demo_model_config", lambda **over: TINY)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("pages/predict.py").run()
    assert not at.exception, at.exception
    assert any("No finished training run" in i.value for i in at.info)
    # the page says how the demo's cut was chosen
    assert any("none of the model's test patches" in c.value and "untested-peak" in c.value
               for c in at.caption)
    button = next(b for b in at.button if b.key == "demo_train")
    assert button.label == "Train the demo model"
    button.click()
    at.run()
    assert not at.exception, at.exception
    run = tmp_path / "runs" / demo.DEMO_MODEL_DIR
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(2)
        at.run()   # AppTest does not tick st.fragment(run_every=...)
        assert not at.exception, at.exception
        if any(b.key == "demo_try" for b in at.button):
            break
    log = (run / "train.log").read_text()[-2000:] if (run / "train.log").exists() else ""
    assert any(b.key == "demo_try" for b in at.button), log
    # the page says which run and how good it was on its test split
    assert any(str(run) in c.value and "test patches" in c.value for c in at.caption)
    # this run (the tiny stand-in) was cut elsewhere than the demo's cut: said so
    assert any("trained cut at `add_2`" in c.value and demo.DEMO_CUT in c.value
               for c in at.caption)
    next(b for b in at.button if b.key == "demo_try").click()
    at.run(timeout=60)
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    held = demo.held_out_patches(run, 8)
    assert len(table) == len(held) > 0
    assert {h.label for h in held} == _test_classes(run)   # spread over the classes
    # every card shows the prediction against the truth
    mags = [m for m in at.metric if m.label == "Magnification"]
    assert len(mags) == len(held) and all(m.delta for m in mags)


def _test_classes(run) -> set:
    """The classes present in the run's test split."""
    res = json.loads((Path(run) / "result.json").read_text())
    return {p["label"] for p in res["test_predictions"]}


def test_held_out_patches_are_the_test_split_spread_over_classes(tmp_path):
    from rcvcore.train import train

    res = train(dataclasses.replace(TINY, epochs=0), tmp_path / "run", handle_signals=False)
    preds = res.result["test_predictions"]
    held = demo.held_out_patches(tmp_path / "run", 4)
    assert {h.path for h in held} <= {p["path"] for p in preds}
    labels = [h.label for h in held]
    n_classes = len({p["label"] for p in preds})
    assert len(set(labels[:n_classes])) == min(n_classes, 4)   # one of each class first


@pytest.mark.slow
def _tiny_demo(monkeypatch) -> list:
    """The transfer demo on a tiny network and data; its scans are real, on a small
    configuration, and recorded (the returned list gets each scan's configuration)."""
    monkeypatch.setattr(demo, "DEMO_ARCH", "resnet18")
    monkeypatch.setattr(demo, "DEMO_DATASET", "demo-histology")
    real_scan = demo.run_scan
    scanned = []
    monkeypatch.setattr(demo, "run_scan", lambda cfg, progress=None: scanned.append(cfg) or
                        real_scan(dataclasses.replace(cfg, weights="random", n=36,
                                                      layers="paper", repeats=3,
                                                      permutations=20), progress))
    return scanned


def test_cli_demo_transfer_scans_cuts_and_compares(tmp_path, monkeypatch):
    """``demo transfer`` with a tiny network: the scan picks the cut, both networks train on
    the same splits over 2 seeds, Table 2 with its paired tests and the paper's numbers."""
    scanned = _tiny_demo(monkeypatch)
    comp, info = demo.transfer_demo(tmp_path / "runs", seeds=2, weights="random", n=36,
                                    epochs=1, image_size=64, device="cpu", batch_size=8)
    assert info["cut"] in {"add_1", "add_2", "add_3", "add_4", "add_5", "add_6", "add_7",
                           "add_8"}
    assert info["how"]
    assert [r["cut"] for r in comp.rows] == ["none", info["cut"]]
    assert all(s == "done" for r in comp.rows for s in r["states"])
    assert comp.tests and "paper:" in comp.table()
    # no test data in the choice: the scan left out exactly the groups (source images) of the
    # test patches of every run, read back from the runs' own folders and data
    import json

    from rcvcore.data import load_dataset
    from rcvcore.exclusion import read_exclusions

    group_of = {}
    for cfg_file in (tmp_path / "runs" / "demo-transfer").glob("*/config.json"):
        cfg = json.loads(cfg_file.read_text())
        ds = load_dataset(cfg["dataset"], n=cfg["n"], seed=cfg["split_seed"],
                          **cfg.get("dataset_options", {}))
        group_of.update(zip(ds.paths, map(str, ds.groups)))
    tested = read_exclusions(str(tmp_path / "runs" / "demo-transfer"))
    assert len(tested) > 0 and scanned[0].exclude == ()
    assert set(scanned[0].exclude_groups) == {group_of[p] for p in tested}
    # (demo-histology draws other source images for every seed: none of them is in the scan)
    assert info["excluded_groups"] == len(scanned[0].exclude_groups)


def test_demo_transfer_per_replicate_scans_each_without_only_its_own_test_split(tmp_path,
                                                                               monkeypatch):
    """``--cut-choice per-replicate`` (nested): one scan per replicate, each without exactly
    that replicate's test groups, each replicate cut where its own scan says; Table 2's second
    row is the procedure (its runs' cuts recorded per seed)."""
    import json

    from rcvcore.data import load_dataset

    scanned = _tiny_demo(monkeypatch)
    comp, info = demo.transfer_demo(tmp_path / "runs", seeds=[3, 4], weights="random", n=36,
                                    epochs=1, image_size=64, device="cpu", batch_size=8,
                                    cut_choice="per-replicate")
    assert len(scanned) == 2 and info["cut"] == demo.PER_REPLICATE_ROW
    assert [r["cut"] for r in comp.rows] == ["none", demo.PER_REPLICATE_ROW]
    row = comp.rows[1]
    assert row["cut_by_seed"] == [info["per_seed"][s]["cut"] for s in (3, 4)]
    assert "each replicate's own cut" in row["label"] and comp.tests
    # which layer each replicate was cut at is said under the table and in the dashboard's
    assert row["cuts_note"] in comp.table() and row["cuts_note"] in comp.view()["caption"]
    assert all(s == "done" for r in comp.rows for s in r["states"])
    folder = tmp_path / "runs" / "demo-transfer"
    for scan_cfg, seed in zip(scanned, (3, 4)):
        cfg = json.loads((folder / f"{demo.PER_REPLICATE_ROW}_seed{seed}" / "config.json")
                         .read_text())
        assert cfg["cut"] == info["per_seed"][seed]["cut"] and cfg["split_seed"] == seed
        # that scan left out exactly this replicate's test groups
        res = json.loads((folder / f"{demo.PER_REPLICATE_ROW}_seed{seed}" / "result.json")
                         .read_text())
        ds = load_dataset(cfg["dataset"], n=cfg["n"], seed=cfg["split_seed"],
                          **cfg.get("dataset_options", {}))
        group_of = dict(zip(ds.paths, map(str, ds.groups)))
        tested = {group_of[p["path"]] for p in res["test_predictions"]}
        assert set(scan_cfg.exclude_groups) == tested
    # saved and read back with the per-seed cuts
    again = json.loads((folder / "comparison.json").read_text())
    assert again["rows"][1]["cut_by_seed"] == row["cut_by_seed"]
    with pytest.raises(Exception, match="cut-choice"):
        demo.transfer_demo(tmp_path / "runs2", seeds=2, cut_choice="nested")


def test_cut_of_is_checked_and_kept_in_a_group_plan(tmp_path):
    from rcvcore.errors import UserError
    from rcvcore.evidence import actual_cut, check_cut_of
    from rcvcore.runs.groups import plan_group, read_group

    assert actual_cut("add_2", 5) == "add_2"
    assert actual_cut("scan-cut", 5, {"scan-cut": {"5": "add_3"}}) == "add_3"
    assert actual_cut("scan-cut", 5, {"scan-cut": {5: "add_3"}}) == "add_3"
    with pytest.raises(UserError, match="no layer for seed"):
        check_cut_of(TINY, ["none", "scan-cut"], [1, 2], {"scan-cut": {1: "add_3"}})
    with pytest.raises(UserError, match="not one of the compared cuts"):
        check_cut_of(TINY, ["none"], [1], {"scan-cut": {1: "add_3"}})
    plan_group(tmp_path / "g", TINY, ["none", "scan-cut"], [1, 2],
               cut_of={"scan-cut": {1: "add_3", 2: "add_5"}})
    plan = read_group(tmp_path / "g")
    assert [actual_cut("scan-cut", s, plan["cut_of"]) for s in plan["seeds"]] == ["add_3",
                                                                                 "add_5"]
    with pytest.raises(UserError):       # a layer the network does not have
        plan_group(tmp_path / "h", TINY, ["none", "scan-cut"], [1],
                   cut_of={"scan-cut": {1: "nope"}})


def test_a_comparison_refuses_a_run_folder_cut_at_another_layer(tmp_path):
    """A row cut per replicate names its folders by the row: a rerun whose scan chose another
    layer must not reuse the old run as if it were this one."""
    from types import SimpleNamespace

    from rcvcore.compare import _check_same_split
    from rcvcore.errors import UserError

    cfg = dataclasses.replace(TINY, cut="add_5")
    _check_same_split(SimpleNamespace(config=cfg.to_dict()), cfg, tmp_path)     # same: fine
    with pytest.raises(UserError, match="was cut at add_3.*at add_5"):
        _check_same_split(SimpleNamespace(config={**cfg.to_dict(), "cut": "add_3"}), cfg,
                          tmp_path / "scan-cut_seed1")

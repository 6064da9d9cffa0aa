"""AppTest tests of the Train page: launching tiny runs in subprocesses, polling, results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import widget as _w
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def _open_train(at):
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    return at


def _fill_tiny(at, *, seeds="1", baseline=True):
    _w(at, "selectbox", "train_arch").set_value("resnet18")
    at.run()
    _w(at, "selectbox", "train_cut_resnet18").set_value("add_6")
    _w(at, "radio", "train_weights_resnet18").set_value("random (control)")
    _w(at, "number_input", "train_epochs").set_value(1)
    _w(at, "number_input", "train_batch").set_value(8)
    _w(at, "number_input", "train_n").set_value(24)
    _w(at, "number_input", "train_image_size").set_value(64)
    _w(at, "text_input", "train_seeds").set_value(seeds)
    _w(at, "checkbox", "train_baseline").set_value(baseline)
    _w(at, "number_input", "train_parallel").set_value(2)
    _w(at, "selectbox", "train_device").set_value("cpu")
    at.run()


def test_train_page_widgets_and_offline_notice(app_env):
    at = _open_train(AppTest.from_file(MAIN, default_timeout=30))
    assert at.title[0].value.startswith("Fine-tune")
    # opens on the network whose ImageNet weights ship with the install
    assert _w(at, "selectbox", "train_arch").value == "efficientnet_lite0"
    assert _w(at, "radio", "train_weights_efficientnet_lite0").value == "imagenet"
    assert any("No training run yet" in i.value for i in at.info)
    _w(at, "selectbox", "train_arch").set_value("resnet50")
    at.run()
    assert _w(at, "radio", "train_weights_resnet50").value == "random (control)"
    _w(at, "radio", "train_weights_resnet50").set_value("imagenet")
    at.run()
    assert any("not on this machine" in e.value for e in at.error)
    assert _w(at, "button", "train_launch").disabled
    _w(at, "radio", "train_weights_resnet50").set_value("random (control)")
    _w(at, "text_input", "train_seeds").set_value("1, x")
    at.run()
    assert any("Seeds must be integers" in e.value for e in at.error)


def test_train_tiny_runs_to_table2(app_env):
    at = _open_train(AppTest.from_file(MAIN, default_timeout=30))
    _fill_tiny(at)
    # a loader option (the default value, so the cached demo patches are reused)
    _w(at, "text_input", "train_ds_opts_demo-histology").set_value("max_per_level=4")
    at.run()
    assert _w(at, "button", "train_launch").label == "Launch 2 runs"
    _w(at, "button", "train_launch").click()
    at.run()
    assert not at.exception, at.exception
    groups = [d for d in (app_env / "runs").iterdir() if not d.name.startswith("_")]
    assert len(groups) == 1
    plan = json.loads((groups[0] / "group.json").read_text())
    assert plan["cuts"] == ["none", "add_6"] and plan["seeds"] == [1]
    assert plan["base"]["dataset_options"]["max_per_level"] == 4
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(2)
        at.run()  # AppTest does not tick st.fragment(run_every=...): poll by rerunning
        assert not at.exception, at.exception
        states = list(at.dataframe[0].value["state"])
        if states and all(s in ("done", "failed", "cancelled") for s in states):
            break
    assert states == ["done", "done"], (states, [e.value for e in at.error],
                                        [(g / "train.log").read_text()[-2000:]
                                         for g in groups[0].iterdir() if g.is_dir()])
    assert at.get("plotly_chart")  # loss curves
    assert any(s.value.startswith("Pruned vs full") for s in at.subheader)
    tables = [list(d.value["Model"]) for d in at.dataframe if "Model" in d.value]
    assert ["ResNet18", "ResNet18 pruned at add_6"] in tables          # measured
    assert ["add_6 - none"] in tables               # paired differences (cut - full)
    paper = next(t for t in tables if t and t[0].endswith("(paper)"))   # labelled as the paper's
    assert paper == ["InceptionV3 (paper)", "InceptionV3 pruned at mixed8 (paper)",
                     "ResNet50 (paper)", "ResNet50 pruned at add_15 (paper)"]
    assert any("not these runs" in m.value for m in at.markdown)
    cfg = json.loads((groups[0] / "add_6_seed1" / "config.json").read_text())
    assert cfg["dataset_options"] == {"max_per_level": 4, "split_seed": 1}  # launch argv; the
    # replicate's own group split (--replicate split: split seed = the seed)
    # the finished group has the same comparison.json as `python -m rcvcore compare`, written
    # by the group's completion in the server's scheduler (never while a page renders)
    deadline = time.time() + 30
    while not (groups[0] / "comparison.json").is_file() and time.time() < deadline:
        time.sleep(0.5)
    comp = json.loads((groups[0] / "comparison.json").read_text())
    assert json.loads((groups[0] / "group.json").read_text())["state"] == "done"
    assert comp["cuts"] == ["none", "add_6"] and comp["seeds"] == [1]
    assert [r["states"] for r in comp["rows"]] == [["done"], ["done"]]
    assert comp["table"].splitlines()[0].startswith("Model")


def test_cut_from_scan_page_prefills_train_form(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.session_state["rcv_cut"] = {"arch": "resnet18", "weights": "random", "layer": "add_4",
                                   "dataset": "demo-scale", "scan_id": "x"}
    _open_train(at)
    assert _w(at, "selectbox", "train_arch").value == "resnet18"
    assert _w(at, "selectbox", "train_cut_resnet18").value == "add_4"
    assert _w(at, "radio", "train_weights_resnet18").value == "random (control)"
    assert any("From the Scan page" in s.value for s in at.success)


def test_a_comparison_of_the_full_network_with_itself_is_refused(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30)
    # a cut at efficientnet_lite0's last feature layer ("head") is the full network
    at.session_state["rcv_cut"] = {"arch": "efficientnet_lite0", "weights": "random",
                                   "layer": "head", "dataset": "demo-scale", "scan_id": "x"}
    _open_train(at)
    assert any("equals the full network" in e.value for e in at.error)
    cut = _w(at, "selectbox", "train_cut_efficientnet_lite0")
    assert "head" not in cut.options and cut.value != "head"
    # 'none' beside the baseline: the full network twice
    cut.set_value("none")
    _w(at, "checkbox", "train_baseline").set_value(True)
    at.run()
    assert any("the same as the baseline" in e.value for e in at.error)
    assert _w(at, "button", "train_launch").disabled
    _w(at, "checkbox", "train_baseline").set_value(False)   # the full network alone is fine
    at.run()
    assert not any("the same as the baseline" in e.value for e in at.error)
    assert not _w(at, "button", "train_launch").disabled


def test_train_cancel_and_reload_survival(app_env):
    at = _open_train(AppTest.from_file(MAIN, default_timeout=30))
    _fill_tiny(at, baseline=False)
    _w(at, "number_input", "train_epochs").set_value(100)
    at.run()
    assert at.expander[0].proto.expanded     # nothing to watch yet: the form is open
    _w(at, "button", "train_launch").click()
    at.run()
    # launch -> watch: the new group is selected, the form folded, the monitor below it
    group = next(d for d in (app_env / "runs").iterdir() if not d.name.startswith("_"))
    assert at.session_state["train_group_select"] == group.name
    assert not at.expander[0].proto.expanded
    deadline = time.time() + 180
    while time.time() < deadline:
        time.sleep(1)
        at.run()
        if list(at.dataframe[0].value["state"]) == ["running"]:
            break
    assert list(at.dataframe[0].value["state"]) == ["running"]
    assert at.dataframe[0].value["progress"][0].startswith("epoch 1/100")
    # a new session (a page reload) finds the run still going
    at2 = _open_train(AppTest.from_file(MAIN, default_timeout=30))
    assert list(at2.dataframe[0].value["state"]) == ["running"]
    next(b for b in at2.button if b.key.startswith("cancel_group_")).click()
    at2.run()
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(1)
        at2.run()
        if list(at2.dataframe[0].value["state"]) != ["running"]:
            break
    assert list(at2.dataframe[0].value["state"]) == ["cancelled"]
    assert not any(b.key.startswith("cancel_group_") for b in at2.button)
    # the progress agrees with the state (no "epoch 0/100" beside "cancelled at epoch 1")
    assert at2.dataframe[0].value["progress"][0].startswith("stopped after 0/100 epochs")
    # per-run Resume continues it from its checkpoint; per-run Cancel stops it again
    _w(at2, "button", "resume_run_add_6_seed1").click()
    at2.run()
    deadline = time.time() + 120
    while time.time() < deadline and list(at2.dataframe[0].value["state"]) != ["running"]:
        time.sleep(1)
        at2.run()
    assert list(at2.dataframe[0].value["state"]) == ["running"]
    _w(at2, "button", "cancel_run_add_6_seed1").click()
    at2.run()
    deadline = time.time() + 120
    while time.time() < deadline and list(at2.dataframe[0].value["state"]) != ["cancelled"]:
        time.sleep(1)
        at2.run()
    assert list(at2.dataframe[0].value["state"]) == ["cancelled"]

"""AppTest tests of the Scan page: widgets, a scan on a tiny config, the cut, the downloads."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from conftest import widget as _widget  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def _curves(at) -> list[dict]:
    """The plotly charts on the page that draw data (the empty R² chart before a scan has none)."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [sp for sp in specs if sp.get("data")]


def _tiny_scan(at):
    _widget(at, "selectbox", "scan_arch").set_value("resnet18")
    at.run()
    _widget(at, "radio", "scan_weights_resnet18").set_value("random (control)")
    _widget(at, "radio", "scan_layer_mode").set_value("choose")
    at.run()
    _widget(at, "multiselect", "scan_layers_resnet18").set_value(["add_2", "add_4", "add_6",
                                                                  "add_8"])
    return _small_scan_run(at)


def _small_scan_run(at):
    """24 images, 2 repeats, the grouped protocol; press Run and wait for the chart."""
    _widget(at, "number_input", "scan_n").set_value(24)
    _widget(at, "slider", "scan_repeats").set_value(2)
    # 24 crops are too few for the default per-photograph classes: the grouped protocol
    _widget(at, "text_input", "scan_ds_opts_demo-scale").set_value("protocol=across-photos")
    at.run()
    _widget(at, "button", "scan_run").click()
    at.run(timeout=60)
    deadline = time.time() + 120
    while not _curves(at) and time.time() < deadline:
        assert not at.exception, at.exception
        time.sleep(0.5)
        at.run(timeout=30)  # AppTest does not tick st.fragment(run_every=...): poll by rerun
    assert not at.exception, at.exception
    assert _curves(at), [e.value for e in at.error]
    return at


def test_first_run_opens_on_a_pretrained_network_that_needs_no_download(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value.startswith("Scale-covariance scan")
    assert _widget(at, "selectbox", "scan_arch").value == "efficientnet_lite0"
    assert _widget(at, "radio", "scan_weights_efficientnet_lite0").value == "imagenet"
    assert not at.warning and not at.error          # no offline notice: its weights are here
    assert not _widget(at, "button", "scan_run").disabled
    names = _widget(at, "selectbox", "scan_arch").options
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    _widget(at, "selectbox", "scan_arch").set_value("efficientnet_lite2")
    at.run()                                        # Lite2's packaged weights: offline too
    assert _widget(at, "radio", "scan_weights_efficientnet_lite2").value == "imagenet"
    assert not at.warning and not at.error and not _widget(at, "button", "scan_run").disabled


def test_offline_notice_only_for_a_network_whose_weights_are_missing(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_arch").set_value("resnet50")
    at.run()
    weights = _widget(at, "radio", "scan_weights_resnet50")
    assert weights.value == "random (control)"
    assert any("Offline mode: no ImageNet weights for resnet50" in w.value for w in at.warning)
    _widget(at, "radio", "scan_weights_resnet50").set_value("imagenet")
    at.run()
    msg = " ".join(e.value for e in at.error)
    assert "ImageNet weights for **resnet50** are not on this machine" in msg
    assert "resnet50-" in msg  # names the file torchvision expects
    assert "efficientnet_lite0" in msg  # and the network that works offline
    assert _widget(at, "button", "scan_run").disabled
    assert any("No scan yet" in i.value for i in at.info)


def test_no_scan_yet_draws_the_empty_chart_of_the_layers_to_probe(app_env):
    """Before any scan the page draws the R² chart's axes (so the browser loads plotly with
    the page, not after the first scan): the chosen network's probe layers, no data."""
    from rcvcore.models import get_arch

    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_arch").set_value("resnet18")
    at.run()
    assert any("No scan yet" in i.value for i in at.info)
    (spec,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert not spec.get("data") and not _curves(at)
    assert spec["layout"]["xaxis"]["categoryarray"] == list(get_arch("resnet18").layer_names)
    _widget(at, "radio", "scan_layer_mode").set_value("choose")
    at.run()
    _widget(at, "multiselect", "scan_layers_resnet18").set_value(["add_2", "add_6"])
    at.run()
    (spec,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert spec["layout"]["xaxis"]["categoryarray"] == ["add_2", "add_6"]


def test_cancel_stops_a_running_scan(app_env):
    """The Cancel button (outside the polled progress bar) stops the scan at its next step:
    the page says so and nothing is saved."""
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_arch").set_value("resnet18")
    at.run()
    _widget(at, "radio", "scan_weights_resnet18").set_value("random (control)")
    at.run()
    _widget(at, "number_input", "scan_seed").set_value(7)
    _widget(at, "button", "scan_run").click()   # all 320 demo images: long enough to cancel
    at.run(timeout=60)
    # a reload (a new session of the same user) shows the running scan's settings, not the
    # defaults, and its progress names the pass
    again = AppTest.from_file(MAIN, default_timeout=30).run()
    assert _widget(again, "selectbox", "scan_arch").value == "resnet18"
    assert _widget(again, "radio", "scan_weights_resnet18").value == "random (control)"
    assert _widget(again, "number_input", "scan_seed").value == 7
    cancel = [b for b in at.button if b.key == "scan_cancel"]
    assert cancel, "no Cancel button while the scan runs"
    cancel[0].click()
    at.run(timeout=30)
    deadline = time.time() + 120
    while "scan_job" in at.session_state and time.time() < deadline:
        time.sleep(0.3)
        at.run(timeout=30)
    assert any(e.value == "Scan cancelled." for e in at.error), [e.value for e in at.error]
    assert not any(b.key == "scan_cancel" for b in at.button)
    assert not list((app_env / "runs" / "_scans").glob("*.json"))
    assert not _curves(at)


def test_scan_tiny_config_draws_chart_table_and_cut(app_env):
    at = _tiny_scan(AppTest.from_file(MAIN, default_timeout=30).run())
    table = at.dataframe[0].value
    assert list(table["layer"]) == ["add_2", "add_4", "add_6", "add_8"]
    assert {"R² mean", "R² std", "shuffled labels R²", "random weights R²"} <= set(table.columns)
    assert {"p vs shuffled (BH)", "p vs random weights (BH)", "significant"} <= set(table.columns)
    # a random network against a random-weights control: no layer is significantly above it,
    # so rcvcore suggests no cut, the page says why and preselects nothing for the Train page
    rec = json.loads(next((app_env / "runs" / "_scans").glob("*.json")).read_text())
    assert rec["result"]["suggested_cut"] is None
    assert any("No suggested cut" in w.value for w in at.warning)
    cut = next(w for w in at.selectbox if w.key.startswith("scan_cut_"))
    assert cut.value is None
    # nothing sized for no cut: no "trunk up to None", no "+0 % vs full"
    assert not at.metric and not any("None" in c.value for c in at.caption)
    # advice in the page's own terms, not CLI flags
    assert not any("--n" in t.value or "--no-per-class" in t.value
                   for t in [*at.warning, *at.caption])
    assert at.session_state["rcv_cut"]["layer"] is None
    cut.set_value("add_4")
    at.run()
    assert at.session_state["rcv_cut"]["layer"] == "add_4"
    assert at.session_state["rcv_cut"]["arch"] == "resnet18"
    assert any("Parameters (pruned)" in m.label for m in at.metric)
    # the result is saved on disk (survives a reload) and downloadable
    saved = list((app_env / "runs" / "_scans").glob("*.json"))
    assert len(saved) == 1
    rec = json.loads(saved[0].read_text())
    assert rec["result"]["arch"] == "resnet18"
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"CSV", "JSON", "Chart (HTML)"} <= labels, labels
    # the chosen cut is kept with the scan, and the page's URL names it (a shareable link)
    assert rec["chosen_cut"]["layer"] == "add_4" and rec["chosen_cut"]["source"] == "clicked"
    assert at.query_params["scan"] == saved[0].stem and at.query_params["cut"] == "add_4"
    # the Train page in a new tab (a new session) offers that scan's cut, network and dataset
    tab = AppTest.from_file(MAIN, default_timeout=30)
    tab.switch_page("pages/train.py").run()
    assert not tab.exception, tab.exception
    assert _widget(tab, "selectbox", "train_arch").value == "resnet18"
    assert _widget(tab, "selectbox", "train_cut_resnet18").value == "add_4"
    assert _widget(tab, "selectbox", "train_dataset").value == "demo-scale"
    assert _widget(tab, "text_input", "train_ds_opts_demo-scale").value == \
        "protocol=across-photos"
    note = next(s.value for s in tab.success if "From the Scan page" in s.value)
    assert "saved with its scan" in note and saved[0].stem[:6] in note
    # the scan saw every image of demo-scale, the comparison's test tiles too (issue 22)
    assert any("chosen with test data" in w.value and "--exclude" in w.value
               for w in tab.warning)
    assert tab.query_params["scan"] == saved[0].stem
    # the shared link (?scan=&cut=) opens the Train page on that cut in any session
    link = AppTest.from_file(MAIN, default_timeout=30)
    link.query_params["scan"], link.query_params["cut"] = saved[0].stem, "add_6"
    link.switch_page("pages/train.py").run()
    assert _widget(link, "selectbox", "train_cut_resnet18").value == "add_6"
    assert any("this page's link" in s.value for s in link.success)


def test_scan_rerun_is_cached_and_overlay_and_paper_convention(app_env):
    at = _tiny_scan(AppTest.from_file(MAIN, default_timeout=30).run())
    scans = app_env / "runs" / "_scans"
    first = next(scans.glob("*.json"))
    # the same scan again: rcvcore returns the scores it saved, nothing is recomputed
    _widget(at, "button", "scan_run").click()
    at.run(timeout=30)
    deadline = time.time() + 60
    while "scan_job" in at.session_state and time.time() < deadline:
        time.sleep(0.3)
        at.run()
    assert any("nothing recomputed" in t.value for t in at.toast)
    assert json.loads(first.read_text())["result"]["cache"]["result"] == "hit"
    assert len(list(scans.glob("*.json"))) == 1
    # other repeats: every activation from the cache (0 misses), the R² refitted
    _widget(at, "slider", "scan_repeats").set_value(3)
    at.run()
    _widget(at, "button", "scan_run").click()
    t0 = time.perf_counter()
    at.run(timeout=30)
    while len(list(scans.glob("*.json"))) < 2 and time.perf_counter() - t0 < 60:
        time.sleep(0.3)
        at.run()
    new = [f for f in scans.glob("*.json") if f != first]
    rec = json.loads(new[0].read_text())
    assert rec["result"]["cache"]["result"] == "miss"
    assert len(rec["result"]["layers"][0]["r2"]) == 3
    assert rec["result"]["cache"]["misses"] == 0 and rec["result"]["cache"]["hits"] > 0
    at.run()
    assert any("0 misses" in c.value for c in at.caption)
    _widget(at, "radio", "scan_convention").set_value("paper: ln(mean(exp R²))")
    _widget(at, "toggle", "scan_depth").set_value(True)
    at.run()
    assert not at.exception
    assert _curves(at)


def test_bad_dataset_path_shows_error_not_traceback(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_dataset").set_value("folder")
    at.run()
    assert _widget(at, "button", "scan_run").disabled  # no path yet
    _widget(at, "text_input", "scan_ds_path_folder").set_value(str(app_env / "nope"))
    _widget(at, "selectbox", "scan_arch").set_value("resnet18")
    at.run()
    _widget(at, "radio", "scan_weights_resnet18").set_value("random (control)")
    at.run()
    _widget(at, "button", "scan_run").click()
    at.run(timeout=30)
    deadline = time.time() + 30
    while not at.error and time.time() < deadline:
        time.sleep(0.3)
        at.run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error), [e.value for e in at.error]


def test_new_scan_is_shown_and_can_be_overlaid(app_env):
    at = _tiny_scan(AppTest.from_file(MAIN, default_timeout=30).run())
    _widget(at, "radio", "scan_model").set_value("ols")
    at.run()
    _widget(at, "button", "scan_run").click()
    at.run(timeout=30)
    scans = app_env / "runs" / "_scans"
    deadline = time.time() + 60
    while len(list(scans.glob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.3)
        at.run()
    at.run()
    shown = _widget(at, "selectbox", "scan_primary")
    assert "· ols ·" in shown.format_func(shown.value)
    overlay = _widget(at, "multiselect", "scan_overlay")
    assert len(overlay.options) == 1
    other = next(p.stem for p in scans.glob("*.json") if p.stem != shown.value)
    overlay.set_value([other])
    at.run()
    assert not at.exception, at.exception
    assert _widget(at, "toggle", "scan_depth").value is False  # same arch: layer names on x
    assert _curves(at)


def test_dataset_options_and_optional_source_reach_rcvcore(app_env):
    """demo-he with a source file the test writes and loader options typed in the page."""
    from PIL import Image

    from rcvcore.data.demo_histology import render_tile

    img = app_env / "region.png"
    Image.fromarray(render_tile(3, 0, 896)[0]).save(img)
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not _widget(at, "text_input", "scan_ds_opts_demo-scale").disabled  # protocol
    _widget(at, "selectbox", "scan_arch").set_value("resnet18")
    _widget(at, "selectbox", "scan_dataset").set_value("demo-he")
    at.run()
    _widget(at, "radio", "scan_weights_resnet18").set_value("random (control)")
    _widget(at, "text_input", "scan_ds_path_demo-he").set_value(str(img))
    _widget(at, "text_input", "scan_ds_opts_demo-he").set_value("tile_size")  # no '='
    at.run()
    assert any("KEY=VALUE" in e.value for e in at.error)
    assert _widget(at, "button", "scan_run").disabled
    _widget(at, "text_input", "scan_ds_opts_demo-he").set_value(
        "tile_size=448; magnifications=20; min_tissue=0; patch_size=224")
    _widget(at, "radio", "scan_layer_mode").set_value("choose")
    at.run()
    _widget(at, "multiselect", "scan_layers_resnet18").set_value(["add_2"])
    _widget(at, "slider", "scan_repeats").set_value(2)
    at.run()
    assert not at.error
    _widget(at, "button", "scan_run").click()
    at.run(timeout=60)
    deadline = time.time() + 120
    while not _curves(at) and not at.error and time.time() < deadline:
        assert not at.exception, at.exception
        time.sleep(0.5)
        at.run(timeout=30)
    assert _curves(at), [e.value for e in at.error]
    rec = json.loads(next((app_env / "runs" / "_scans").glob("*.json")).read_text())
    assert rec["config"]["dataset"] == f"demo-he:{img}"
    assert rec["config"]["dataset_options"]["tile_size"] == 448
    assert rec["result"]["n_images"] == 16   # 4 tiles x 4 patches at 20x
    # the cut chosen here reaches the Train page of this tab with the scan's loader options
    cut_box = next(w for w in at.selectbox if str(w.key).startswith("scan_cut_"))
    cut_box.set_value("add_2")
    at.run()
    tab_cut = at.session_state["rcv_cut"]
    assert tab_cut["layer"] == "add_2" and tab_cut["source"] == "tab"
    assert tab_cut["dataset"] == f"demo-he:{img}"
    assert tab_cut["dataset_options"] == rec["config"]["dataset_options"]


def test_scoring_choice_reaches_rcvcore(app_env):
    """The Scan page's scoring switch (dataset default / per class / pooled) and grouped
    splits map onto the CLI's --per-class / --no-per-class / --ungrouped."""
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert _widget(at, "radio", "scan_scoring").value == "dataset default"
    _widget(at, "radio", "scan_scoring").set_value("pooled")
    _widget(at, "checkbox", "scan_grouped").set_value(False)
    at = _tiny_scan(at)
    rec = json.loads(next((app_env / "runs" / "_scans").glob("*.json")).read_text())
    assert rec["result"]["config"]["per_class"] is False
    assert rec["result"]["config"]["grouped"] is False
    assert rec["result"]["scoring"]["grouped"] is False


def test_train_page_is_not_prefilled_without_a_suggestion(app_env):
    at = AppTest.from_file(str(Path(MAIN).parent / "pages" / "train.py"), default_timeout=30)
    at.session_state["rcv_cut"] = {"arch": "resnet18", "weights": "random", "layer": None,
                                   "dataset": "demo-scale", "scan_id": "x", "suggested": None,
                                   "reason": "No suggested cut: no layer is significant."}
    at.run()
    assert not at.exception, at.exception
    assert any("Not prefilled from the Scan page" in i.value for i in at.info)
    assert not any("From the Scan page" in s.value for s in at.success)


def test_a_timm_name_that_cannot_be_probed_leaves_the_page_usable(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_arch").set_value("other timm model...")
    at.run()
    _widget(at, "text_input", "scan_timm_name").set_value("timm:no_such_network_xyz")
    at.run()
    assert not at.exception, at.exception
    assert any("cannot be scanned" in e.value for e in at.error)
    # the rest of the page still draws (on the default network) and a scan can start
    assert not _widget(at, "button", "scan_run").disabled
    assert any("No scan yet" in i.value for i in at.info)


def test_the_loading_note_goes_once_the_page_has_drawn(app_env):
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not any("Loading" in c.value for c in at.caption)


def test_legend_names_keep_only_what_tells_the_scans_apart():
    from app.services import legend_labels
    from rcvcore.scan import ScanConfig, ScanResult

    def rec(arch, n, model="ridge"):
        return ScanResult(config=ScanConfig(arch=arch, weights="random", dataset="demo-scale",
                                            model=model),
                          dataset="demo-scale", measure_name="scale", n_images=n, skipped=(),
                          layers=(), controls={}, depth={})

    assert legend_labels([rec("resnet18", 24)]) == ["resnet18"]
    assert legend_labels([rec("resnet18", 24), rec("resnet50", 24)]) == ["resnet18", "resnet50"]
    assert legend_labels([rec("resnet18", 24), rec("resnet18", 48, "ols")]) == \
        ["n=24 · ridge", "n=48 · ols"]
    assert legend_labels([rec("resnet18", 24), rec("resnet18", 24)]) == \
        ["resnet18 #1", "resnet18 #2"]


def test_advice_is_said_with_the_pages_controls():
    from app.services import page_terms

    text = page_terms("use --n 200 or `--no-per-class`; --per-class fits each class; "
                      "--opt group_by=patient")
    assert "--" not in text
    assert "*Images* (Options) 200" in text and "*Scoring: pooled* (Options);" in text
    assert "*Scoring: per class*" in text and "*Dataset options* group_by=patient" in text


def test_a_saved_scan_loads_as_its_result_and_keeps_its_chosen_cut(app_env):
    """A scan saved by the dashboard (``_scans/<id>.json``, with the ``chosen_cut`` the Scan
    page adds) reads back as the same ScanResult; choosing a cut rewrites only ``chosen_cut``."""
    from app import services, state
    from rcvcore.rcv import LayerScore
    from rcvcore.scan import ScanConfig, ScanResult

    names = ("add_2", "add_4", "pre_softmax")
    result = ScanResult(
        config=ScanConfig(arch="resnet18", weights="random", dataset="demo-scale", repeats=2),
        dataset="demo-scale", measure_name="scale", n_images=24, skipped=(),
        layers=tuple(LayerScore(n, 64, (m - 0.05, m + 0.05)) for n, m in zip(names, (.3, .6, .5))),
        controls={}, depth=dict(zip(names, (0.25, 0.5, 1.0))),
        tests={n: {"p_shuffled": None, "statistic": None, "p_random_weights": 0.001,
                   "t_random_weights": 9.0} for n in names}, test_info={"test_train_ratio": .5})
    stored = {"label": "resnet18 · random · demo-scale", "config": {"model": "ridge"},
              "result": json.loads(json.dumps(result.to_json())), "created": 1.0,
              "chosen_cut": {"layer": "add_2", "source": "clicked", "at": 5.0}}
    state.save_scan("a" * 16, stored)
    state.save_scan("b" * 16, {"label": "old", "config": {}, "result": {"arch": "resnet18"}})
    saved = services.load_scans()
    assert list(saved) == ["a" * 16]          # a result that does not load is not a scan
    scan = saved["a" * 16]
    assert scan.result == result and scan.chosen_cut == stored["chosen_cut"]
    assert services.suggest_cut(scan.result) == result.suggest_cut()
    assert result.suggest_cut()[0] == "add_4"
    # the Train page offers the cut chosen last, with the scan's suggestion
    cut, problem = services.train_prefill(None, None, None)
    assert problem is None and (cut["layer"], cut["source"], cut["suggested"]) == \
        ("add_2", "saved", "add_4")
    path = state.scans_dir() / f"{'a' * 16}.json"
    services.save_chosen_cut("a" * 16, "add_2", "clicked", saved)   # unchanged: not rewritten
    assert json.loads(path.read_text()) == stored
    services.save_chosen_cut("a" * 16, "add_4", "suggested", saved)
    again = json.loads(path.read_text())
    assert again["result"] == stored["result"] and again["label"] == stored["label"]
    assert again["chosen_cut"]["layer"] == "add_4" and again["chosen_cut"]["at"] > 5.0
    assert services.train_prefill("a" * 16, None, None)[0]["layer"] == "add_4"


def test_vision_transformer_scan_with_class_token_pooling(app_env):
    """A timm ViT typed by name gets the token-pooling control; its choice reaches rcvcore."""
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    _widget(at, "selectbox", "scan_arch").set_value("other timm model...")
    at.run()
    name = "timm:vit_tiny_patch16_224[img_size=32,depth=2]"
    _widget(at, "text_input", "scan_timm_name").set_value(name)
    at.run(timeout=60)
    assert _widget(at, "radio", "scan_token_pool").options == ["mean", "cls"]
    _widget(at, "radio", "scan_token_pool").set_value("cls")
    _widget(at, "radio", f"scan_weights_{name}").set_value("random (control)")
    _small_scan_run(at)
    rec = json.loads(next((app_env / "runs" / "_scans").glob("*.json")).read_text())
    assert rec["result"]["config"]["token_pool"] == "cls"
    assert list(at.dataframe[0].value["layer"])[:3] == ["block0", "block1", "head"]

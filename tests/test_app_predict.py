"""AppTest tests of the Predict page: a finished tiny run, a good and a bad upload."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    """A runs root holding one finished tiny run (trained in-process by rcvcore)."""
    import os

    from rcvcore.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("RCV_CACHE_DIR")
    os.environ["RCV_CACHE_DIR"] = str(cache)
    try:
        cfg = TrainConfig(arch="resnet18", weights="random", cut="add_2",
                          dataset="demo-histology", n=24, epochs=1, batch_size=8,
                          image_size=64, device="cpu", seed=3, log_every=1)
        res = train(cfg, root / "g1" / "add_2_seed3", handle_signals=False)
    finally:
        if old is None:
            os.environ.pop("RCV_CACHE_DIR", None)
        else:
            os.environ["RCV_CACHE_DIR"] = old
    assert res.state == "done", res
    return root, cache


@pytest.fixture
def app_env(trained_root, tmp_path, monkeypatch):
    root, cache = trained_root
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("RCV_CACHE_DIR", str(cache))
    monkeypatch.setenv("RCV_RUNS_DIR", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return root


def _png(size=224, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _open_predict(at):
    at.run()
    at.switch_page("pages/predict.py").run()
    assert not at.exception, at.exception
    return at


def test_predict_page_without_runs_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    at = _open_predict(AppTest.from_file(MAIN, default_timeout=30))
    assert any("No finished training run" in i.value for i in at.info)


def test_predict_good_and_bad_upload(app_env):
    at = _open_predict(AppTest.from_file(MAIN, default_timeout=60))
    run_box = next(s for s in at.selectbox if s.key == "predict_run")
    assert "add_2_seed3" in run_box.value
    up = next(u for u in at.file_uploader if u.key == "predict_files")
    up.set_value([("good.png", _png(), "image/png"),
                  ("bad.png", b"this is not an image", "image/png"),
                  ("big.png", _png(300, 1), "image/png")])
    at.run(timeout=60)
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert list(table["file"]) == ["good.png", "bad.png", "big.png"]
    good, bad, big = table.to_dict("records")
    assert _blank(good["error"]) and np.isfinite(good["nuclei_area_px"])
    assert good["magnification"] in {"5x", "8x", "10x", "15x", "20x", "30x", "40x"}
    assert not _blank(bad["error"]) and np.isnan(bad["nuclei_area_px"])
    assert _blank(big["error"])
    # the message is shown on the bad file only
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("**bad.png**")
    assert any(m.label == "Nuclei area (px)" for m in at.metric)
    assert any("2 of 3 predicted" in m.value for m in at.markdown)


def test_predict_uploads_are_not_written_under_user_names(app_env):
    at = _open_predict(AppTest.from_file(MAIN, default_timeout=60))
    up = next(u for u in at.file_uploader if u.key == "predict_files")
    up.set_value([("../../evil name.png", _png(), "image/png")])
    at.run(timeout=60)
    assert not at.exception
    hits = [p for p in Path(app_env).rglob("*evil*")] + [p for p in Path("/tmp").glob("*evil*")]
    assert hits == []


def test_predict_page_marks_patches_outside_the_training_domain(app_env):
    at = _open_predict(AppTest.from_file(MAIN, default_timeout=60))
    green = np.zeros((64, 64, 3), np.uint8)
    green[..., 1] = 255                      # no tissue at all: far from every training patch
    buf = io.BytesIO()
    Image.fromarray(green).save(buf, format="PNG")
    up = next(u for u in at.file_uploader if u.key == "predict_files")
    up.set_value([("noise.png", _png(64, 2), "image/png"),
                  ("green.png", buf.getvalue(), "image/png")])
    at.run(timeout=60)
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    rows = {r["file"]: r for r in table.to_dict("records")}
    assert bool(rows["green.png"]["out_of_range"]) and "feature space" in \
        rows["green.png"]["range_reasons"]
    assert np.isfinite(rows["noise.png"]["feature_distance"])
    marks = [w.value for w in at.warning if "Outside the model's range" in w.value]
    assert len(marks) == int(table["out_of_range"].sum())
    # sorted by feature distance: the cards follow the table's distances, farthest first
    next(s for s in at.selectbox if s.key == "predict_sort").set_value(
        "feature distance (farthest first)").run(timeout=60)
    shown = [c.value for c in at.caption if c.value.startswith("feature distance ")]
    want = sorted(table["feature_distance"], reverse=True)
    assert shown == [f"feature distance {d:.2f}" for d in want]


def test_demo_model_is_selected_when_it_finishes(tmp_path, monkeypatch):
    """A session that watched the demo model train gets it selected once it is done (not the
    newest other run, the selectbox's default)."""
    import dataclasses
    import os
    import time as _time

    from _train_fixtures import TINY

    from rcvcore.runs.writer import RunWriter

    root = tmp_path / "runs"
    monkeypatch.setenv("RCV_RUNS_DIR", str(root))
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("RCV_CACHE_DIR", str(tmp_path / "cache"))

    def run(path, state):
        path.mkdir(parents=True, exist_ok=True)
        w = RunWriter(path)
        w.write_config(dataclasses.replace(TINY, target="magnification"), "test")
        w.write_status(state=state, pid=None, epoch=0, message=state)
        if state == "done":
            w.write_result({"test": {"kappa": 0.5}, "n_test": 3})

    demo = root / "demo-model"
    run(demo, "running")
    run(root / "g-newer" / "other_seed1", "done")
    os.utime(root / "g-newer", (_time.time() + 60, _time.time() + 60))   # the newest group
    at = _open_predict(AppTest.from_file(MAIN, default_timeout=30))
    assert at.session_state["demo_watch"] is True            # the demo panel watches it
    assert "other_seed1" in next(s for s in at.selectbox if s.key == "predict_run").value
    run(demo, "done")
    at.run()
    at.run()      # the panel sees "done", asks for a rerun that selects it
    assert not at.exception, at.exception
    assert next(s for s in at.selectbox if s.key == "predict_run").value == str(demo)

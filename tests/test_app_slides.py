"""AppTest of the Slides page: a finished tiny --target mpp run checks a folder of slides."""
from __future__ import annotations

from pathlib import Path

import pytest
from _slide_fixtures import tissue, write_cohort
from streamlit.testing.v1 import AppTest

from rcvcore.data.slide_writer import write_slide

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture(scope="module")
def mpp_run(tmp_path_factory):
    from rcvcore.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    base = tmp_path_factory.mktemp("slides")
    write_cohort(base / "cohort", size=384)
    cfg = TrainConfig(arch="resnet18", weights="random", cut="add_2",
                      dataset=f"slides:{base / 'cohort'}", target="mpp", epochs=1, batch_size=8,
                      image_size=64, device="cpu", seed=3, log_every=1,
                      dataset_cache_dir=str(base / "cache"),
                      dataset_options={"mpps": "0.5,1", "patch_size": 64,
                                       "tiles_per_slide": 3, "min_tissue": 0.0})
    res = train(cfg, root / "g1" / "mpp", handle_signals=False)
    assert res.state == "done", res
    check = base / "check"
    check.mkdir()
    write_slide(check / "right.tif", tissue(40, 384), 0.25, min_side=128)
    write_slide(check / "nohdr.tif", tissue(41, 384), None, min_side=128)
    (check / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 40)
    return root, check


@pytest.mark.slow
def test_slides_page_checks_a_folder(mpp_run, monkeypatch, tmp_path):
    root, check = mpp_run
    monkeypatch.setenv("RCV_RUNS_DIR", str(root))
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page("pages/slides.py").run()
    assert not at.exception
    next(t for t in at.text_input if t.key == "slides_path").set_value(str(check))
    next(n for n in at.number_input if n.key == "slides_tiles").set_value(4)
    at.run()                               # the button is enabled once a path is given
    next(b for b in at.button if b.key == "slides_go").click()
    at.run(timeout=120)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    verdicts = dict(zip(table["path"], table["verdict"]))
    assert verdicts["broken.svs"] == "error"
    assert verdicts["nohdr.tif"] in ("no header MPP", "out of domain")
    assert verdicts["right.tif"] in ("consistent", "mismatch", "out of domain")
    assert len(at.expander) >= 4           # the how-to, then one per slide
    images = [x for ex in at.expander for x in ex.children.values()
              if getattr(x, "type", None) == "image"]
    assert len(images) == 2                # thumbnails of the two readable slides

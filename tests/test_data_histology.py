"""The histology pipeline: the paper's nuclei measure, downsampling, janowczyk, demo-histology."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import disk_mask, grid_centers, truncate, write_janowczyk_tree
from PIL import Image

from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError
from rcvcore.data.histology import (
    downsample,
    grid_positions,
    mean_nuclei_area,
    nuclei_areas,
    split_groups,
)

# ----------------------------------------------------------------------------- the measure


def test_squares_give_their_exact_mean_area():
    m = np.zeros((100, 100), bool)
    m[10:20, 10:20] = True         # 100 px
    m[40:60, 40:60] = True         # 400 px
    assert mean_nuclei_area(m) == pytest.approx(250.0)
    np.testing.assert_allclose(sorted(nuclei_areas(m)), [100, 400])


def test_disks_give_the_known_area():
    r = 12
    m = disk_mask((200, 200), grid_centers(200, 50, 30), r)
    one = disk_mask((40, 40), [(20, 20)], r).sum()          # pixels of one digital disk
    assert mean_nuclei_area(m) == pytest.approx(one, rel=0.01)
    assert one == pytest.approx(np.pi * r ** 2, rel=0.03)


def test_border_nuclei_and_tiny_regions_are_dropped():
    m = np.zeros((60, 60), bool)
    m[0:10, 20:30] = True           # touches the border
    m[30:40, 30:40] = True          # 100 px, kept
    m[50, 10:12] = True             # 2 px: below the 3 px floor
    assert mean_nuclei_area(m) == pytest.approx(100.0)


def test_no_nuclei_gives_none():
    assert mean_nuclei_area(np.zeros((50, 50))) is None
    assert mean_nuclei_area(np.ones((50, 50))) is None
    border_only = np.zeros((50, 50), bool)
    border_only[:5, :5] = True
    assert mean_nuclei_area(border_only) is None


def test_mask_encodings_agree():
    m = disk_mask((80, 80), [(40, 40)], 10)
    ref = mean_nuclei_area(m)
    assert mean_nuclei_area(m.astype(np.uint8) * 255) == ref
    assert mean_nuclei_area(m.astype(np.float32)) == ref
    assert mean_nuclei_area(np.dstack([m * 255] * 3).astype(np.uint8)) == ref


def test_closing_fills_one_pixel_gaps():
    m = np.zeros((40, 40), bool)
    m[10:20, 10:20] = True
    m[15, 15] = False               # a pinhole: closed by the 2x2 closing
    assert mean_nuclei_area(m) == pytest.approx(100.0)


@pytest.mark.parametrize("mag, factor", [(20, 4.0), (10, 16.0)])
def test_downsampling_scales_area_by_magnification_squared(mag, factor):
    size = 448
    mask = disk_mask((size, size), grid_centers(size, 56, 28), 16).astype(np.float32)
    rgb = Image.new("RGB", (size, size))
    small, small_mask = downsample(rgb, mask, mag)
    assert small.size == (size * mag // 40,) * 2
    assert small_mask.shape == (size * mag // 40,) * 2
    ratio = mean_nuclei_area(mask) / mean_nuclei_area(small_mask)
    assert ratio == pytest.approx(factor, rel=0.08)


def test_grid_positions_are_centred_and_non_overlapping():
    assert grid_positions(100, 100, 224) == []
    assert grid_positions(224, 224, 224) == [(0, 0)]
    pos = grid_positions(500, 460, 224)
    assert pos == [(26, 6), (26, 230), (250, 6), (250, 230)]


def test_split_groups_every_split_non_empty_and_stable():
    for n in (3, 4, 5, 7, 10, 143):
        ids = [f"img{i}" for i in range(n)]
        s = split_groups(ids, seed=0)
        assert set(s.values()) == {"train", "val", "test"}
        assert split_groups(list(reversed(ids)), seed=0) == s
    s = split_groups([f"g{i}" for i in range(100)], seed=0)
    counts = {k: list(s.values()).count(k) for k in ("train", "val", "test")}
    assert counts == {"train": 60, "val": 20, "test": 20}
    assert split_groups(["a", "b"], seed=0).keys() == {"a", "b"}


# ----------------------------------------------------------------------------- janowczyk

@pytest.fixture()
def jan_tree(tmp_path):
    return write_janowczyk_tree(tmp_path / "jan", n_images=4)


def _load(path, cache, **kw):
    kw.setdefault("magnifications", (20, 40))
    kw.setdefault("workers", 1)
    return load_dataset(f"janowczyk:{path}", cache_dir=cache, **kw)


def test_janowczyk_patches_labels_groups_and_splits(jan_tree, tmp_path):
    ds = _load(jan_tree, tmp_path / "cache")
    assert ds.kind == "janowczyk" and ds.measure_name == "nuclei_area_px"
    assert ds.label_name == "magnification" and ds.label_order == ("20x", "40x")
    # 448 px at 40x: 2x2 grid of 224 patches; at 20x: one patch per image
    assert {c: int((ds.labels == c).sum()) for c in ds.classes} == {"20x": 4, "40x": 16}
    assert set(ds.groups) == {"img0", "img1", "img2", "img3"}
    by_group = {}
    for s in ds.samples:
        assert Path(s.path).is_file() and Path(s.path).is_absolute()
        assert Image.open(s.path).size == (224, 224)
        by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in by_group.values())           # never split within an image
    assert {next(iter(v)) for v in by_group.values()} == {"train", "val", "test"}
    one = disk_mask((40, 40), [(20, 20)], 10).sum()
    a40 = ds.measures[ds.labels == "40x"]
    a20 = ds.measures[ds.labels == "20x"]
    np.testing.assert_allclose(a40, one, rtol=0.01)
    assert a40.mean() / a20.mean() == pytest.approx(4.0, rel=0.1)


def test_janowczyk_default_is_the_paper_seven_magnifications(tmp_path):
    root = write_janowczyk_tree(tmp_path / "big", n_images=1, size=1792, spacing=60)
    ds = load_dataset(f"janowczyk:{root}", cache_dir=tmp_path / "c", workers=1)
    assert ds.classes == ["5x", "8x", "10x", "15x", "20x", "30x", "40x"]
    counts = {c: int((ds.labels == c).sum()) for c in ds.classes}
    assert counts == {"5x": 1, "8x": 1, "10x": 4, "15x": 9, "20x": 16, "30x": 36, "40x": 64}
    means = [ds.measures[ds.labels == c].mean() for c in ds.classes]
    assert means == sorted(means)


def test_janowczyk_cache_is_reused_and_invalidated(jan_tree, tmp_path):
    cache = tmp_path / "cache"
    first = _load(jan_tree, cache)
    assert first.info["n_sources_cached"] == 0
    second = _load(jan_tree, cache)
    assert second.info["n_sources_cached"] == 4
    assert second.samples == first.samples
    # change one mask: only that source is regenerated, and its areas change
    m = disk_mask((448, 448), grid_centers(448, 40, 22), 6)
    time.sleep(0.01)
    Image.fromarray((m * 255).astype(np.uint8)).save(jan_tree / "img2_mask.png")
    third = _load(jan_tree, cache)
    assert third.info["n_sources_cached"] == 3
    changed = [s.measure for s in third.samples if s.group == "img2" and s.label == "40x"]
    np.testing.assert_allclose(changed, disk_mask((20, 20), [(10, 10)], 6).sum(), rtol=0.01)


def test_janowczyk_parallel_equals_serial(jan_tree, tmp_path):
    a = _load(jan_tree, tmp_path / "c1", workers=1)
    b = _load(jan_tree, tmp_path / "c2", workers=2)
    assert a.measures.tolist() == b.measures.tolist()
    assert [s.label for s in a.samples] == [s.label for s in b.samples]


def test_janowczyk_bad_items_are_skipped_named_and_counted(jan_tree, tmp_path):
    truncate(jan_tree / "img0_original.tif", 0.3)
    (jan_tree / "img1_mask.png").unlink()
    Image.new("L", (100, 100)).save(jan_tree / "img2_mask.png")     # wrong size
    (jan_tree / "img9_original.tif").write_text("not an image")
    Image.new("L", (10, 10)).save(jan_tree / "img9_mask.png")
    with pytest.warns(UserWarning) as rec:
        ds = _load(jan_tree, tmp_path / "cache")
    assert set(ds.groups) == {"img3"}
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"img0_original.tif", "img1_original.tif", "img2_mask.png",
                            "img9_original.tif"}
    assert "mask" in reasons["img1_original.tif"]
    assert "100x100" in reasons["img2_mask.png"] and "448x448" in reasons["img2_mask.png"]
    messages = " ".join(str(w.message) for w in rec)
    for name in ("img0_original.tif", "img1_original.tif", "img2_mask.png", "img9_original.tif"):
        assert name in messages


def test_janowczyk_patches_without_nuclei_are_excluded_and_counted(tmp_path):
    root = tmp_path / "jan"
    root.mkdir()
    mask = np.zeros((448, 448), bool)
    mask[:224, :224] = disk_mask((224, 224), grid_centers(224, 40, 30), 8)  # one quadrant only
    Image.fromarray(np.full((448, 448, 3), 200, np.uint8)).save(root / "a_original.tif")
    Image.fromarray((mask * 255).astype(np.uint8)).save(root / "a_mask.png")
    ds = load_dataset(f"janowczyk:{root}", cache_dir=tmp_path / "c", magnifications=(40,),
                      workers=1)
    assert len(ds) == 1
    assert ds.info["n_patches_without_nuclei"] == 3
    assert any("3 patch(es) without any nucleus" in s.reason for s in ds.skipped)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "no \\*_original.tif image .* Expected a folder of 40x H&E images"),
    (lambda p: (p.mkdir(), (p / "x_mask.png").write_bytes(b"")), "found 1 \\*_mask.png"),
])
def test_janowczyk_wrong_layout_is_one_clear_error(tmp_path, make, match):
    root = tmp_path / "empty"
    make(root)
    with pytest.raises(DatasetError, match=match):
        load_dataset(f"janowczyk:{root}", cache_dir=tmp_path / "c")


def test_janowczyk_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"janowczyk:{tmp_path / 'nope'}", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- demo-histology

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    t0 = time.perf_counter()
    ds = load_dataset("demo-histology", cache_dir=cache, tiles=3)
    return ds, cache, time.perf_counter() - t0


def test_demo_histology_has_the_seven_classes_and_growing_areas(demo):
    ds, _, _ = demo
    assert ds.kind == "demo-histology" and ds.measure_name == "nuclei_area_px"
    assert ds.classes == ["5x", "8x", "10x", "15x", "20x", "30x", "40x"]
    means = [ds.measures[ds.labels == c].mean() for c in ds.classes]
    assert means == sorted(means)
    ratio = means[-1] / ds.measures[ds.labels == "20x"].mean()
    assert ratio == pytest.approx(4.0, rel=0.25)
    assert 120 < means[-1] < 600                  # realistic 40x nuclei (~0.25 um / px)
    assert {s.split for s in ds.samples} == {"train", "val", "test"}
    assert len(set(ds.groups)) == 3


def test_demo_histology_labels_are_the_measure_of_the_true_mask(demo):
    ds, _, _ = demo
    tile_dir = Path(ds.info["tile_dir"])
    s = next(s for s in ds.samples if s.label == "20x")
    mask = np.asarray(Image.open(tile_dir / f"{s.group}_mask.png"), np.float32) / 255
    _, small = downsample(Image.new("RGB", mask.shape[::-1]), mask, 20)
    y, x = (int(v[1:]) for v in Path(s.path).stem.split("_")[1:3])
    assert s.measure == pytest.approx(mean_nuclei_area(small[y:y + 224, x:x + 224]))


def test_demo_histology_is_deterministic_and_cached(demo):
    ds, cache, cold = demo
    t0 = time.perf_counter()
    again = load_dataset("demo-histology", cache_dir=cache, tiles=3)
    warm = time.perf_counter() - t0
    assert again.measures.tolist() == ds.measures.tolist()
    assert again.info["n_sources_cached"] == 3
    assert warm < max(1.0, cold / 3)


def test_demo_histology_n_sizes_the_generation(demo):
    ds, cache, _ = demo
    small = load_dataset("demo-histology", cache_dir=cache, n=40)   # reuses the 3 cached tiles
    assert len(small) == 40
    assert set(small.classes) == set(ds.classes)


def test_demo_histology_takes_no_path():
    with pytest.raises(DatasetError, match="embedded"):
        load_dataset("demo-histology:/tmp")


def test_janowczyk_group_by_patient(tmp_path):
    root = tmp_path / "jan"
    write_janowczyk_tree(root, n_images=4)
    for i, name in enumerate(["100_500_f001", "100_500_f002", "200_500_f001", "300_500_f001"]):
        for suffix in ("_original.tif", "_mask.png"):
            (root / f"img{i}{suffix}").rename(root / f"{name}{suffix}")
    ds = _load(root, tmp_path / "c", group_by="patient")
    assert set(ds.groups) == {"100", "200", "300"}
    assert len({s.split for s in ds.samples if s.group == "100"}) == 1
    ds = _load(root, tmp_path / "c")
    assert set(ds.groups) == {"100_500_f001", "100_500_f002", "200_500_f001", "300_500_f001"}
    with pytest.raises(DatasetError, match="group_by must be"):
        _load(root, tmp_path / "c", group_by="slide")


def test_janowczyk_too_small_image_is_skipped(tmp_path):
    root = write_janowczyk_tree(tmp_path / "jan", n_images=2)
    Image.new("RGB", (100, 100)).save(root / "tiny_original.tif")
    Image.fromarray((disk_mask((100, 100), [(50, 50)], 10) * 255).astype(np.uint8)).save(
        root / "tiny_mask.png")
    with pytest.warns(UserWarning, match="tiny_original.tif"):
        ds = _load(root, tmp_path / "c")
    assert "tiny" not in set(ds.groups)
    assert any("too small" in s.reason for s in ds.skipped)


def test_unwritable_cache_is_one_clear_error(tmp_path):
    root = write_janowczyk_tree(tmp_path / "jan", n_images=1)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DatasetError, match="Cannot write histology patches.*--cache-dir"):
        _load(root, blocker)

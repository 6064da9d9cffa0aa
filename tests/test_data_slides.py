"""slides: tiles cut from pyramidal slides at requested µm/px, labelled from the header MPP."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from _slide_fixtures import TRUE_MPP, halve, tissue, write_cohort
from PIL import Image

from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError
from rcvcore.data.slide_writer import write_slide
from rcvcore.data.slides import header_mpp, nearest_power, open_slide

OPTS = {"mpps": "0.5,1", "patch_size": 64, "tiles_per_slide": 4, "min_tissue": 0.0}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    return root, write_cohort(root)


def test_tiles_carry_log2_mpp_from_the_header_and_slides_as_groups(cohort, tmp_path):
    root, headers = cohort
    ds = load_dataset(f"slides:{root}", cache_dir=tmp_path, **OPTS)
    assert ds.measure_name == "log2_mpp" and ds.pooled_by_default
    assert set(ds.groups) == set(headers)
    for s in ds.samples:
        mpp = 2 ** s.measure
        assert mpp in (0.5, 1.0)
        assert s.label == f"{10 / mpp:g}x"
        with Image.open(s.path) as im:
            assert im.size == (64, 64)
    # 4 fields per slide, one tile per resolution
    assert len(ds) == 4 * 4 * 2


def test_a_tile_shows_the_same_tissue_whatever_the_slide_resolution(tmp_path):
    """The same tissue scanned at 0.25 and at 0.5 µm/px gives the same 1 µm/px tiles (the field
    grid is physical), and a different tissue does not."""
    rgb = tissue(3, 512)
    write_slide(tmp_path / "fine.tif", rgb, TRUE_MPP, min_side=128)
    write_slide(tmp_path / "coarse.tif", halve(rgb), 2 * TRUE_MPP, min_side=128)
    write_slide(tmp_path / "other.tif", tissue(4, 512), TRUE_MPP, min_side=128)
    tiles = {}
    for name in ("fine", "coarse", "other"):
        ds = load_dataset(f"slides:{tmp_path / name}.tif", cache_dir=tmp_path / "c", **OPTS)
        tiles[name] = [np.asarray(Image.open(s.path), float) for s in ds.samples
                       if s.measure == 0.0]
    same = np.mean([np.abs(a - b).mean() for a, b in zip(tiles["fine"], tiles["coarse"])])
    other = np.mean([np.abs(a - b).mean() for a, b in zip(tiles["fine"], tiles["other"])])
    assert same < 6 and other > 3 * same


def test_a_slide_without_header_mpp_is_refused_by_name(cohort, tmp_path):
    root, _ = cohort
    bad = tmp_path / "slides"
    bad.mkdir()
    for f in root.glob("*.tif"):
        (bad / f.name).symlink_to(f)
    write_slide(bad / "nohdr.tif", tissue(9, 256), None, min_side=128)
    with pytest.raises(DatasetError, match=r"nohdr\.tif: refused for training: its header "
                                           r"gives no MPP"):
        load_dataset(f"slides:{bad}", cache_dir=tmp_path / "c", **OPTS)


def test_corrupt_slide_is_skipped_and_list_files_work(cohort, tmp_path):
    root, headers = cohort
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 40)
    lst = tmp_path / "slides.txt"
    lst.write_text("# training slides\n" + "\n".join(str(root / f"{n}.tif") for n in headers)
                   + "\nbroken.svs\n")
    ds = load_dataset(f"slides:{lst}", cache_dir=tmp_path / "c", **OPTS)
    assert set(ds.groups) == set(headers)
    assert [s.path for s in ds.skipped] == [str(tmp_path / "broken.svs")]
    assert "broken.svs" in ds.skipped[0].reason


def test_tiles_are_cached_and_never_upsampled(cohort, tmp_path):
    root, _ = cohort
    ds = load_dataset(f"slides:{root / 's1.tif'}", cache_dir=tmp_path, **OPTS)
    stamps = [os.stat(p).st_mtime_ns for p in ds.paths]
    again = load_dataset(f"slides:{root / 's1.tif'}", cache_dir=tmp_path, **OPTS)
    assert again.paths == ds.paths
    assert [os.stat(p).st_mtime_ns for p in again.paths] == stamps
    # s1 is scanned at 0.5 µm/px: asking for 0.25 would upsample, so only 0.5 and 1 are cut
    finer = load_dataset(f"slides:{root / 's1.tif'}", cache_dir=tmp_path,
                         **{**OPTS, "mpps": "0.25,0.5,1"})
    assert sorted({2 ** s.measure for s in finer.samples}) == [0.5, 1.0]


def test_header_mpp_rules():
    assert header_mpp({"openslide.mpp-x": "0.2520", "openslide.mpp-y": "0.2520"}) == (0.252, None)
    assert header_mpp({})[0] is None
    assert "differs" in header_mpp({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.5"})[1]
    assert "outside" in header_mpp({"openslide.mpp-x": "0", "openslide.mpp-y": "0"})[1]


def test_nearest_power_is_nearest_in_log_scale():
    powers = (1.25, 2.5, 5, 10, 20, 40, 60, 80, 100)
    for mpp in np.geomspace(0.1, 8, 40):
        ref = powers[int(np.argmin([abs(math.log(p * mpp / 10)) for p in powers]))]
        assert nearest_power(mpp) == ref


def test_header_of_a_written_slide_is_read_by_openslide(tmp_path):
    write_slide(tmp_path / "a.tif", tissue(1, 256), 0.37, min_side=128)
    s = open_slide(tmp_path / "a.tif")
    assert header_mpp(s.properties)[0] == pytest.approx(0.37, rel=1e-6)


def test_target_mpp_needs_a_slides_dataset(tmp_path):
    from _train_fixtures import TINY, dataset

    from rcvcore.errors import UserError
    from rcvcore.train.data import make_task

    ds = dataset(tmp_path / "f", n=6)
    cfg = TINY.__class__(**{**TINY.to_dict(), "target": "mpp"})
    with pytest.raises(UserError, match="--target mpp regresses log2 µm/px.*slides:"):
        make_task(cfg, ds, np.arange(4))

"""check-slides: header MPP vs. the pixels' estimate (verdicts, interval, domain, reports)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _slide_fixtures import tissue, write_cohort
from PIL import Image
from scipy import stats

from rcvcore.data.slide_writer import write_slide
from rcvcore.slidecheck import bootstrap_median, domain_of, judge, stain_features


def test_bootstrap_interval_matches_scipy(rng):
    v = rng.normal(size=41)
    med, lo, hi = bootstrap_median(v, n_boot=4000)
    ref = stats.bootstrap((v,), np.median, method="percentile", n_resamples=4000,
                          random_state=1).confidence_interval
    assert med == np.median(v)
    assert lo == pytest.approx(ref.low, abs=0.08) and hi == pytest.approx(ref.high, abs=0.08)
    assert lo <= med <= hi


def test_verdicts():
    assert judge(0.25, 0.27)[0] == "consistent"
    verdict, factor, msg = judge(0.25, 0.5)
    assert verdict == "mismatch" and factor == pytest.approx(2.0)
    assert "header says 0.25 µm/px, pixels look like 0.5: likely 20x labelled 40x" in msg
    assert judge(0.5, 0.26)[2].startswith("header says 0.5 µm/px, pixels look like 0.26: "
                                          "likely 40x labelled 20x")
    assert judge(None, 0.5)[0] == "no header MPP"
    assert judge(0.25, 0.25, out_of_domain=True)[0] == "out of domain"
    # the tolerance is a factor of sqrt(2) either way
    assert judge(1.0, 2 ** 0.49)[0] == "consistent" and judge(1.0, 2 ** 0.51)[0] == "mismatch"


def test_domain_flags_other_stains(tmp_path):
    paths = []
    for i in range(12):
        p = tmp_path / f"t{i}.png"
        Image.fromarray(tissue(30 + i, 128)).save(p)
        paths.append(p)
    dom = domain_of(paths, "test tiles")
    same = stain_features(Image.fromarray(tissue(60, 128)))
    # the same tissue in another stain: channels swapped (green-blue instead of pink-purple)
    other = stain_features(Image.fromarray(tissue(60, 128)[..., ::-1]))
    assert dom.distance(same) <= dom.threshold < dom.distance(other)


@pytest.mark.slow
def test_check_slides_end_to_end(tmp_path):
    """Train a tiny --target mpp run on written slides (closed-form head on a pruned
    EfficientNet-Lite0), then check slides whose headers are right, wrong by 2x or missing."""
    from _train_fixtures import cli

    cohort = tmp_path / "cohort"
    write_cohort(cohort)
    run = tmp_path / "run"
    r = cli("train", "--run-dir", run, "--arch", "efficientnet_lite0", "--weights", "imagenet",
            "--cut", "block3.2", "--dataset", f"slides:{cohort}", "--opt", "mpps=0.25,0.5,1",
            "--opt", "patch_size=64", "--opt", "tiles_per_slide=8", "--opt", "min_tissue=0",
            "--dataset-cache-dir", tmp_path / "cache", "--target", "mpp", "--epochs", "1",
            "--trainable", "head", "--lr", "1e-5", "--batch-size", "16", "--image-size", "64",
            "--quiet")
    assert r.returncode == 0, r.stderr
    check = tmp_path / "check"
    check.mkdir()
    rgb = tissue(20, 512)                                    # drawn at 0.25 µm/px
    write_slide(check / "right.tif", rgb, 0.25, min_side=128)
    write_slide(check / "wrong.tif", rgb, 0.125, min_side=128)    # header 2x too fine
    write_slide(check / "none.tif", rgb, None, min_side=128)
    (check / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 40)
    out = tmp_path / "r"
    r = cli("check-slides", check, "--run", run, "--tiles", "8", "--quiet", "--json",
            f"{out}.json", "--csv", f"{out}.csv", "--html", f"{out}.html")
    assert r.returncode == 1, r.stderr                      # broken.svs could not be read
    rows = {s["path"].rsplit("/", 1)[-1]: s for s in json.loads(open(f"{out}.json").read())
            ["slides"]}
    assert rows["broken.svs"]["verdict"] == "error" and "broken.svs" in rows["broken.svs"][
        "message"]
    assert rows["none.tif"]["verdict"] in ("no header MPP", "out of domain")
    # the estimate comes from the pixels only: the same pixels under any header agree
    est = [rows[n]["mpp"] for n in ("right.tif", "wrong.tif", "none.tif")]
    assert max(est) / min(est) < 1.05
    # a header that differs from the estimate by a factor > sqrt(2) is a mismatch, with it
    for n in ("right.tif", "wrong.tif"):
        ratio = rows[n]["mpp"] / rows[n]["header_mpp"]
        if rows[n]["verdict"] != "out of domain":
            assert (rows[n]["verdict"] == "mismatch") == (abs(np.log2(ratio)) > 0.5)
    assert rows["wrong.tif"]["verdict"] in ("mismatch", "out of domain")
    assert all(len(s["tiles"]) == s["n_tiles"] for s in rows.values())
    assert open(f"{out}.csv").read().count("\n") == 5
    assert "data:image/png;base64" in open(f"{out}.html").read()

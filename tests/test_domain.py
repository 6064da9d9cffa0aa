"""The training domain: the distance threshold against a brute-force NumPy reference, and a tiny
trained run that flags an unlike patch and not a patch from its training distribution."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from _train_fixtures import CLASSES, RADII, TINY, dataset, disc_image
from PIL import Image

from rcvcore.cli import main
from rcvcore.domain import TrainingDomain, fit_domain, read_domain
from rcvcore.predict import load_run_model, predict_files
from rcvcore.train import train


def _reference(features, labels, q):
    """Standardise, class means, leave-one-out nearest-mean distances, quantile: by loops."""
    f = np.asarray(features, float)
    mu, sd = f.mean(0), f.std(0)
    sd = np.maximum(sd, np.median(sd[sd > 0]))
    z = (f - mu) / sd
    labels = np.asarray(labels)
    dists = []
    for i in range(len(z)):
        best = np.inf
        for c in np.unique(labels):
            members = [j for j in range(len(z)) if labels[j] == c and j != i]
            if members:
                best = min(best, np.linalg.norm(z[i] - z[members].mean(0)))
        dists.append(best / np.sqrt(z.shape[1]))
    return np.quantile(dists, q), mu, sd, z


def test_threshold_matches_bruteforce_leave_one_out(rng):
    f = rng.normal(size=(40, 6)) * [1, 2, 3, 0.5, 1, 1] + [0, 5, 0, 0, 0, 0]
    f[:, 4] = 0.0                       # a channel that never fires in training
    labels = np.asarray(["a", "b", "c", "d"] * 10)
    dom = fit_domain(f, labels=labels, classes=("a", "b", "c", "d"), quantile=0.9)
    thr, mu, sd, z = _reference(f, labels, 0.9)
    assert dom.distance_threshold == pytest.approx(thr, rel=1e-12)
    np.testing.assert_allclose(dom.feature_scale, sd)
    # distances of new points: nearest full class mean, by loops
    x = rng.normal(size=(5, 6))
    zx = (x - mu) / sd
    cents = {c: z[labels == c].mean(0) for c in "abcd"}
    ref = [min(np.linalg.norm(v - m) for m in cents.values()) / np.sqrt(6) for v in zx]
    np.testing.assert_allclose(dom.distances(x), ref, rtol=1e-12)
    assert TrainingDomain.from_dict(json.loads(json.dumps(dom.to_dict()))) == dom


def test_check_reasons(rng):
    f = rng.normal(size=(30, 4))
    dom = fit_domain(f, labels=["x", "y", "z"] * 10, classes=("x", "y", "z"),
                     measures=np.linspace(10, 50, 30), probabilities=rng.dirichlet([5, 1, 1], 30),
                     measure_name="nuclei_area_px")
    flagged, reasons, d = dom.check(features=f[:1], area=30.0, probabilities={"x": 0.99})
    assert not flagged and reasons == [] and d < dom.distance_threshold
    flagged, reasons, d = dom.check(features=f[:1] + 50, area=80.0,
                                    probabilities={"x": 0.34, "y": 0.33, "z": 0.33})
    assert flagged and d > dom.distance_threshold
    text = " | ".join(reasons)
    assert "feature space" in text and "above the training range 10.0-50.0" in text
    assert "low confidence" in text and "knows only x, y, z" in text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dom")
    # a classifier: the 1-epoch regression of TINY predicts areas beyond its training range for
    # every patch (rightly flagged, but then nothing is in range); test_check_reasons covers areas
    train(dataclasses.replace(TINY, target="magnification"), root / "run",
          dataset=dataset(root / "data", n=36))
    return root / "run"


def test_tiny_run_flags_unlike_patch_only(run_dir, tmp_path, capsys):
    dom = read_domain(run_dir)
    assert dom is not None and dom.classes == CLASSES and dom.n_train > 0
    assert dom.measure_min is None and 0 < dom.min_probability < 1
    Image.fromarray(disc_image(RADII[1], seed=991)).save(tmp_path / "like.png")
    odd = np.zeros((32, 32, 3), np.uint8)
    odd[..., 1] = 255                                  # a flat green patch: no tissue at all
    odd[::4] = (255, 255, 0)
    Image.fromarray(odd).save(tmp_path / "unlike.png")
    like, unlike = predict_files(load_run_model(run_dir, "cpu"),
                                 [tmp_path / "like.png", tmp_path / "unlike.png"])
    assert not like.out_of_range and like.range_reasons == ()
    assert like.feature_distance <= dom.distance_threshold
    assert unlike.out_of_range and unlike.feature_distance > dom.distance_threshold
    assert any("feature space" in r for r in unlike.range_reasons)
    assert unlike.to_dict()["out_of_range"] is True

    # the CLI writes the same fields to JSON and CSV
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    assert main(["predict", "--run", str(run_dir), str(tmp_path / "like.png"),
                 str(tmp_path / "unlike.png"), "--json", str(out_json), "--csv", str(out_csv),
                 "--device", "cpu"]) == 0            # in-process: no second torch import
    lines = capsys.readouterr().out.splitlines()
    assert "OUTSIDE THE MODEL'S RANGE" not in lines[0]
    assert "OUTSIDE THE MODEL'S RANGE" in lines[1]
    js = json.loads(out_json.read_text())
    assert [j["out_of_range"] for j in js] == [False, True]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["out_of_range"] for r in rows] == ["False", "True"]
    assert float(rows[1]["feature_distance"]) == pytest.approx(unlike.feature_distance, rel=1e-6)


def test_end_class_log_odds_thresholds_and_calibration(rng):
    f = rng.normal(size=(40, 3))
    classes = ("8x", "10x", "15x", "20x")
    labels = np.asarray(classes * 10)
    p = rng.dirichlet([1, 1, 1, 1], 40)
    val_p, val_l = rng.dirichlet([2, 1, 1, 3], 12), np.asarray(classes * 3)
    train_only = fit_domain(f, labels=labels, classes=classes, probabilities=p)
    ref = {e: np.quantile(np.log(p[labels == e, i]) - np.log(p[labels == e, j]), 0.99)
           for e, i, j in (("8x", 0, 1), ("20x", 3, 2))}
    assert [(e, n) for e, n, _ in train_only.edges] == [("8x", "10x"), ("20x", "15x")]
    for e, _, t in train_only.edges:
        assert t == pytest.approx(ref[e], rel=1e-12)
    assert train_only.min_probability == pytest.approx(np.quantile(p.max(1), 0.01))
    # with a validation split of >= 10 images the probability thresholds come from it
    dom = fit_domain(f, labels=labels, classes=classes, probabilities=p,
                     calibration=(val_p, val_l))
    assert dom.min_probability == pytest.approx(np.quantile(val_p.max(1), 0.01))
    last = val_l == "20x"
    assert dom.edges[1][2] == pytest.approx(
        np.quantile(np.log(val_p[last, 3]) - np.log(val_p[last, 2]), 0.99))
    assert dom.distance_threshold == train_only.distance_threshold   # features: training only
    # a patch answered "20x" more surely than any training 20x patch: beyond the last class
    beyond = {"8x": 1e-9, "10x": 1e-9, "15x": 1e-9, "20x": 1 - 3e-9}
    flagged, reasons, _ = dom.check(probabilities=beyond)
    assert flagged and any("may be above 20x" in r for r in reasons)

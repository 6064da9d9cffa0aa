"""The two transfer protocols and the head's closed-form start.

- ``--protocol paper``: raw 0-255 input, MSE on raw areas (head in px), random head, and Table 2's
  std with ddof=0; ``recommended``: the weights' normalisation, standardised target, the head
  started at its ridge fit.
- ``--head-init rcv``: the head equals the ridge fit (checked against scikit-learn) of the pooled
  features of the training split alone; ``--epochs 0`` makes that fit the model; a head-only run
  trains on cached features and predicts what the full model predicts.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _train_fixtures import TINY, cli, dataset, tiny_flags, write_folder
from PIL import Image
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge

from rcvcore.comparison import summarise
from rcvcore.errors import UserError
from rcvcore.runs import read_run
from rcvcore.train import TrainConfig, image_set, make_task, split_dataset, train
from rcvcore.train.head import pooled_features
from rcvcore.train.model import build_run_model, run_transform


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("tiny"), n=36)


def _features(cfg, ds, part):
    """Pooled features at the cut of one split part, computed here from scratch."""
    splits = split_dataset(ds, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    task = make_task(cfg, ds, splits["train"])
    model = build_run_model(cfg, task)
    images = image_set(ds, splits[part], task, run_transform(cfg))
    return pooled_features(model, images, device="cpu"), images, task, splits


def test_protocol_defaults_and_config_json(tmp_path):
    assert TINY.protocol == "recommended" and TINY.head_init == "rcv"
    paper = TrainConfig(protocol="paper")
    assert paper.head_init == "random" and paper.deviations() == []
    assert dataclasses.replace(paper, epochs=2).deviations() == ["epochs=2 (paper 5)"]
    # a run of an rcvcore before head_init had a random head, and says so
    old = {k: v for k, v in TINY.to_dict().items() if k not in ("head_init", "protocol")}
    assert TrainConfig.from_dict(old).head_init == "random"
    with pytest.raises(UserError, match="--protocol"):
        TrainConfig(protocol="keras").validate()
    with pytest.raises(UserError, match="--target nuclei-area"):
        TrainConfig(protocol="paper", target="magnification").validate()
    with pytest.raises(UserError, match="--epochs must be >= 1"):
        TrainConfig(head_init="random", epochs=0).validate()
    TrainConfig(head_init="rcv", epochs=0).validate()


def test_paper_protocol_feeds_raw_pixels_and_regresses_raw_areas(ds, tmp_path):
    cfg = dataclasses.replace(TINY, protocol="paper", head_init="random", lr=1e-4)
    with Image.open(ds.paths[0]) as im:
        img = im.convert("RGB")
    x = run_transform(cfg)(img)
    raw = torch.as_tensor(np.array(img), dtype=torch.float32)
    assert torch.allclose(x, raw.permute(2, 0, 1), atol=1e-3)   # 32 px: no resize
    splits = split_dataset(ds, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    task = make_task(cfg, ds, splits["train"])
    assert (task.target_mean, task.target_std) == (0.0, 1.0)
    res = train(cfg, tmp_path / "run", dataset=ds)
    st = read_run(tmp_path / "run")
    assert st.config["protocol"] == "paper" and st.config["head_init"] == "random"
    assert res.result["protocol"] == "paper"
    assert res.result["protocol_deviations"] == ["epochs=1 (paper 5)", "batch_size=8 (paper 32)"]
    # MSE on raw areas: the logged loss is in px², far above a standardised loss
    assert st.epochs[0]["train_loss"] > 100


def test_rcv_head_is_the_ridge_fit_of_the_training_split(ds, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=0, trainable="head")
    X, images, task, splits = _features(cfg, ds, "train")
    res = train(cfg, tmp_path / "run", dataset=ds)
    info = res.result["head_init"]
    assert info["method"] == "rcv" and info["n"] == len(splits["train"])
    # the same fit with scikit-learn at the penalty the run chose (ridge on centred data)
    z = (np.asarray(images.targets) - task.target_mean) / task.target_std
    ref = Ridge(alpha=info["alpha"][0]).fit(X.astype(np.float64), z)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    w = ck["model"]["head.weight"].numpy()[0]
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(float(ck["model"]["head.bias"]), ref.intercept_, rtol=1e-4,
                               atol=1e-5)
    # epoch 0: the test predictions are the fit's, in px
    Xt, test_images, _, _ = _features(cfg, ds, "test")
    expected = task.target_mean + task.target_std * ref.predict(Xt.astype(np.float64))
    got = [p["prediction"] for p in res.result["test_predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    # the fit above used the training split alone (and matched): no val/test image was seen
    assert res.result["n_train"] == len(splits["train"]) < len(ds)


def test_head_only_run_trains_on_cached_features_like_the_full_model(ds, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=2, trainable="head", head_init="random",
                              dataset_cache_dir=str(tmp_path / "cache"))
    res = train(cfg, tmp_path / "a", dataset=ds)
    assert res.result["head_init"]["feature_cache"] == "0/3 hit"
    # the trained model run end to end on the images predicts what the feature path predicted
    from rcvcore.predict import load_run_model
    run = load_run_model(tmp_path / "a", device="cpu")
    _, test_images, _, _ = _features(cfg, ds, "test")
    x = torch.stack([test_images[i][0] for i in range(len(test_images))])
    with torch.no_grad():
        full = run.model.unscale(run.model(x)).numpy()
    got = [p["prediction"] for p in res.result["test_predictions"]]
    np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-3)
    # a second seed on the same trunk reuses every feature
    res2 = train(dataclasses.replace(cfg, seed=cfg.seed), tmp_path / "b", dataset=ds)
    assert res2.result["head_init"]["feature_cache"] == "3/3 hit"
    assert res2.result["test"]["mae"] == pytest.approx(res.result["test"]["mae"], rel=1e-5)


def test_rcv_start_predicts_before_training(ds, tmp_path):
    """A pruned model started at its closed-form fit predicts sensibly before its first epoch
    (on a task whose pooled features carry the measure)."""
    rcv = train(dataclasses.replace(TINY, epochs=0, trainable="head"), tmp_path / "rcv",
                dataset=ds).result["test"]
    assert rcv["r2"] > 0.5, rcv


def test_classification_head_init_and_ddof_of_the_table(ds, tmp_path):
    cfg = dataclasses.replace(TINY, target="magnification", epochs=0, trainable="head")
    res = train(cfg, tmp_path / "run", dataset=ds)
    info = res.result["head_init"]
    assert info["method"] == "rcv" and info["fit"] == "logistic"
    # the head is scikit-learn's logistic regression on the standardised training features
    X, images, _, _ = _features(cfg, ds, "train")
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1
    ref = LogisticRegression(C=1.0, max_iter=5000).fit((X - mu) / sd, images.targets)
    Xt, test_images, _, _ = _features(cfg, ds, "test")
    expected = ref.predict((Xt - mu) / sd)
    got = [p["prediction"] for p in res.result["test_predictions"]]
    assert np.mean(np.asarray(got) == expected) >= 0.9   # float32 features: ties may differ
    assert [p["label"] for p in res.result["test_predictions"]] == test_images.labels
    assert res.result["test"]["accuracy"] > 0.5
    # Table 2's std: sample std (recommended) vs np.std (paper)
    results = {("none", s): {"task": {"kind": "regression"}, "test": {"mae": v, "r2": 0.0}}
               for s, v in zip((1, 2, 3), (10.0, 12.0, 17.0))}
    states = {k: "done" for k in results}
    rec = summarise(TINY, ["none"], [1, 2, 3], results, states, tmp_path)
    pap = summarise(TrainConfig(protocol="paper"), ["none"], [1, 2, 3], results, states,
                    tmp_path)
    v = [10.0, 12.0, 17.0]
    assert rec.rows[0]["metrics"]["mae"]["std"] == pytest.approx(np.std(v, ddof=1))
    assert pap.rows[0]["metrics"]["mae"]["std"] == pytest.approx(np.std(v))
    assert rec.std_ddof == 1 and pap.std_ddof == 0 and "ddof=0" in pap.table()


def test_cli_protocol_flags_reach_config_json(tmp_path):
    folder = write_folder(tmp_path / "data", n=24)
    run = tmp_path / "run"
    p = cli("train", "--run-dir", run, "--dataset", f"folder:{folder}", "--cut", "add_4",
            "--dataset-cache-dir", tmp_path / "cache", "--quiet",
            *tiny_flags(epochs="0", trainable="head"), "--protocol", "recommended",
            "--head-init", "rcv")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["protocol"] == "recommended" and cfg["head_init"] == "rcv"
    bad = cli("train", "--run-dir", tmp_path / "r2", "--dataset", f"folder:{folder}",
              "--quiet", *tiny_flags(epochs="0"), "--head-init", "random")
    assert bad.returncode == 2 and "--epochs" in bad.stderr and ">= 1" in bad.stderr


def test_table2_view_states_the_verdict_and_the_papers_numbers(tmp_path):
    def res(mae, kappa, split_seed):
        return {"task": {"kind": "regression"}, "test": {"mae": mae, "kappa": kappa},
                "n_train": 80, "n_test": 20,
                "config": {"split_seed": split_seed, "dataset_options": {}, "n": 100}}

    results = {("none", 1): res(50.0, 0.40, 1), ("none", 2): res(55.0, 0.42, 2),
               ("none", 3): res(53.0, 0.41, 3), ("b3", 1): res(40.0, 0.39, 1),
               ("b3", 2): res(43.0, 0.45, 2), ("b3", 3): res(41.0, 0.44, 3)}
    comp = summarise(TINY, ["none", "b3"], [1, 2, 3], results, {k: "done" for k in results},
                     tmp_path)
    view = comp.view()
    assert [r["Model"] for r in view["measured"]] == ["ResNet18", "ResNet18 pruned at b3"]
    assert view["measured"][0]["MAE (px)"] == f"52.67 ({np.std([50, 55, 53], ddof=1):.2f})"
    # Nadeau-Bengio corrected paired t over the three split replicates, from its formula
    d = np.array([40, 43, 41]) - np.array([50, 55, 53])
    t = d.mean() / np.sqrt((1 / 3 + 20 / 80) * d.var(ddof=1))
    p = 2 * stats.t.sf(abs(t), 2)
    assert f"p={p:.3f}" in view["tests"][0]["MAE (px)"] and "(n=3)" in view["tests"][0]["MAE (px)"]
    mae = next(x for x in view["verdict"].split("; ") if x.startswith("ResNet18 pruned at b3"))
    assert ("significantly better" if p < 0.05 else "no significant difference") in mae
    assert "-11.33" in mae and "better in 3/3 replicates" in mae
    assert "kappa no significant difference" in view["verdict"]
    assert "better in 2/3 replicates" in view["verdict"]
    worse = summarise(TINY, ["b3", "none"], [1, 2, 3], results, {k: "done" for k in results},
                      tmp_path)
    assert p < 0.05 and "MAE (px) significantly worse: +11.33" in worse.verdict()
    # the same seeds on ONE split measure optimiser noise: never a verdict
    one = {k: {**v, "config": {**v["config"], "split_seed": 0}} for k, v in results.items()}
    same = summarise(TINY, ["none", "b3"], [1, 2, 3], one, {k: "done" for k in one}, tmp_path)
    assert "not testable" in same.verdict() and "significantly" not in same.verdict()
    assert len(view["paper"]) == 4 and "not this run's" in view["paper_source"]
    assert comp.to_dict()["paper"]["rows"][1]["mae"] == (54.93, 4.32)

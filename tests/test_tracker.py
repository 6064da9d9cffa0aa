"""The tracker's data (rcvcore.runs.tracker) against pandas: smoothing, bands over seeds, the
runs table and its filter, colours that do not depend on what is shown, the config diff."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rcvcore.runs.directory import RunState
from rcvcore.runs.groups import list_groups
from rcvcore.runs.tracker import (
    assign_colours,
    band,
    config_diff,
    curves,
    ema,
    filter_rows,
    metric_label,
    runs_table,
    smooth,
)

PALETTE = [f"#{i:06x}" for i in range(0, 24 * 9000, 9000)]


def _run(name, cut, seed, rng, steps=12, epochs=3, state="done"):
    recs = [{"kind": "step", "global_step": s, "epoch": 1 + s // 4, "loss": float(rng.random()),
             "lr": 1e-4} for s in range(1, steps + 1)]
    recs += [{"kind": "epoch", "epoch": e, "global_step": 4 * e, "train_loss": float(rng.random()),
              "val_loss": float(rng.random()), "val_mae": float(rng.random() * 50),
              "train_loss_partial": True} for e in range(1, epochs + 1)]
    recs.insert(3, {"kind": "step", "global_step": 99, "loss": float("nan")})
    return RunState(f"/r/g1/{name}", {"cut": cut, "seed": seed, "arch": "resnet18"},
                    {"state": state}, recs, None)


@pytest.mark.parametrize("w", [0.0, 0.6, 0.95])
def test_ema_is_tensorboards_debiased_average(rng, w):
    v = rng.normal(size=50).cumsum()
    v[[7, 20]] = np.nan
    ours = ema(v, w)
    ref = pd.Series(v).ewm(alpha=1 - w, adjust=True, ignore_na=True).mean().to_numpy() \
        if w > 0 else v
    ok = np.isfinite(v)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-12)
    assert np.isnan(ours[~ok]).all()
    with pytest.raises(ValueError, match="smoothing weight"):
        ema(v, 1.0)


def test_curves_smoothing_and_band_match_pandas(rng):
    runs = [_run(f"{c}_seed{s}", c, s, rng) for c in ("none", "add_4") for s in (1, 2, 3)]
    steps = pd.DataFrame(curves(runs, "step"))
    assert set(steps["metric"]) == {"loss"} and steps["value"].notna().all()
    assert len(steps) == 6 * 12                       # the NaN record is dropped
    ep = pd.DataFrame(curves(runs, "epoch"))
    assert set(ep["metric"]) == {"train_loss", "val_loss", "val_mae"}
    assert set(ep.loc[ep.metric == "val_mae", "label"]) == {"val MAE (px)"}
    # smoothing per (run, metric) along the step axis
    sm = pd.DataFrame(smooth(curves(runs, "step"), 0.8))
    for _, part in sm.groupby("run"):
        part = part.sort_values("step")
        ref = part["raw"].ewm(alpha=0.2, adjust=True).mean()
        np.testing.assert_allclose(part["value"], ref, rtol=1e-12)
    # mean ± sample std per cut over seeds
    b = pd.DataFrame(band(curves(runs, "epoch")))
    ref = ep.groupby(["cut", "metric", "step"])["value"].agg(["mean", "std", "count"])
    got = b.set_index(["cut", "metric", "step"]).sort_index()
    np.testing.assert_allclose(got["mean"], ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], ref["std"], rtol=1e-12)
    assert (got["n"] == ref["count"]).all()
    one = band(curves(runs[:1], "step"))
    assert all(r["std"] is None and r["n"] == 1 for r in one)


def test_colours_depend_on_the_run_only():
    keys = [f"g{g}/cut{c}_seed{s}" for g in range(3) for c in range(2) for s in range(3)]
    full = assign_colours(keys, PALETTE)
    assert len(set(full.values())) == len(keys)          # 18 runs, 24 colours: all differ
    # adding newer runs never changes an older run's colour
    more = assign_colours(keys + ["g9/new_seed1", "g9/new_seed2"], PALETTE)
    assert all(more[k] == full[k] for k in keys)
    assert metric_label("loss") == "loss" and metric_label("val_kappa") == "val kappa"


def test_runs_table_filter_and_config_diff(tmp_path):
    for group, run, state, cut, mae in [("g1", "none_seed1", "done", "none", 60.5),
                                        ("g1", "add_4_seed1", "failed", "add_4", None),
                                        ("g2", "add_2_seed7", "running", "add_2", None)]:
        d = tmp_path / group / run
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(
            {"arch": "resnet18", "cut": cut, "seed": int(run[-1]), "lr": 1e-4,
             "dataset_options": {"n": 5}}))
        (d / "status.json").write_text(json.dumps({"state": state, "pid": None}))
        if mae is not None:
            (d / "result.json").write_text(json.dumps({"test": {"mae": mae, "kappa": 0.4}}))
    rows = runs_table(list_groups(tmp_path))
    assert {r["run"] for r in rows} == {"g1/none_seed1", "g1/add_4_seed1", "g2/add_2_seed7"}
    by = {r["run"]: r for r in rows}
    assert by["g1/none_seed1"]["test_mae"] == 60.5 and by["g1/add_4_seed1"]["test_mae"] is None
    assert by["g2/add_2_seed7"]["cut"] == "add_2"
    # the filter agrees with pandas' case-insensitive substring search, every word
    df = pd.DataFrame(rows).drop(columns="run_dir")
    for text in ("add", "ADD_4", "g1 done", "resnet18", "nothing-like-this"):
        hay = df.apply(lambda r: " ".join("" if pd.isna(v) else str(v) for v in r),
                       axis=1).str.lower()
        want = set(df.loc[np.logical_and.reduce(
            [hay.str.contains(w, regex=False) for w in text.lower().split()]), "run"])
        assert {r["run"] for r in filter_rows(rows, text)} == want, text
    assert [r["run"] for r in filter_rows(rows, states=["failed"])] == ["g1/add_4_seed1"]
    # config diff: differing keys first, nested keys flattened
    a = rows[0]
    diff = config_diff({"cut": "none", "lr": 1e-4, "opt": {"n": 5}},
                       {"cut": "add_4", "lr": 1e-4, "opt": {"n": 6}, "seed": 2})
    assert [(r["key"], r["same"]) for r in diff] == [
        ("cut", False), ("opt.n", False), ("seed", False), ("lr", True)]
    assert [r["key"] for r in config_diff(a, a, only_different=True)] == []


def test_cli_runs_curves_csv(tmp_path, rng, capsys):
    from rcvcore.cli import main
    from rcvcore.runs.writer import RunWriter

    for name in ("a_seed1", "a_seed2"):
        (tmp_path / "g" / name).mkdir(parents=True)
        w = RunWriter(tmp_path / "g" / name)
        for s in (1, 2, 3):
            w.log({"kind": "step", "global_step": s, "epoch": 1, "loss": float(rng.random())})
        w.log({"kind": "epoch", "epoch": 1, "global_step": 3, "train_loss": 0.5,
               "val_mae": 12.5})
        w.write_status(state="done", pid=None)
    out = tmp_path / "curves.csv"
    assert main(["runs", str(tmp_path), "--curves", str(out)]) == 0
    got = pd.read_csv(out)
    assert len(got) == 2 * (3 + 2)
    assert set(got["kind"]) == {"step", "epoch"} and set(got["run"]) == {"g/a_seed1", "g/a_seed2"}
    mae = got[got.metric == "val_mae"]
    assert list(mae["value"]) == [12.5, 12.5] and set(mae["label"]) == {"val MAE (px)"}
    lines = (tmp_path / "g/a_seed1/metrics.jsonl").read_text().splitlines()
    written = [json.loads(x) for x in lines]
    np.testing.assert_allclose(got[(got.run == "g/a_seed1") & (got.kind == "step")]["value"],
                               [r["loss"] for r in written if r["kind"] == "step"])

"""AppTest of the Train page's tracker on run directories written by RunWriter (the training
process's own writer): stable colours, legends, hover, smoothing, log axis, bands, CSV, the
table of every run and the config diff."""
from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
from _train_fixtures import TINY
from conftest import widget as _w
from streamlit.testing.v1 import AppTest

from rcvcore.runs.writer import RunWriter

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def _write_runs(root: Path, rng) -> None:
    """Group g1 (older): 2 cuts x 2 seeds, done; group g2: one failed run."""
    for group, cuts, seeds, state in (("g1", ("none", "add_4"), (1, 2), "done"),
                                      ("g2", ("add_2",), (7,), "failed")):
        for cut in cuts:
            for seed in seeds:
                (root / group / f"{cut}_seed{seed}").mkdir(parents=True)
                w = RunWriter(root / group / f"{cut}_seed{seed}")
                w.write_config(dataclasses.replace(TINY, cut=cut, seed=seed), "test")
                for s in range(1, 9):
                    w.log({"kind": "step", "epoch": 1 + (s - 1) // 4, "step": s,
                           "global_step": s, "loss": float(2.0 / s + rng.random() * 0.1)})
                for e in (1, 2):
                    w.log({"kind": "epoch", "epoch": e, "global_step": 4 * e,
                           "train_loss": float(rng.random()), "val_loss": float(rng.random()),
                           "val_mae": float(40 + rng.random())})
                w.write_status(state=state, pid=None, epoch=2)
                if state == "done":
                    w.write_result({"test": {"mae": float(50 + seed), "kappa": 0.5}})


def _arr(v) -> np.ndarray:
    """A plotly JSON array (a list, or a typed array ``{"dtype", "bdata"}``) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


def _figures(at) -> dict:
    return {i: json.loads(c.proto.spec) for i, c in enumerate(at.get("plotly_chart"))}


def test_tracker_curves_table_and_diff(app_env, rng):
    root = app_env / "runs"
    _write_runs(root, rng)
    at = AppTest.from_file(MAIN, default_timeout=30)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    _w(at, "selectbox", "train_group_select").set_value("g1").run()
    figs = list(_figures(at).values())
    assert len(figs) == 2                                  # per step, per epoch
    colour = {}
    for fig in figs:
        assert fig["layout"]["showlegend"] is True
        named = [t for t in fig["data"] if t.get("showlegend") is not False]
        assert sorted(t["name"] for t in named) == ["g1/add_4_seed1", "g1/add_4_seed2",
                                                    "g1/none_seed1", "g1/none_seed2"]
        for t in fig["data"]:
            if "hovertemplate" in t:
                assert t["name"] in t["hovertemplate"] and "step %{x}" in t["hovertemplate"]
                colour.setdefault(t["name"], set()).add(t["line"]["color"])
    # one colour per run, the same in both charts, all different
    assert all(len(c) == 1 for c in colour.values())
    assert len({next(iter(c)) for c in colour.values()}) == 4
    step_loss = {t["name"]: t for t in figs[0]["data"] if "hovertemplate" in t}
    assert "loss" in str(step_loss["g1/none_seed1"]["customdata"][0])

    # smoothing: the drawn curve is pandas' debiased EWM of the raw one
    _w(at, "slider", "curves_g1_smooth").set_value(0.6)
    _w(at, "toggle", "curves_g1_log").set_value(True)
    at.run()
    fig = list(_figures(at).values())[0]
    assert fig["layout"]["yaxis"]["type"] == "log"
    raw = [t for t in fig["data"] if t.get("opacity") == 0.25 and t["legendgroup"] ==
           "g1/none_seed1"][0]
    smooth = [t for t in fig["data"] if t.get("name") == "g1/none_seed1"][0]
    ref = pd.Series(_arr(raw["y"])).ewm(alpha=0.4, adjust=True).mean()
    np.testing.assert_allclose(_arr(smooth["y"]), ref, rtol=1e-9)
    # CSV export of the curves (as shown: smoothed, with the raw values)
    csv_button = next(b for b in at.get("download_button") if "Curves" in b.proto.label)
    assert csv_button is not None

    # mean ± std per cut over the two seeds
    _w(at, "slider", "curves_g1_smooth").set_value(0.0)
    _w(at, "radio", "curves_g1_view").set_value("mean ± std per cut (over seeds)")
    at.run()
    fig = list(_figures(at).values())[1]
    means = {t["name"]: t for t in fig["data"] if t.get("showlegend") is not False}
    assert set(means) == {"cut none", "cut add_4"}
    runs = {p.name: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
            for p in (root / "g1").iterdir()}
    want = np.mean([[r["train_loss"] for r in runs[f"none_seed{s}"] if r["kind"] == "epoch"]
                    for s in (1, 2)], axis=0)
    np.testing.assert_allclose(_arr(means["cut none"]["y"])[:2], want, rtol=1e-9)

    # every run of every group: search and state filter, config diff
    _w(at, "text_input", "all_runs_search").set_value("add_4").run()
    table = next(d.value for d in at.dataframe if "run" in d.value and "test_mae" in d.value)
    assert sorted(table["run"]) == ["g1/add_4_seed1", "g1/add_4_seed2"]
    _w(at, "text_input", "all_runs_search").set_value("").run()
    table = next(d.value for d in at.dataframe if "run" in d.value and "test_mae" in d.value)
    assert len(table) == 5 and set(table["state"]) == {"done", "failed"}
    _w(at, "selectbox", "all_runs_a").set_value("g1/none_seed1")
    _w(at, "selectbox", "all_runs_b").set_value("g2/add_2_seed7")
    at.run()
    diff = next(d.value for d in at.dataframe if "differs" in d.value)
    assert set(diff["key"]) == {"cut", "seed"} and diff["differs"].all()


def test_panel_titles_name_the_mae_in_the_runs_unit():
    """The tracker's panels: an mpp run's validation MAE panel says log2 µm/px; an mpp and an
    area run in one panel say that each run's measure has its unit."""
    from app.tracker import runs_figure
    from rcvcore.runs.directory import RunState
    from rcvcore.runs.tracker import curves

    def run(name, target):
        return RunState(f"/r/g/{name}", {"cut": "none", "seed": 0, "target": target},
                        {"state": "done"}, [{"kind": "epoch", "epoch": e, "global_step": 4 * e,
                                             "val_mae": 0.5 / e} for e in (1, 2)], None)

    def titles(runs):
        recs = curves(runs, "epoch", fields=("val_mae",))
        fig = runs_figure(recs, {})
        return [a.text for a in fig.layout.annotations], {t.customdata[0][0] for t in fig.data}

    assert titles([run("m", "mpp")]) == (["val MAE (log2 µm/px)"], {"val MAE (log2 µm/px)"})
    t, hover = titles([run("m", "mpp"), run("a", "nuclei-area")])
    assert t == ["val MAE (units of each run's measure)"]
    assert hover == {"val MAE (log2 µm/px)", "val MAE (px)"}

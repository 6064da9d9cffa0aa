"""rcvcore.metrics: the test metrics against scikit-learn, and the one registry of their names
that Table 2, the CLI tables and the pages read."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score, mean_absolute_error

from rcvcore import metrics
from rcvcore.comparison import summarise
from rcvcore.metrics import METRICS, Metric, metric_names, metric_summary, register_metric
from rcvcore.runs.config import TrainConfig


@pytest.fixture
def extra_metric():
    """A metric registered for one test: ``"mdae"`` (median absolute error, lower is better)."""
    m = register_metric(Metric("mdae", "MdAE (px)", "regression", higher_is_better=False,
                               decimals=1))
    yield m
    del metrics.METRICS["mdae"]


def _results(name, base, pruned):
    """``result.json`` contents of paired runs, one group split per replicate (seed)."""
    def run(s, v):
        return {"task": {"kind": "regression"}, "test": {"mae": 1.0, name: v},
                "config": {"split_seed": s}, "n_train": 70, "n_test": 30}

    return {**{("none", s): run(s, v) for s, v in enumerate(base)},
            **{("c", s): run(s, v) for s, v in enumerate(pruned)}}


def test_the_registry_refuses_a_duplicate_and_an_unknown_task():
    with pytest.raises(ValueError, match="'mae' is already registered"):
        register_metric(Metric("mae", "MAE", "regression", higher_is_better=False))
    with pytest.raises(ValueError, match="task must be one of"):
        register_metric(Metric("auc", "AUC", "ranking", higher_is_better=True))
    assert "auc" not in METRICS


def test_tasks_select_the_metrics_a_run_reports():
    # a classification run has no MAE; a regression run maps its areas to classes too
    assert not {"mae", "r2"} & set(metric_names("classification"))
    assert set(metric_names("classification")) < set(metric_names("regression"))
    assert set(metric_names(listed=True)) <= set(metric_names())


def test_one_entry_adds_a_metric_to_table2_and_its_verdict(extra_metric, tmp_path):
    base, pruned = [10.0, 12.0, 11.0], [7.0, 8.5, 8.0]
    comp = summarise(TrainConfig(arch="resnet18", weights="random"), ["none", "c"], [0, 1, 2],
                     _results("mdae", base, pruned), {}, tmp_path)
    assert "mdae" in comp.metrics
    row = comp.rows[0]["metrics"]["mdae"]
    assert row["mean"] == pytest.approx(np.mean(base))
    assert row["std"] == pytest.approx(np.std(base, ddof=1))
    test = comp.tests[0]["metrics"]["mdae"]
    assert test["t_p"] == pytest.approx(stats.ttest_rel(pruned, base).pvalue)
    # the Nadeau-Bengio corrected paired t over the 3 splits, computed here from its formula
    d = np.subtract(pruned, base)
    t = d.mean() / np.sqrt((1 / 3 + 30 / 70) * d.var(ddof=1))
    assert test["p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    view = comp.view()
    assert view["measured"][0]["MdAE (px)"] == f"{np.mean(base):.1f} ({np.std(base, ddof=1):.1f})"
    # lower is better: the pruned network's smaller errors are "better" in every replicate
    assert test["verdict"] == "significantly better" and "better in 3/3 replicates" in \
        view["verdict"]
    assert f"MdAE (px) {test['verdict']}: {d.mean():+.1f} [" in view["verdict"]
    assert "MdAE (px)" in comp.table().splitlines()[0]


def test_direction_comes_from_the_registry():
    """The same numbers are better for a score and worse for an error."""
    up = Metric("s", "S", "classification", higher_is_better=True)
    down = Metric("e", "E", "regression", higher_is_better=False)
    assert up.sign * (0.9 - 0.8) > 0 and down.sign * (0.9 - 0.8) < 0


def test_summary_formats_with_each_metrics_decimals():
    y, p = np.array([10.0, 20.0, 31.0]), np.array([12.0, 19.0, 30.0])
    t = metrics.regression_metrics(y, p)
    assert t["mae"] == pytest.approx(mean_absolute_error(y, p))
    k = metrics.classification_metrics(["a", "b", "b"], ["a", "b", "a"], ["a", "b"])
    assert k["kappa"] == pytest.approx(cohen_kappa_score(["a", "b", "b"], ["a", "b", "a"]))
    text = metric_summary({**t, **k, "accuracy": True})   # a bool is not a number here
    assert text.startswith(f"mae {mean_absolute_error(y, p):.2f}, r2 ")
    assert f"kappa {k['kappa']:.3f}" in text and "accuracy" not in text


def test_the_mae_is_named_in_the_unit_of_the_runs_measure(tmp_path):
    """An ``mpp`` run's MAE is in log2 µm/px, not px: Table 2, the tracker's curves and the
    runs listing say so; runs of measures in different units shown together say that."""
    from rcvcore.runs.directory import RunState
    from rcvcore.runs.tracker import curves, metric_label

    mae = METRICS["mae"]
    assert mae.label_for(None) == mae.label_for("nuclei-area") == "MAE (px)"
    assert mae.label_for("mpp") == "MAE (log2 µm/px)"
    assert mae.label_for(["mpp", "magnification"]) == "MAE (log2 µm/px)"   # no MAE there
    assert mae.label_for(["mpp", "nuclei-area"]) == "MAE (units of each run's measure)"
    assert mae.label_for(["mpp", "nuclei-area"], short=True) == "MAE"
    assert mae.label_for("mpp", short=True) == "MAE log2 µm/px"
    assert METRICS["kappa"].label_for("mpp") == "kappa"
    comp = summarise(TrainConfig(arch="resnet18", weights="random", target="mpp"),
                     ["none", "c"], [0, 1, 2], _results("r2", [0.1, 0.2, 0.3], [0.2, 0.3, 0.4]),
                     {}, tmp_path)
    assert "MAE (log2 µm/px)" in comp.table().splitlines()[0]
    assert "MAE (px)" not in comp.table()
    assert "MAE (log2 µm/px)" in comp.view()["measured"][0]
    assert "MAE (px)" in comp.view()["paper"][0]                 # the paper's numbers are px
    assert metric_label("val_mae", "mpp") == "val MAE (log2 µm/px)"
    run = RunState("/r/g/mpp_run", {"cut": "none", "seed": 0, "target": "mpp"}, {"state": "done"},
                   [{"kind": "epoch", "epoch": 1, "global_step": 4, "val_mae": 0.3}], None)
    assert {r["label"] for r in curves([run], "epoch")} == {"val MAE (log2 µm/px)"}


def test_the_runs_listing_heads_the_mae_in_the_listed_runs_unit(tmp_path, capsys):
    """``python -m rcvcore runs``: mpp runs only -> ``MAE log2 µm/px``; with an area run as
    well -> ``MAE`` (the target column says which measure each row's value is in)."""
    import json

    from rcvcore.cli import main

    def write(name, target, mae):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"arch": "resnet18", "cut": "none",
                                                   "seed": 0, "target": target, "epochs": 1}))
        (d / "status.json").write_text(json.dumps({"state": "done"}))
        (d / "result.json").write_text(json.dumps({"test": {"mae": mae}}))

    write("a_mpp", "mpp", 0.31)
    assert main(["runs", str(tmp_path)]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "MAE log2 µm/px" in head and "MAE px" not in head
    write("b_area", "nuclei-area", 54.2)
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert " MAE " in out[0] + " " and "px" not in out[0]
    assert "0.31" in out[1] and "54.20" in out[2]

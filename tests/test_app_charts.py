"""Pure tests of the dashboard's figures and tables (no Streamlit session needed)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("plotly")
from app import charts  # noqa: E402


def _result(arch="resnet18", layers=("add_1", "add_2", "pre_softmax"), shift=0.0, tests=None):
    """A ScanResult: R² mean 0.2 + shift + i/10 (std 0.1) per layer, a shuffled control at
    -1.5, ``tests``: layer -> raw p-values (``p_shuffled``, ``p_random_weights``)."""
    from rcvcore.rcv import LayerScore
    from rcvcore.scan import ScanConfig, ScanResult

    def score(name, mean):
        return LayerScore(name, 64, (mean - 0.1, mean + 0.1))

    return ScanResult(
        config=ScanConfig(arch=arch, weights="random", dataset="demo-scale"),
        dataset="demo-scale", measure_name="scale", n_images=24, skipped=(),
        layers=tuple(score(n, 0.2 + shift + i / 10) for i, n in enumerate(layers)),
        controls={"shuffled": tuple(score(n, -1.5) for n in layers)},
        depth={n: i / (len(layers) - 1) for i, n in enumerate(layers)}, tests=tests or {})


def _rec(**kw):
    return _result(**kw)


def test_mean_band_controls_and_click_payload():
    fig = charts.r2_figure([_rec()], selected="add_2", suggested="add_1")
    names = [t.name for t in fig.data]
    assert "resnet18 · random · demo-scale" in names
    assert any("control: shuffled labels" in (n or "") for n in names)
    assert not any("random weights" in (n or "") for n in names)  # empty control: no trace
    main = next(t for t in fig.data if t.name == "resnet18 · random · demo-scale")
    assert [list(c)[:2] for c in main.customdata] == [[0, "add_1"], [0, "add_2"],
                                                      [0, "pre_softmax"]]
    assert any(t.fill == "tonexty" for t in fig.data)  # the ± std band
    assert fig.layout.xaxis.type == "category"
    # y clipped at -1 because the control goes to -1.5
    assert fig.layout.yaxis.range[0] == pytest.approx(-1.05)


def test_paper_convention_uses_logmeanexp_and_no_band():
    fig = charts.r2_figure([_rec()], convention=charts.PAPER, show_controls=False)
    main = next(t for t in fig.data if t.name == "resnet18 · random · demo-scale")
    # ln(mean(exp R²)) of each layer's two repeats, not their mean
    assert list(main.y) == [pytest.approx(np.log(np.mean(np.exp([m - 0.1, m + 0.1]))))
                            for m in (0.2, 0.3, 0.4)]
    assert not any(t.fill == "tonexty" for t in fig.data)


def test_overlay_of_two_architectures_uses_normalised_depth():
    fig = charts.r2_figure([_rec(), _rec(arch="resnet50", layers=("add_1", "add_8", "add_16",
                                                                  "pre_softmax"))])
    assert fig.layout.xaxis.title.text == "normalised depth"
    xs = [list(t.x) for t in fig.data if t.mode == "lines+markers" and "control" not in t.name]
    assert xs[0] == [0.0, 0.5, 1.0] and xs[1][-1] == 1.0


def test_table_columns_and_training_figure():
    table = charts.r2_table(_result())
    assert list(table["layer"]) == ["add_1", "add_2", "pre_softmax"]
    assert "shuffled labels R²" in table.columns
    fig = charts.training_figure([{"run": "a", "global_step": i, "loss": 1 / (i + 1)}
                                  for i in range(5)], x_key="global_step")
    assert len(fig.data) == 1 and len(fig.data[0].x) == 5
    html = charts.figure_html(fig)
    assert "<html>" in html and len(html) > 1_000_000  # plotly.js embedded: works offline
    assert '<script src="https://cdn' not in html


def test_significant_layers_get_filled_markers_and_table_columns():
    # raw p vs shuffled (0.02/3, 0.4, 0.4): Benjamini-Hochberg over 3 layers gives 0.02, 0.4, 0.4
    res = _result(tests={layer: {"p_shuffled": p, "p_random_weights": 0.01}
                         for layer, p in zip(("add_1", "add_2", "pre_softmax"),
                                             (0.02 / 3, 0.4, 0.4))})
    fig = charts.r2_figure([res])
    main = next(t for t in fig.data if t.name == "resnet18 · random · demo-scale")
    assert list(main.marker.symbol) == ["circle", "circle-open", "circle-open"]
    assert "significant (p vs shuffled 0.02" in main.customdata[0][2]
    assert any(t.name == "significant vs controls" for t in fig.data)
    table = charts.r2_table(res)
    assert list(table["significant"]) == [True, False, False]
    assert list(table["p vs shuffled (BH)"]) == pytest.approx([0.02, 0.4, 0.4])
    # an old result without tests: plain markers, no legend entries, no columns
    fig = charts.r2_figure([_rec()])
    assert not any(t.name == "significant vs controls" for t in fig.data)
    assert "significant" not in charts.r2_table(_result()).columns


def test_empty_r2_figure_has_the_layer_axis_and_no_points():
    fig = charts.empty_r2_figure(["add_1", "add_2", "pre_softmax"])
    assert len(fig.data) == 0
    assert list(fig.layout.xaxis.categoryarray) == ["add_1", "add_2", "pre_softmax"]
    assert list(fig.layout.xaxis.range) == [-0.5, 2.5]
    assert fig.layout.yaxis.title.text == "R² (held-out)"
    assert len(charts.empty_r2_figure([]).data) == 0  # no layer chosen yet: still an axis

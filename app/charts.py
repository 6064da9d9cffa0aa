"""Plotly figures and tables of the dashboard. Pure functions of rcvcore's results (a
:class:`rcvcore.scan.ScanResult` as it is); no science here.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:   # the charts only read a result: rcvcore.scan (torch) loads with the pages
    from rcvcore.rcv import LayerScore
    from rcvcore.scan import ScanResult

# Okabe-Ito: distinguishable for colour-blind readers and in greyscale print
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000"]
CONTROL_NAMES = {"shuffled": "shuffled labels", "random_weights": "random weights"}
CONTROL_DASH = {"shuffled": "dot", "random_weights": "dash"}

SIG_SYMBOL, NOT_SIG_SYMBOL = "circle", "circle-open"

MEAN = "mean ± std"
PAPER = "paper: ln(mean(exp R²))"
CONVENTIONS = (MEAN, PAPER)

# Plotly's modebar camera saves a PNG in the browser (no server-side renderer needed)
# the R² chart's frame, shared by the empty chart drawn before any scan
R2_FRAME = {"height": 460, "margin": {"l": 60, "r": 20, "t": 40, "b": 60}}
R2_YTITLE = "R² (held-out)"

PLOTLY_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "filename": "rcv-scan", "scale": 2},
}


def _y(score: LayerScore, convention: str) -> float:
    return float(score.logmeanexp if convention == PAPER else score.mean)


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def significance_text(sig: dict, alpha: float) -> str:
    """One line for the hover: each test's adjusted p-value and the verdict, from one layer's
    entry of :meth:`ScanResult.significance` at level ``alpha``."""
    parts = []
    for key, name in (("shuffled", "shuffled"), ("random_weights", "random weights")):
        t = sig.get(key)
        if t and t.get("p_adjusted") is not None:
            parts.append(f"p vs {name} {t['p_adjusted']:.3g}")
    if not parts:
        return "no significance test"
    verdict = "significant" if sig.get("significant") else "not significant"
    return f"{verdict} ({', '.join(parts)}; BH, alpha {alpha:g})"


def scan_label(result: ScanResult) -> str:
    """The one label of a scan: ``arch · weights · dataset``."""
    return f"{result.config.arch} · {result.config.weights} · {result.dataset}"


def _depths(result: ScanResult, scores) -> list:
    return [result.depth.get(s.layer, k / max(len(scores) - 1, 1)) for k, s in enumerate(scores)]


def r2_figure(scans: list[ScanResult], labels: list[str] | None = None, *,
              convention: str = MEAN, show_controls: bool = True,
              depth_axis: bool = False, clip_at: float | None = -1.0,
              selected: str | None = None, suggested: str | None = None) -> go.Figure:
    """R² per layer of one or more scans.

    Args:
        scans: scan results; the first is the primary one (its layers can be clicked to cut).
        labels: their legend names (default: :func:`scan_label`).
        convention: :data:`MEAN` (mean with a ± std band) or :data:`PAPER` (log-mean-exp).
        show_controls: draw the controls (shuffled labels, random weights) as dashed traces.
        depth_axis: x is each layer's normalised depth in [0, 1] (needed to overlay different
            architectures); otherwise the layer names of the primary scan, in order.
        clip_at: lower limit of the y axis (least squares goes far below zero in early layers);
            None shows everything.
        selected: layer of the primary scan to mark as the chosen cut.
        suggested: layer of the primary scan to mark as the suggested cut.
    """
    fig = go.Figure()
    depth_axis = depth_axis or len({s.config.arch for s in scans}) > 1
    labels = labels or [scan_label(s) for s in scans]
    all_y: list[float] = []
    for i, (res, label) in enumerate(zip(scans, labels, strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        rows = res.layers
        names = [r.layer for r in rows]
        depth = dict(zip(names, _depths(res, rows)))
        xs = list(depth.values()) if depth_axis else names
        ys = [_y(r, convention) for r in rows]
        all_y += ys
        if convention == MEAN and rows:
            std = [r.std for r in rows]
            upper = [y + s for y, s in zip(ys, std)]
            lower = [y - s for y, s in zip(ys, std)]
            fig.add_trace(go.Scatter(x=xs, y=upper, mode="lines", line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=label))
            fig.add_trace(go.Scatter(x=xs, y=lower, mode="lines", line={"width": 0},
                                     fill="tonexty", fillcolor=_rgba(colour, 0.18),
                                     hoverinfo="skip", name=f"{label} ± std",
                                     showlegend=False, legendgroup=label))
        tests = res.significance()
        sig = [tests[n]["significant"] for n in names]
        tested = any(s is not None for s in sig)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=label, legendgroup=label,
            line={"color": colour, "width": 2.5},
            # filled: significantly above every control tested; open: not significant
            marker={"size": 9, "symbol": [SIG_SYMBOL if s or not tested else NOT_SIG_SYMBOL
                                          for s in sig],
                    "line": {"color": colour, "width": 2}},
            customdata=[[i, n, significance_text(tests[n], res.config.alpha)] for n in names],
            hovertemplate="<b>%{customdata[1]}</b><br>R² %{y:.3f}<br>%{customdata[2]}<extra>"
                          + label + "</extra>"))
        if tested and i == 0:
            # legend entries explaining the markers of the primary scan
            for symbol, text in ((SIG_SYMBOL, "significant vs controls"),
                                 (NOT_SIG_SYMBOL, "not significant")):
                fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=text,
                                         marker={"size": 9, "symbol": symbol, "color": colour,
                                                 "line": {"color": colour, "width": 2}},
                                         hoverinfo="skip", legendgroup="significance"))
        if show_controls:
            for key, ctrl_rows in res.controls.items():
                if not ctrl_rows:
                    continue
                cy = [_y(r, convention) for r in ctrl_rows]
                all_y += cy
                cx = [depth.get(r.layer, res.depth.get(r.layer, 0.0)) if depth_axis else r.layer
                      for r in ctrl_rows]
                fig.add_trace(go.Scatter(
                    x=cx, y=cy, mode="lines+markers",
                    name=f"{label} — control: {CONTROL_NAMES.get(key, key)}",
                    legendgroup=label,
                    line={"color": colour, "width": 1.5, "dash": CONTROL_DASH.get(key, "dashdot")},
                    marker={"size": 5, "symbol": "x"},
                    customdata=[[i, r.layer] for r in ctrl_rows],
                    hovertemplate="<b>%{customdata[1]}</b><br>R² %{y:.3f}<extra>control: "
                                  + CONTROL_NAMES.get(key, key) + "</extra>"))
    if scans:
        by_name = dict(zip((r.layer for r in scans[0].layers),
                           _depths(scans[0], scans[0].layers)))
        _shade_plateau(fig, scans[0], by_name, depth_axis)
        for layer, text, colour in ((suggested, "suggested", "#777777"),
                                    (selected, "cut", "#C00000")):
            if layer in by_name:
                x = by_name[layer] if depth_axis else layer
                fig.add_vline(x=x if depth_axis else list(by_name).index(layer), line_dash="dot",
                              line_color=colour, annotation_text=f"{text}: {layer}",
                              annotation_position="top left" if text == "cut" else "bottom left")
    finite = [y for y in all_y if y is not None and math.isfinite(y)]
    yaxis = {"title": R2_YTITLE if convention == MEAN else "ln(mean(exp R²))",
             "zeroline": True, "zerolinecolor": "#999"}
    if finite and clip_at is not None and min(finite) < clip_at:
        yaxis["range"] = [clip_at - 0.05, max(1.0, max(finite)) + 0.05]
    fig.update_layout(
        xaxis={"title": "normalised depth" if depth_axis else "layer",
               **({"range": [-0.03, 1.03]} if depth_axis else {"type": "category"})},
        yaxis=yaxis, hovermode="closest", **R2_FRAME,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        clickmode="event+select", dragmode=False)
    return fig


def _shade_plateau(fig: go.Figure, result: ScanResult, depth: dict[str, float],
                   depth_axis: bool) -> None:
    """Shade the primary scan's plateau: the layers not significantly below its peak
    (``depth``: layer -> x on the depth axis, in the scan's order)."""
    plat = result.plateau() or {}
    names = list(depth)
    for k, layer in enumerate(l for l in plat.get("layers", []) if l in depth):
        x = depth[layer] if depth_axis else names.index(layer)
        half = 0.015 if depth_axis else 0.5
        fig.add_vrect(x0=x - half, x1=x + half, fillcolor="#2E7D32", opacity=0.08,
                      line_width=0, layer="below",
                      **({"annotation_text": f"plateau ({len(plat['layers'])})",
                          "annotation_position": "top left"} if k == 0 else {}))


def empty_r2_figure(layers: list[str]) -> go.Figure:
    """The R² chart's axes before any scan: the layers to be probed, no points.

    Drawn in the "no scan yet" state so that the browser loads plotly with the page, not
    after the first scan has finished (it is fetched lazily with the first chart: ~1.3 s here).
    """
    fig = go.Figure()
    fig.update_layout(
        xaxis={"title": "layer", "type": "category", "categoryorder": "array",
               "categoryarray": list(layers), "range": [-0.5, max(len(layers), 1) - 0.5]},
        yaxis={"title": R2_YTITLE, "range": [-1.05, 1.05], "zeroline": True,
               "zerolinecolor": "#999"},
        **R2_FRAME, dragmode=False,
        annotations=[{"text": "R² per layer appears here after a scan", "showarrow": False,
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"color": "#777", "size": 14}}])
    return fig


def r2_table(result: ScanResult) -> pd.DataFrame:
    """One row per layer: depth, features, R² mean/std/paper convention and the controls."""
    rows = []
    # both controls' columns, empty when a control was not run (as the scan's JSON has them)
    ctrl = {k: {r.layer: r for r in result.controls.get(k, ())} for k in CONTROL_NAMES}
    sig, plat = result.significance(), result.plateau()
    tested = any(t["significant"] is not None for t in sig.values())
    freq = result.peak_frequency() if plat else {}
    for r in result.layers:
        row = {"layer": r.layer, "depth": result.depth.get(r.layer), "features": r.n_features,
               "R² mean": r.mean, "R² std": r.std, "ln mean exp R² (paper)": r.logmeanexp}
        for key, by_name in ctrl.items():
            c = by_name.get(r.layer)
            row[f"{CONTROL_NAMES.get(key, key)} R²"] = None if c is None else c.mean
        s = sig[r.layer]
        for key, name in (("shuffled", "p vs shuffled (BH)"),
                          ("random_weights", "p vs random weights (BH)")):
            if s.get(key):
                row[name] = s[key]["p_adjusted"]
        if tested:
            row["significant"] = s["significant"]
        if plat:
            row["on plateau"] = r.layer in plat["layers"]
            row["peak frequency"] = freq.get(r.layer)
        rows.append(row)
    return pd.DataFrame(rows)


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML file of the chart that works offline (plotly.js embedded)."""
    return fig.to_html(include_plotlyjs=True, full_html=True, config=PLOTLY_CONFIG)


def training_figure(metrics: list[dict], *, x_key: str = "step") -> go.Figure:
    """Loss and metric curves of one or more runs.

    ``metrics`` rows are ``{"run", x_key, <name>: value ...}`` (metrics.jsonl lines tagged with
    their run). Each numeric column other than the x axis gets its own subplot row.
    """
    from plotly.subplots import make_subplots

    df = pd.DataFrame(metrics)
    skip = {"run", x_key, "time", "epoch", "step", "phase", "split", "elapsed_s", "lr"}
    cols = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    loss_cols = [c for c in cols if "loss" in c]
    # pixel errors (MAE ~ tens of px) and unitless scores (kappa, accuracy, R² ~ [-1, 1]) get
    # separate panels so neither is squashed flat by the other's scale
    px_cols = [c for c in cols if c not in loss_cols and ("mae" in c or "rmse" in c)]
    other = [c for c in cols if c not in loss_cols and c not in px_cols]
    named = [(p, t) for p, t in ((loss_cols, "loss"), (px_cols, "error (px)"),
                                 (other, "kappa / accuracy / R²")) if p]
    panels = [p for p, _ in named] or [[]]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[t for _, t in named] or ["metrics"])
    runs = list(dict.fromkeys(df["run"])) if "run" in df else [None]
    for ri, run in enumerate(runs):
        part = df[df["run"] == run] if run is not None else df
        colour = PALETTE[ri % len(PALETTE)]
        for pi, panel in enumerate(panels, start=1):
            for ci, col in enumerate(panel):
                d = part[[x_key, col]].dropna() if x_key in part else part[[col]].dropna()
                if d.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=d[x_key] if x_key in d else list(range(len(d))), y=d[col],
                    mode="lines+markers" if len(d) < 40 else "lines",
                    name=f"{run} · {col}" if run else col, legendgroup=str(run),
                    line={"color": colour, "dash": ["solid", "dash", "dot", "dashdot"][ci % 4]}),
                    row=pi, col=1)
    fig.update_xaxes(title_text=x_key, row=len(panels), col=1)
    height = 260 * len(panels) + 80
    plot_px = height - 40 - 40
    # the legend starts 60 px under the plots, below the x-axis title (plotly grows the bottom
    # margin to fit it)
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 40, "b": 40},
                      legend={"orientation": "h", "yanchor": "top", "y": -60 / plot_px, "x": 0})
    return fig


def _png_exporter():
    """Server-side PNG export when kaleido is installed; else None (the modebar camera works)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return None
    return lambda fig: fig.to_image(format="png", scale=2, width=1100, height=500)


figure_png = _png_exporter()

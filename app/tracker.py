"""The Train page's tracker: run curves as in TensorBoard / W&B, the table of every run, and
the config diff of two runs. The data comes from :mod:`rcvcore.runs.tracker`; this module only
draws it.

- Each run keeps one colour in every chart (:func:`rcvcore.runs.tracker.assign_colours` over
  every run there is, oldest first); the metric is told by the panel and the line style.
- Every chart has a legend (one entry per run, or per cut in the band view), and the hover
  names the run, the metric, the step and the value.
- Smoothing is TensorBoard's debiased EMA (the raw curve stays, faint); the y axes can be log.
"""
from __future__ import annotations

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from rcvcore.metrics import MEASURE_UNITS, METRICS
from rcvcore.runs.directory import read_run
from rcvcore.runs.tracker import (
    KEY_CONFIG,
    assign_colours,
    band,
    config_diff,
    curves,
    filter_rows,
    metric_label,
    run_key,
    runs_table,
    smooth,
)

#: 48 distinguishable colours: a run keeps its slot however many runs are shown
PALETTE = list(plotly.colors.qualitative.Dark24) + list(plotly.colors.qualitative.Light24)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
VIEWS = ("each run", "mean ± std per cut (over seeds)")


def colours_of(groups: dict[str, list], root) -> dict[str, str]:
    """Run key -> colour, from every run under ``root`` (``{group: [run dirs]}``, newest group
    first as :func:`rcvcore.runs.list_groups` gives them), so colours never depend on which
    runs a chart shows."""
    keys = [run_key(d, root) for _, dirs in reversed(list(groups.items())) for d in dirs]
    return assign_colours(keys, PALETTE)


def _rgba(colour: str, alpha: float) -> str:
    if colour.startswith("rgb"):
        r, g, b = plotly.colors.unlabel_rgb(colour)[:3]
    else:
        r, g, b = plotly.colors.hex_to_rgb(colour)
    return f"rgba({int(r)},{int(g)},{int(b)},{alpha})"


def _titles(df: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Each panel's title: its curves' label (in their runs' measure unit), or, where runs of
    measures in different units share a panel, the label that says so."""
    out = []
    for m in metrics:
        labels = set(df.loc[df["metric"] == m, "label"])
        # (several labels of one metric differ only by unit: every unit at once names the mix)
        out.append(labels.pop() if len(labels) == 1 else metric_label(m, list(MEASURE_UNITS)))
    return out


def _frame(metrics: list[str], log_y: bool, titles: list[str] | None = None) -> go.Figure:
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=titles or [metric_label(m) for m in metrics])
    height = 230 * len(metrics) + 90
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 40, "b": 40},
                      showlegend=True, hovermode="closest",
                      legend={"orientation": "h", "yanchor": "top", "x": 0,
                              "y": -50 / max(height - 80, 1)})
    fig.update_xaxes(title_text="step", row=len(metrics), col=1)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def runs_figure(records: list[dict], colours: dict[str, str], *, log_y: bool = False
                ) -> go.Figure:
    """One panel per metric, one colour per run; smoothed records (``raw`` differs from
    ``value``) also draw the raw curve, faint."""
    df = pd.DataFrame(records)
    metrics = list(dict.fromkeys(df["metric"])) if len(df) else ["loss"]
    fig = _frame(metrics, log_y, _titles(df, metrics) if len(df) else None)
    shown: set[str] = set()
    for run, part in (df.groupby("run", sort=True) if len(df) else []):
        colour = colours.get(run, PALETTE[0])
        for pi, metric in enumerate(metrics, start=1):
            d = part[part["metric"] == metric].sort_values("step")
            if d.empty:
                continue
            label = d["label"].iloc[0]
            if "raw" in d and not (d["raw"] == d["value"]).all():
                fig.add_trace(go.Scatter(
                    x=d["step"], y=d["raw"], mode="lines", showlegend=False,
                    legendgroup=run, hoverinfo="skip", opacity=0.25,
                    line={"color": colour, "width": 1}), row=pi, col=1)
            fig.add_trace(go.Scatter(
                x=d["step"], y=d["value"], name=run, legendgroup=run,
                showlegend=run not in shown, mode="lines+markers" if len(d) < 40 else "lines",
                line={"color": colour, "dash": DASHES[(pi - 1) % len(DASHES)]},
                customdata=list(zip([label] * len(d), d["epoch"])),
                hovertemplate=(f"<b>{run}</b><br>%{{customdata[0]}}<br>step %{{x}} · epoch "
                               "%{customdata[1]}<br>value %{y:.4g}<extra></extra>")),
                row=pi, col=1)
            shown.add(run)
    return fig


def band_figure(rows: list[dict], *, log_y: bool = False) -> go.Figure:
    """Mean ± std over seeds per cut (:func:`rcvcore.runs.tracker.band`), one colour per cut
    (from the cut's name, as runs get theirs)."""
    df = pd.DataFrame(rows)
    metrics = list(dict.fromkeys(df["metric"])) if len(df) else ["loss"]
    fig = _frame(metrics, log_y, _titles(df, metrics) if len(df) else None)
    cuts = sorted({str(c) for c in df["cut"]}) if len(df) else []
    cut_colours = assign_colours([f"cut:{c}" for c in cuts], PALETTE)
    shown: set[str] = set()
    for cut in cuts:
        colour = cut_colours[f"cut:{cut}"]
        part = df[df["cut"].astype(str) == cut]
        for pi, metric in enumerate(metrics, start=1):
            d = part[part["metric"] == metric].sort_values("step")
            if d.empty:
                continue
            std = d["std"].fillna(0.0)
            lo, hi = d["mean"] - std, d["mean"] + std
            fig.add_trace(go.Scatter(
                x=list(d["step"]) + list(d["step"])[::-1], y=list(hi) + list(lo)[::-1],
                fill="toself", fillcolor=_rgba(colour, 0.18), line={"width": 0},
                legendgroup=cut, showlegend=False, hoverinfo="skip"), row=pi, col=1)
            label = d["label"].iloc[0]
            fig.add_trace(go.Scatter(
                x=d["step"], y=d["mean"], name=f"cut {cut}", legendgroup=cut,
                showlegend=cut not in shown, mode="lines",
                line={"color": colour, "dash": DASHES[(pi - 1) % len(DASHES)]},
                customdata=list(zip([label] * len(d), std, d["n"])),
                hovertemplate=(f"<b>cut {cut}</b><br>%{{customdata[0]}}<br>step %{{x}}<br>"
                               "mean %{y:.4g} ± %{customdata[1]:.3g} (n %{customdata[2]} "
                               "seeds)<extra></extra>")), row=pi, col=1)
            shown.add(cut)
    return fig


def curves_panel(runs: list, colours: dict[str, str], *, root, key: str) -> None:
    """The group's curves: controls, the per-step and per-epoch charts, CSV export."""
    steps = curves(runs, "step", root=root)
    epochs = curves(runs, "epoch", root=root)
    if not steps and not epochs:
        return
    c = st.columns([2, 1, 2, 1])
    weight = c[0].slider("Smoothing (EMA, as TensorBoard)", 0.0, 0.99, 0.0, 0.01,
                         key=f"{key}_smooth")
    log_y = c[1].toggle("Log y", key=f"{key}_log")
    seeds = {(r["cut"], r["seed"]) for r in steps + epochs}
    many = len(seeds) > len({cut for cut, _ in seeds})
    view = c[2].radio("Show", VIEWS, horizontal=True, key=f"{key}_view",
                      disabled=not many, help="the band needs at least two seeds of a cut")
    table = pd.DataFrame(smooth(steps, weight) + smooth(epochs, weight))
    c[3].download_button("Curves (CSV)", table.to_csv(index=False), f"curves-{key}.csv",
                         "text/csv", key=f"{key}_csv", icon=":material/download:",
                         on_click="ignore", help="every point of every curve: run, cut, seed, "
                         "metric, step, epoch, value (smoothed as shown) and raw")
    left, right = st.columns(2)
    for col, recs, title in ((left, steps, "Training loss (per step)"),
                             (right, epochs, "Per epoch (train and validation)")):
        with col:
            st.markdown(f"**{title}**")
            if not recs:
                st.caption("Appears after the first epoch.")
                continue
            sm = smooth(recs, weight)
            if many and view == VIEWS[1]:
                fig = band_figure(band(sm), log_y=log_y)
            else:
                fig = runs_figure(sm, colours, log_y=log_y)
            st.plotly_chart(fig, key=f"{key}_{'steps' if recs is steps else 'epochs'}")


def _column_config(targets=None) -> dict:
    """Column titles (the MAE's in the unit of the shown runs' measure) and number formats
    from the metric registry."""
    cfg = {f"test_{m.name}": st.column_config.NumberColumn(
        f"test {m.label_for(targets)}", format=f"%.{m.decimals}f") for m in METRICS.values()}
    cfg["lr"] = st.column_config.NumberColumn("lr", format="%.1e")
    cfg["epochs_done"] = st.column_config.NumberColumn("epochs done")
    return cfg


def runs_overview(groups: dict[str, list], *, state_of=None, key: str = "all_runs") -> None:
    """Every run of every group: search, state filter, sortable columns, config diff."""
    rows = runs_table(groups, state_of=state_of)
    if not rows:
        st.caption("No runs yet.")
        return
    c = st.columns([3, 2])
    text = c[0].text_input("Search runs", key=f"{key}_search",
                           placeholder="words in any column, e.g. add_15 done 1001")
    states = sorted({r["state"] for r in rows})
    # keyed by the states present: when runs move on (running -> done) the filter starts again
    # at every state, instead of keeping a choice whose states no run has any more (which
    # showed "0 of 4 runs" once a watched group had finished)
    chosen = c[1].multiselect("State", states, default=states,
                              key=f"{key}_states_{'-'.join(states)}")
    shown = filter_rows(rows, text, states=chosen)
    cols = ["run", "state", "epochs_done", *KEY_CONFIG, *(f"test_{m}" for m in METRICS)]
    df = pd.DataFrame(shown, columns=cols)
    df = df.dropna(axis=1, how="all") if len(df) else df
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config=_column_config([r.get("target") for r in shown]),
                 key=f"{key}_table")
    st.caption(f"{len(shown)} of {len(rows)} runs · click a column title to sort")
    names = [r["run"] for r in shown] or [r["run"] for r in rows]
    if len(names) < 2:
        return
    st.markdown("**Compare two configurations**")
    c = st.columns(3)
    a = c[0].selectbox("Run A", names, index=0, key=f"{key}_a")
    b = c[1].selectbox("Run B", names, index=1, key=f"{key}_b")
    only = c[2].toggle("Only differences", value=True, key=f"{key}_only")
    by = {r["run"]: r for r in rows}
    diff = config_diff(_config(by[a]), _config(by[b]), only_different=only)
    st.dataframe(pd.DataFrame([{"key": d["key"], a if a != b else "A": _cell(d["a"]),
                                b if a != b else "B": _cell(d["b"]),
                                "differs": not d["same"]} for d in diff]),
                 hide_index=True, width="stretch", key=f"{key}_diff")


def _config(row: dict) -> dict:
    return read_run(row["run_dir"]).config or {}


def _cell(v) -> str:
    """A config value as text (a diff column mixes numbers, strings, lists and None)."""
    return "-" if v is None else str(v)

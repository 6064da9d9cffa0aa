"""The Predict page's results: a compact, sortable grid of prediction cards and their table.

Each card shows the thumbnail, the prediction, and a clear *outside the model's range* marker
with its reasons (:mod:`rcvcore.domain`); probability bars share a fixed 0-1 axis so cards
compare at a glance.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from rcvcore.predict import prediction_row

#: sort orders of the grid: label -> (key of a prediction dict, descending)
SORTS = {
    "upload order": None,
    "outside the model's range first": lambda p: (not p.get("out_of_range"), p["path"]),
    "confidence (lowest first)": lambda p: max((p["probabilities"] or {"": 1.0}).values()),
    "feature distance (farthest first)": lambda p: -(p.get("feature_distance") or 0.0),
    "predicted area (largest first)": lambda p: -(p["nuclei_area"] or 0.0),
    "file name": lambda p: p["path"],
}
COLUMNS = 3
OUTSIDE = "Outside the model's range"


def sort_options(regression: bool) -> list[str]:
    """The sort orders that apply to the run's task."""
    skip = "confidence (lowest first)" if regression else "predicted area (largest first)"
    return [s for s in SORTS if s != skip]


def ordered(preds: list[dict], sort: str) -> list[int]:
    """Indices of ``preds`` in the order ``sort`` (errors last)."""
    key = SORTS.get(sort)
    idx = list(range(len(preds)))
    if key is None:
        return idx
    good = [i for i in idx if not preds[i]["error"]]
    return sorted(good, key=lambda i: key(preds[i])) + [i for i in idx if preds[i]["error"]]


def probability_figure(probs: dict[str, float], height: int = 150) -> go.Figure:
    """Horizontal bars of class probabilities on a fixed 0-1 axis, classes in their order."""
    classes = list(probs)
    fig = go.Figure(go.Bar(x=[probs[c] for c in classes], y=classes, orientation="h",
                           hovertemplate="%{y}: p %{x:.3f}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=8, t=4, b=0), showlegend=False)
    fig.update_xaxes(range=[0, 1], title=None, tickformat=".1f")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def measure_label(measure_name: str) -> str:
    """The card's name of a regression run's measure: ``Nuclei area (px)`` for the paper's
    target, else the dataset's own measure (``log zoom``, ``log2 µm/px``), never px by default."""
    return MEASURES.get(measure_name, measure_name.replace("_", " "))


MEASURES = {"nuclei_area_px": "Nuclei area (px)", "log2_mpp": "log2 µm/px"}


def card(name: str, p: dict, true_label: str | None, *, key: str,
         measure: str = "Nuclei area (px)") -> None:
    """One prediction card (inside a bordered container); ``measure``: the regression
    measure's label (:func:`measure_label`)."""
    with st.container(border=True):
        if p["thumbnail"] is not None:
            st.image(p["thumbnail"], caption=name, width=120)
        else:
            st.markdown(f"`{name}`")
        if p["error"]:
            st.error(f"**{name}**: {p['error']}", icon=":material/broken_image:")
            return
        if p.get("out_of_range"):
            st.warning(f"**{OUTSIDE}**", icon=":material/report:")
            for r in p.get("range_reasons") or ():
                st.caption(f"· {r}")
        cols = st.columns(2)
        if p["magnification"]:
            ok = true_label == p["magnification"]
            cols[0].metric("Magnification", p["magnification"],
                           delta=None if true_label is None else ("right" if ok else
                                                                  f"true {true_label}"),
                           delta_color="normal" if ok else "inverse")
        if p["nuclei_area"] is not None:   # only when the model predicts the area
            cols[1].metric(measure, f"{p['nuclei_area']:.2f}")
        elif p["probabilities"]:
            cols[1].metric("Probability", f"{max(p['probabilities'].values()):.2f}")
        if p.get("feature_distance") is not None:
            st.caption(f"feature distance {p['feature_distance']:.2f}")
        if p["note"]:
            st.caption(p["note"])
        if p["probabilities"]:
            st.plotly_chart(probability_figure(p["probabilities"]), key=f"{key}_p",
                            config={"displayModeBar": False})
        elif p["distances"]:
            st.caption("|predicted area − training mean area| per magnification (px); the "
                       "nearest is the predicted one")
            st.bar_chart(pd.DataFrame({"distance (px)": p["distances"]}), height=130,
                         horizontal=True, sort=False)


def grid(names: list[str], preds: list[dict], truth: dict, order: list[int], *,
         measure: str = "Nuclei area (px)") -> None:
    """The cards in rows of :data:`COLUMNS`, in ``order``."""
    for start in range(0, len(order), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, i in zip(cols, order[start:start + COLUMNS]):
            with col:
                card(names[i], preds[i], truth.get(names[i]), key=f"pred_card_{i}",
                     measure=measure)


def table(preds: list[dict]) -> pd.DataFrame:
    """One row per file (the CLI's ``predict --csv`` columns)."""
    return pd.DataFrame([prediction_row(p) for p in preds])

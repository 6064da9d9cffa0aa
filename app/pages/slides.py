"""Slides page: check each slide's header resolution (MPP) against its pixels with a
``--target mpp`` run; the path to train such a run on a trusted cohort."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import guard, services

st.title("Whole slides: is the header's resolution right?")
st.caption("A model trained with target `mpp` predicts µm/px on tissue tiles read at each "
           "slide's level 0 (and a second level as a cross-check); the median and a bootstrap "
           "interval are compared with the header's MPP. A model trained on a few slides is a "
           "demonstration, not a general-purpose checker.")
with st.expander("Train a resolution model on your own cohort"):
    st.markdown("1. **Scan** page: dataset `slides:` with the folder of slides whose headers you "
                "trust (`mpps=0.25,0.5,1,2` in the options): which layer knows the resolution?\n"
                "2. **Train** page: the same dataset, target `mpp`, cut at the scan's peak.\n"
                "3. Here: choose that run and check the other slides.\n\n"
                "From a shell: `python -m rcvcore check-slides DIR --run RUN --html report.html`.")

runs = [r for r in services.finished_runs() if r["config"].get("target") == "mpp"]
if not runs:
    st.info("No finished run with target `mpp` yet: train one on a `slides:` dataset (Train "
            "page, target mpp) or run `make demo-slides`.")
    st.stop()
labels = {guard.redact(r["label"]): r["run_dir"] for r in runs}
c = st.columns([3, 3, 1])
run_dir = labels[c[0].selectbox("Run", list(labels), key="slides_run")]
folder = c[1].text_input("Slides (a slide, a folder of slides or a list file)",
                         key="slides_path")
n_tiles = c[2].number_input("Tiles per slide", 4, 512, 64, step=4, key="slides_tiles")
if st.button("Check the slides", type="primary", disabled=not folder, key="slides_go"):
    bar = st.progress(0.0, text="starting")
    try:
        st.session_state["slides_result"] = services.check_slides(
            run_dir, folder, int(n_tiles), progress=lambda f, m: bar.progress(
                min(max(f, 0.0), 1.0), text=guard.redact(m)))
    except Exception as e:  # a refused path, a run that is not an mpp model
        st.error(guard.redact(str(e)))
    bar.empty()

res = st.session_state.get("slides_result")
if res:
    st.caption(f"Model's training domain: {guard.redact(res['domain'] or 'unknown')}")
    table = pd.DataFrame([{**r, "path": Path(r["path"]).name,
                           "message": guard.redact(r["message"])} for r in res["rows"]])
    st.dataframe(table, hide_index=True, key="slides_table")   # click a header to sort
    st.download_button("CSV report", table.to_csv(index=False), "slides.csv", "text/csv")
    for check in res["checks"]:
        img = res["thumbnails"].get(check.path)
        with st.expander(f"{Path(check.path).name} · {check.verdict}"):
            st.write(guard.redact(check.message))
            if img is not None:
                st.image(img, caption="tiles: green as the header says, red coarser, blue finer")

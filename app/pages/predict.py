"""Predict page: a finished run on uploaded patches -> nuclei area and magnification per patch."""
from __future__ import annotations

import hashlib
import io

import pandas as pd
import streamlit as st

from app import security, services

st.title("Predict on patches")
st.caption("Upload H&E patches (drag and drop, one or many). Each gets the predicted mean nuclei "
           "area (in training-image pixels) and magnification. Patches larger than the training "
           "size are tiled at their native resolution; smaller ones are resized (noted).")

runs = services.finished_runs()
if not runs:
    st.info("No finished training run yet. Launch one on the **Train** page; it appears here "
            "when it is done.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

labels = {r["run_dir"]: r["label"] for r in runs}
run_dir = st.selectbox("Trained run", list(labels), format_func=labels.get, key="predict_run")
cfg = next(r["config"] for r in runs if r["run_dir"] == run_dir)
st.caption(f"{cfg.get('arch')}, cut `{cfg.get('cut')}`, target {cfg.get('target')}, trained on "
           f"`{cfg.get('dataset')}`.")

if st.button("Release cached models", key="predict_release",
             help="drop the models kept in memory for prediction (and their GPU memory)"):
    services.release_models()
    st.toast("Cached models released; the next prediction reloads the model.")

files = st.file_uploader("Patches", accept_multiple_files=True, key="predict_files",
                         type=["png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp", "gif"])
if not files:
    st.stop()

try:  # loaded on first use, then shared read-only by every session
    run = services.load_run(run_dir)
except Exception as e:  # rcvcore's message names the file and the fix
    st.error(f"Cannot load this run: {security.redact(str(e))}")
    st.stop()
if run.task.classes:
    st.caption(f"Device {run.device}. Classes: {', '.join(run.task.classes)}.")

items = [(f.name, f.getvalue()) for f in files]
digest = hashlib.sha256(run_dir.encode() + b"".join(
    hashlib.sha256(b).digest() for _, b in items)).hexdigest()
cache = st.session_state.setdefault("predict_cache", {})
if digest not in cache:
    with st.spinner(f"Predicting {len(items)} file(s)..."):
        cache.clear()  # keep one result set per session
        cache[digest] = services.predict_uploads(run, items)
preds = cache[digest]


def _thumbnail(data: bytes):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 50_000_000:
                return None
            im = im.convert("RGB")
            im.thumbnail((160, 160))
            return im.copy()
    except Exception:
        return None


n_bad = sum(1 for p in preds if p["error"])
st.markdown(f"**{len(preds) - n_bad} of {len(preds)} predicted**"
            + (f" · {n_bad} could not be read" if n_bad else ""))
for (name, data), p in zip(items, preds):
    with st.container(border=True):
        c1, c2, c3 = st.columns([1, 2, 3])
        thumb = _thumbnail(data) if not p["error"] else None
        if thumb is not None:
            c1.image(thumb, caption=name)
        else:
            c1.markdown(f"`{name}`")
        if p["error"]:
            c2.error(f"**{name}**: {p['error']}", icon=":material/broken_image:")
            continue
        if p["nuclei_area"] is not None:
            c2.metric("Nuclei area (px)", f"{p['nuclei_area']:.1f}")
        if p["magnification"]:
            c2.metric("Magnification", p["magnification"])
        if p["note"]:
            c2.caption(p["note"])
        if p["probabilities"]:
            c3.bar_chart(pd.DataFrame({"probability": p["probabilities"]}), height=160,
                         horizontal=True, sort=False)   # keep 5x, 8x, ... 40x order
        elif p["distances"]:
            c3.caption("|predicted area − mean area of each magnification in training| (px); "
                       "the nearest is the predicted magnification")
            c3.bar_chart(pd.DataFrame({"distance (px)": p["distances"]}), height=160,
                         horizontal=True, sort=False)

rows = []
for p in preds:
    row = {"file": p["path"], "nuclei_area_px": p["nuclei_area"],
           "magnification": p["magnification"], "tiles": p["tiles"], "note": p["note"],
           "error": p["error"]}
    for c, v in (p["probabilities"] or {}).items():
        row[f"p_{c}"] = v
    for c, v in (p["distances"] or {}).items():
        row[f"dist_{c}"] = v
    rows.append(row)
table = pd.DataFrame(rows)
st.subheader("Table")
st.dataframe(table, hide_index=True, width="stretch")
st.download_button("Download CSV", table.to_csv(index=False), "predictions.csv", "text/csv",
                   key="predict_csv", icon=":material/download:", on_click="ignore")

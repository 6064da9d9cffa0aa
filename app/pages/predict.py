"""Predict page: a finished run on uploaded patches -> nuclei area and magnification per patch."""
from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from app import guard, prediction_view, services

st.title("Predict on patches")
st.caption("Upload H&E patches (drag and drop, one or many). Each gets what the run predicts "
           "(magnification, and the mean nuclei area in training-image pixels when the run "
           "regresses it) and a marker when it lies outside what the model was trained on. "
           "Patches larger than the training size are tiled at their native resolution; "
           "smaller ones are resized (noted).")



def _demo_panel() -> None:
    """The demo model: train it from here, watch it, then try it on patches it never saw."""
    d = services.demo_model_status()
    with st.container(border=True):
        st.markdown("**Demo model** · efficientnet_lite0 (ImageNet) cut at "
                    f"`{d['cut']}`, classifying the magnification of "
                    "real H&E patches (`demo-he`)")
        if d["cut"] == d["demo_cut"]:
            st.caption("The cut was chosen with none of the model's test patches: a demo-he "
                       "scan without their source images found no significant layer, so it "
                       "is that scan's highest mean R² (rule untested-peak, not significant; "
                       "`python -m rcvcore demo cut` shows it).")
        else:
            st.caption(f"This run was trained cut at `{d['cut']}`; the demo's cut is now "
                       f"`{d['demo_cut']}` (chosen with no test data); `python -m rcvcore demo "
                       "model --restart` trains it there.")
        if d["state"] in ("missing", "failed", "cancelled", "interrupted"):
            if d["state"] == "failed" and d.get("error"):
                st.error(f"The last demo training failed: {guard.redact(d['error'])}")
            label = ("Train the demo model" if d["state"] == "missing" else
                     "Train it again" if d["state"] == "failed" else "Finish training it")
            st.caption("A few minutes on a laptop CPU: the real H&E patches are cut and "
                       "segmented, the head starts at its logistic-probe fit, then "
                       f"{d['epochs']} epochs of fine-tuning.")
            if st.button(label, type="primary", key="demo_train",
                         icon=":material/model_training:"):
                try:
                    services.launch_demo_model()
                except Exception as e:  # served-mode limits, a run already going
                    st.error(guard.redact(str(e)))
                else:
                    st.rerun()
        elif d["state"] in ("running", "launching"):
            st.session_state["demo_watch"] = True
            st.progress(d["fraction"], text=d["message"] or "starting")
        elif d["state"] == "done":
            if st.session_state.pop("demo_watch", False):   # it just finished: select it
                st.session_state["demo_select"] = d["run_dir"]
                st.rerun()
            t = d["test"]
            score = services.metric_summary(t, services.metric_names("classification"))
            st.caption(f"Run `{guard.redact(d['run_dir'])}` · on its {d.get('n_test')} test "
                       f"patches (never seen in training): {score}.")
            if st.button("Try it on held-out demo patches", key="demo_try",
                         icon=":material/science:"):
                st.session_state["predict_run"] = d["run_dir"]
                st.session_state["held_out"] = (d["run_dir"],
                                                services.held_out_samples(d["run_dir"]))
                st.rerun()


st.fragment(run_every=2.0 if services.demo_model_status()["state"] in (
    "running", "launching") else None)(_demo_panel)()

runs = services.finished_runs()
if not runs:
    st.info("No finished training run yet: train the demo model above, or launch a run on the "
            "**Train** page; it appears here when it is done.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

labels = {r["run_dir"]: r["label"] for r in runs}
just_done = st.session_state.pop("demo_select", None)
match = [r for r in labels if just_done and Path(r).resolve() == Path(just_done).resolve()]
if match:
    st.session_state["predict_run"] = match[0]
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
if st.button("Try this run's held-out test patches", key="predict_held_out",
             help="up to 8 patches of the run's own test split (never seen in its training), "
                  "spread over the classes, each shown with its true class"):
    st.session_state["held_out"] = (run_dir, services.held_out_samples(run_dir))
held = st.session_state.get("held_out")
samples = held[1] if held and held[0] == run_dir and not files else None
if not files and not samples:
    st.stop()
truth = {name: label for name, _, label in samples} if samples else {}
if samples:
    st.caption("Held-out test patches of this run: the true class is shown on each card.")

try:  # loaded on first use, then shared read-only by every session
    run = services.load_run(run_dir)
except Exception as e:  # rcvcore's message names the file and the fix
    st.error(f"Cannot load this run: {guard.redact(str(e))}")
    st.stop()
if run.task.classes:
    st.caption(f"Device {run.device}. This model knows only {', '.join(run.task.classes)}: a "
               "patch at another magnification still gets one of these, so it is marked "
               "*outside the model's range* when it looks unlike every training class or lies "
               "beyond the first or last one.")

items = [(f.name, f.getvalue()) for f in files] if files else \
    [(name, data) for name, data, _ in samples]
digest = hashlib.sha256(run_dir.encode() + b"".join(
    hashlib.sha256(b).digest() for _, b in items)).hexdigest()
cache = st.session_state.setdefault("predict_cache", {})
if digest not in cache:
    with st.spinner(f"Predicting {len(items)} file(s)..."):
        cache.clear()  # keep one result set per session
        cache[digest] = services.predict_uploads(run, items)
preds = cache[digest]


n_bad = sum(1 for p in preds if p["error"])
n_out = sum(1 for p in preds if p.get("out_of_range"))
st.markdown(f"**{len(preds) - n_bad} of {len(preds)} predicted**"
            + (f" · {n_bad} could not be read" if n_bad else "")
            + (f" · {n_out} outside the model's range" if n_out else ""))
if run.domain is None:
    st.caption("This run was trained before rcvcore recorded its training domain: patches are "
               "not checked against what it was trained on (train it again to get the check).")
sort = st.selectbox("Sort cards by", prediction_view.sort_options(run.task.kind == "regression"),
                    key="predict_sort")
names = [name for name, _ in items]
prediction_view.grid(names, preds, truth, prediction_view.ordered(preds, sort),
                     measure=prediction_view.measure_label(run.task.measure_name))

table = prediction_view.table(preds)
st.subheader("Table")
st.dataframe(table, hide_index=True, width="stretch")
st.download_button("Download CSV", table.to_csv(index=False), "predictions.csv", "text/csv",
                   key="predict_csv", icon=":material/download:", on_click="ignore")

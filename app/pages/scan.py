"""Scan page: R² of the scale measure per layer, and the choice of the prune point.

Widgets in, one call into rcvcore (``run_scan`` on the background worker), chart and table out.
"""
from __future__ import annotations

import json

import streamlit as st

from app import charts, services, state, widgets

st.title("Scale-covariance scan")
st.caption("Regression Concept Vectors (Graziani et al., iMIMIC 2020): how well a linear "
           "regression from each layer's pooled activations predicts the scale measure "
           "(held-out R²). High R² = scale-covariant features worth keeping.")

SHOW_NEXT = "scan_show_next"
DEFAULT_ARCH = "efficientnet_lite0"   # ImageNet weights shipped in a package: works offline
TIMM_CHOICE = "other timm model..."
SCORING = {"dataset default": None, "per class": True, "pooled": False}
archs = services.arch_catalogue()
datasets = services.dataset_catalogue()

# ------------------------------------------------------------------------------------- form
if "scan_job" not in st.session_state and services.running_jobs(None):
    # a reloaded page finds the scan its user started still running in the server, and the
    # sidebar shows that scan's settings (not the defaults)
    _running = services.running_jobs(None)[0]
    st.session_state["scan_job"] = _running.job_id
    st.session_state.update(services.scan_form_state(_running.config, list(archs),
                                                     TIMM_CHOICE, SCORING))

with st.sidebar:
    st.header("Scan settings")
    run_slot = st.empty()   # Run scan on top: visible without scrolling the settings
    arch_names = list(archs) + [TIMM_CHOICE]
    arch = st.selectbox("Architecture", arch_names,
                        index=arch_names.index(DEFAULT_ARCH) if DEFAULT_ARCH in arch_names else 0,
                        key="scan_arch", help="efficientnet_lite0/1/2 have ImageNet weights "
                        "that need no download; the paper used inception_v3 and resnet50 (timm:"
                        "inception_v3.tf_in1k is the paper's Keras InceptionV3)")
    if arch == TIMM_CHOICE:
        arch = st.text_input("timm model", value="timm:resnet50.a1_in1k", key="scan_timm_name",
                             help="timm:NAME or timm:NAME.TAG (CNNs, ViT / DeiT / BEiT / EVA "
                                  "/ DINOv2, Swin), timm:hf-hub:ORG/NAME; `python -m rcvcore "
                                  "models --timm PATTERN` lists them").strip()
        if not arch.startswith("timm:"):
            arch = "timm:" + arch
        try:
            archs = {**archs, arch: services.arch_info(arch)}
        except Exception as e:  # not in timm, or a network the registry cannot probe
            st.error(f"{arch} cannot be scanned: {services.page_terms(str(e))} Choose another "
                     f"network; the page uses {DEFAULT_ARCH} meanwhile.",
                     icon=":material/block:")
            arch = DEFAULT_ARCH
    st.caption(archs[arch]["description"])

    have_imagenet, how = services.imagenet_status(arch)
    weight_choices = ["imagenet", "random (control)", "checkpoint"]
    weights_choice = st.radio("Weights", weight_choices, index=0 if have_imagenet else 1,
                              key=f"scan_weights_{arch}", horizontal=True)
    weights = None
    if weights_choice == "imagenet":
        if have_imagenet:
            weights = "imagenet"
        else:
            st.error(how, icon=":material/cloud_off:")
    elif weights_choice.startswith("random"):
        weights = "random"
        st.caption("Random initialisation: the paper's control, **not** a pretrained network.")
    else:
        up = st.file_uploader("Upload a state-dict checkpoint (.pt/.pth)", type=["pt", "pth"],
                              key="scan_ckpt_upload")
        path = st.text_input("...or the path of one on this machine", key="scan_ckpt_path")
        if up is not None:  # hashed and stored once per upload (again if deleted meanwhile)
            weights = services.keep_upload(up, st.session_state.setdefault("scan_ckpt_stored", {}))
        elif path.strip():
            weights = path.strip()
        else:
            st.info("Give a checkpoint to scan (torchvision layout, `torch.save(model."
                    "state_dict(), path)`).")

    dataset, ds_options = widgets.dataset_picker(st, datasets, "scan", describe=True)

    layer_mode = st.radio("Layers", ["paper", "all", "choose"], horizontal=True,
                          key="scan_layer_mode",
                          help="paper: the probe layers of the paper (block outputs, "
                               "pre_softmax, softmax); all: also the stem")
    layers = layer_mode
    if layer_mode == "choose":
        chosen = st.multiselect("Probe layers", archs[arch]["all_layers"],
                                default=archs[arch]["layers"][-4:], key=f"scan_layers_{arch}")
        layers = ",".join(chosen) if chosen else None

    token_pool = "mean"
    if archs[arch].get("tokens"):
        pools = ["mean", "cls"] if archs[arch].get("class_token") else ["mean"]
        token_pool = st.radio("Token pooling", pools, horizontal=True, key="scan_token_pool",
                              help="mean of the patch tokens (default; class and register "
                                   "tokens left out), or the class token (--token-pool)")

    with st.expander("Options"):
        n = st.number_input("Images (0 = all)", min_value=0, value=0, step=10, key="scan_n")
        repeats = st.slider("Repeats (random 70/30 splits)", 1, 20, 10, key="scan_repeats")
        model = st.radio("Regression", ["ridge", "ols"], horizontal=True, key="scan_model",
                         help="ridge (penalty chosen on the training split) is the default; "
                              "ols reproduces the paper (R² far below 0 in early layers)")
        controls = st.multiselect("Controls", ["shuffled", "random-weights"],
                                  default=["shuffled", "random-weights"], key="scan_controls")
        scoring = st.radio("Scoring", list(SCORING), horizontal=True, key="scan_scoring",
                           help="dataset default: pooled where the classes are a proxy of "
                                "the measure (histology magnifications), per class otherwise; "
                                "per class: one fit per class, R² averaged (the paper's "
                                "ImageNet protocol); pooled: one fit over all classes "
                                "(--per-class / --no-per-class)")
        grouped = st.checkbox("Grouped splits", value=True, key="scan_grouped",
                              help="keep each group (photograph, slide, patient) on one side "
                                   "of every split; off = --ungrouped (optimistic, for "
                                   "comparison only)")
        device = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="scan_device")
        batch_size = st.number_input("Batch size", 1, 512, 16, key="scan_batch")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="scan_seed")
        use_cache = st.checkbox("Use the activation cache", value=True, key="scan_use_cache")

    ready = weights is not None and dataset is not None and layers is not None
    run = run_slot.button("Run scan", type="primary", disabled=not ready, key="scan_run",
                          width="stretch")

if not have_imagenet:
    st.warning(f"**Offline mode: no ImageNet weights for {arch}.** " + how.split(". ", 1)[1]
               if ". " in how else how, icon=":material/cloud_off:")

job = None
if run:
    try:
        config = services.make_config(
            arch=arch, weights=weights, dataset=dataset, layers=layers, n=int(n) or None,
            repeats=int(repeats), model=model, controls=tuple(controls), device=device,
            batch_size=int(batch_size), seed=int(seed), use_cache=use_cache,
            dataset_options=ds_options, per_class=SCORING[scoring], grouped=bool(grouped),
            token_pool=token_pool)
    except Exception as e:  # rcvcore validates; show its message
        st.error(str(e))
    else:  # rcvcore returns a scan it has already scored from its cache
        job = services.submit_scan(config)


def finish(job) -> None:
    """Move a finished scan job's outcome (result to show, or error) into the session."""
    err = services.job_error(job)
    st.session_state.pop("scan_job", None)
    if err:
        st.session_state["scan_error"] = err
    else:
        st.session_state[SHOW_NEXT] = job.record_id
        st.session_state.pop("scan_error", None)
        if job.from_cache:
            st.session_state["scan_toast"] = (
                "This exact scan was scored before: result from the cache, nothing recomputed. "
                "Untick *Use the activation cache* to recompute.")


if job is not None:
    st.session_state["scan_job"] = job.job_id
    try:  # a cached scan finishes at once: draw it in this same run, no extra rerun
        job.future.result(timeout=1.5)
    except Exception:
        pass
    if job.done:
        finish(job)


# ----------------------------------------------------------------------------- progress
def scan_progress() -> None:
    job = services.get_job(st.session_state.get("scan_job"))
    if job is None:
        return
    if not job.done:  # one element: each poll re-renders only this bar in the browser
        st.progress(min(max(job.fraction, 0.0), 1.0), text=services.job_progress(job))
        return
    finish(job)
    st.rerun()  # redraw the whole page with the new result


_job_now = services.get_job(st.session_state.get("scan_job"))
# poll only while a scan runs; a finished one triggers a full rerun from inside the fragment
st.fragment(run_every=0.5 if _job_now is not None else None)(scan_progress)()
if _job_now is not None and not _job_now.done and st.button("Cancel scan", key="scan_cancel"):
    services.cancel_job(_job_now.job_id)  # the job stops at its next step; the poll then reports it
if st.session_state.get("scan_error"):
    st.error(services.page_terms(st.session_state["scan_error"]))

if st.session_state.get("scan_toast"):
    st.toast(st.session_state.pop("scan_toast"))

# -------------------------------------------------------------------------------- results
saved = services.load_scans()
if not saved:
    st.info("No scan yet. Choose the settings in the sidebar and press **Run scan**. "
            "The embedded `demo-scale` data with random weights works offline.")
    # the chart's empty axes: the browser loads plotly now, not after the first scan
    probed = {"paper": archs[arch]["layers"], "all": archs[arch]["all_layers"]}.get(
        layer_mode, layers.split(",") if layers else [])
    st.plotly_chart(charts.empty_r2_figure(probed), key="scan_curve_empty",
                    config=charts.PLOTLY_CONFIG)
    st.stop()

labels = {sid: f"{s.label} · n={s.result.n_images} · {s.config.get('model', '')} · {sid[:6]}"
          for sid, s in saved.items()}
# a scan that just finished (or was reused) becomes the one shown; the widget's own state
# may only be set before the widget is drawn in this run
shown_next = st.session_state.pop(SHOW_NEXT, None)
link = (st.query_params.get("scan"), st.query_params.get("cut"))
if link[0] in saved and st.session_state.get("scan_link_applied") != link:
    # a shared link (?scan=ID&cut=LAYER) opens that scan with that cut, once per link
    st.session_state["scan_link_applied"] = link
    shown_next = shown_next or link[0]
    if link[1] in [s.layer for s in saved[link[0]].result.layers
                   if s.layer not in ("pre_softmax", "softmax")]:
        st.session_state[f"scan_cut_{link[0]}"] = link[1]
if shown_next in saved:
    st.session_state["scan_primary"] = shown_next
if st.session_state.get("scan_primary") not in saved:
    st.session_state["scan_primary"] = next(iter(saved))
top = st.columns([3, 2])
primary = top[0].selectbox("Scan shown", list(saved), format_func=labels.get, key="scan_primary")
overlay_options = [s for s in saved if s != primary]
if "scan_overlay" in st.session_state:
    st.session_state["scan_overlay"] = [s for s in st.session_state["scan_overlay"]
                                        if s in overlay_options]
others = top[1].multiselect("Overlay other scans", overlay_options, format_func=labels.get,
                            key="scan_overlay")
rec = saved[primary]
result = rec.result

opts = st.columns(4)
convention = opts[0].radio("Aggregation", charts.CONVENTIONS, key="scan_convention",
                           help="mean ± std of R² over repeats (and classes), or the paper's "
                                "ln(mean(exp R²)) as plotted in its figures")
show_controls = opts[1].toggle("Show controls", value=True, key="scan_show_controls")
mixed = len({saved[s].result.config.arch for s in [primary, *others]}) > 1
if mixed:   # scans of different networks share no layer names: the depth axis is in use
    st.session_state["scan_depth"] = True
depth_axis = opts[2].toggle("Normalised depth axis", value=False, key="scan_depth",
                            disabled=mixed,
                            help="x = depth in [0, 1], to compare networks of different depth "
                                 "(on, and fixed, while the overlaid scans differ in "
                                 "architecture)")
clip = opts[3].toggle("Clip y at -1", value=True, key="scan_clip")

layer_names = [s.layer for s in result.layers]
cuttable = [n for n in layer_names if n not in ("pre_softmax", "softmax")]
suggested, rule = services.suggest_cut(result)

CUT_WIDGET = f"scan_cut_{primary}"


def _on_curve_select() -> None:
    sel = st.session_state.get("scan_curve")
    points = (sel or {}).get("selection", {}).get("points", []) if sel else []
    for p in points:
        cd = p.get("customdata")
        if cd and int(cd[0]) == 0 and cd[1] in cuttable:
            st.session_state[CUT_WIDGET] = cd[1]
            break


if CUT_WIDGET not in st.session_state:
    cut0 = state.get_cut()
    # no suggestion (no layer significantly above its controls): no layer is preselected, so
    # nothing reaches the Train page unless the user picks one
    kept = (rec.chosen_cut or {}).get("layer")   # chosen before, in any tab
    start = (cut0["layer"] if cut0 and cut0.get("scan_id") == primary
             and cut0.get("layer") in cuttable else kept if kept in cuttable
             else suggested if suggested in cuttable else None)
    if start is not None:
        st.session_state[CUT_WIDGET] = start

shown = [result] + [saved[s].result for s in others]
fig = charts.r2_figure(shown, services.legend_labels(shown), convention=convention,
                       show_controls=show_controls, depth_axis=depth_axis,
                       clip_at=-1.0 if clip else None,
                       selected=st.session_state.get(CUT_WIDGET), suggested=suggested)
st.plotly_chart(fig, key="scan_curve", on_select=_on_curve_select, selection_mode="points",
                config=charts.PLOTLY_CONFIG)
meta = [f"{result.n_images} images"]
if result.skipped:
    meta.append(f"{len(result.skipped)} skipped")
cache = result.cache
if cache:
    meta.append(f"activation cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses")
st.caption(" · ".join(meta) + ". Click a point of the curve to choose the cut.")

# ---------------------------------------------------------------------------- prune point
st.subheader("Prune point")
if not cuttable:
    st.warning("This scan holds no feature layer to cut at (only the classifier outputs).")
else:
    c1, c2 = st.columns([2, 3])
    with c1:
        cut = st.selectbox("Cut after layer", cuttable, key=CUT_WIDGET,
                           index=None if CUT_WIDGET not in st.session_state else 0,
                           placeholder="no suggestion: choose a layer")
        if suggested:
            st.markdown(f"**Suggested:** `{suggested}`")
        else:
            st.warning("**No suggested cut.** " + services.page_terms(
                rule.removeprefix("No suggested cut: ")), icon=":material/block:")
        if not suggested or rule:
            st.caption(services.page_terms(rule) if suggested else "The Train page is not "
                       "prefilled from this scan unless you choose a layer above.")
        # the same record the Train page builds from disk (dataset options and exclusions too)
        state.set_cut(services.scan_cut(rec, cut, "tab"))
        # kept with the scan on disk: the Train page offers it in any tab, after a reload
        services.save_chosen_cut(primary, cut, "none" if not cut else
                                 "suggested" if cut == suggested else "clicked", saved)
        st.query_params.update({"scan": primary, **({"cut": cut} if cut else {})})
        if not cut:
            st.query_params.pop("cut", None)
        if cut:
            st.page_link("pages/train.py", label=f"Fine-tune {result.config.arch} cut at {cut} →",
                         icon=":material/model_training:",
                         query_params={"scan": primary, "cut": cut})
    with c2:
        if not cut:
            st.caption("Choose a layer to see the parameters and GFLOPs the cut removes.")
            s = None
        else:
            try:
                s = services.cut_summary(result.config.arch, cut)
            except Exception as e:
                st.warning(f"Cannot size the cut: {e}")
                s = None
        if s is not None:
            m = st.columns(3)
            m[0].metric("Parameters (pruned)", f"{s['pruned_params'] / 1e6:.2f} M",
                        f"{(s['params_ratio'] - 1) * 100:+.0f} % vs full "
                        f"({s['full_params'] / 1e6:.2f} M)", delta_color="inverse")
            m[1].metric("Forward GFLOPs (pruned)", f"{s['pruned_flops'] / 1e9:.2f}",
                        f"{(s['flops_ratio'] - 1) * 100:+.0f} % vs full "
                        f"({s['full_flops'] / 1e9:.2f})", delta_color="inverse")
            removed = (s["full_params"] - s["pruned_params"]) / 1e6
            m[2].metric("Params removed", f"{removed:.2f} M",
                        f"{(s['full_flops'] - s['pruned_flops']) / 1e9:.2f} GFLOPs removed",
                        delta_color="off", delta_arrow="off", help="parameters and forward "
                        "GFLOPs of the full model that the pruned one does not have")
            st.caption(f"Full = whole convolutional trunk + global pooling + new head (the "
                       f"paper's full model); pruned = trunk up to `{cut}` + pooling + head. "
                       f"One {s['image_size']} px image; the ImageNet classifier has "
                       f"{s['classifier_params'] / 1e6:.2f} M parameters.")

# ---------------------------------------------------------------------------- table + files
st.subheader("R² per layer")
table = charts.r2_table(result)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f")
                            for c in table.columns if "R²" in c or c == "depth"})
stem = f"rcv-{result.config.arch}-{result.config.weights}-{primary[:8]}".replace("/", "_")
d = st.columns(4)
d[0].download_button("CSV", lambda: services.result_csv(result), f"{stem}.csv", "text/csv",
                     key="dl_csv", icon=":material/download:", on_click="ignore")
d[1].download_button("JSON", lambda: json.dumps(result.to_json(), indent=2), f"{stem}.json",
                     "application/json", key="dl_json", icon=":material/download:",
                     on_click="ignore")
d[2].download_button("Chart (HTML)", lambda: charts.figure_html(fig), f"{stem}.html",
                     "text/html", key="dl_html", icon=":material/download:", on_click="ignore")
png = charts.figure_png
if png is not None:
    d[3].download_button("Chart (PNG)", lambda: png(fig), f"{stem}.png", "image/png",
                         key="dl_png", icon=":material/download:", on_click="ignore")
else:
    d[3].caption("PNG: use the camera icon at the chart's top right.")

with st.expander("Manage saved scans"):
    st.caption(f"Saved under `{state.scans_dir()}`.")
    if st.button("Delete the scan shown", key="scan_delete"):
        state.delete_scan(primary)
        st.rerun()

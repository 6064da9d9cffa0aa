"""Train page: fine-tune the network cut at the chosen layer (and the unpruned baseline).

Each run is a separate process (``python -m rcvcore train --run-dir DIR``) writing its run
directory; this page only launches, polls (``st.fragment(run_every=...)``) and cancels. Runs
survive a reload and a server restart, and free their GPU memory when their process ends.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import guard, services, state, tracker, widgets

st.title("Fine-tune the pruned network")
st.caption("The paper's transfer experiment (Table 2): the network cut at the chosen layer + "
           "global average pooling + a new head, all layers trainable, Adam lr 1e-4, batch 32, "
           "5 epochs, compared with the full network over several seeds. *Protocol*: "
           "**recommended** (the weights' input normalisation, standardised area target, the "
           "head started at its closed-form fit, batch-norm statistics kept) or **paper** (raw "
           "0-255 input, MSE on raw areas, random head, as the paper's Keras code); README lists "
           "each difference.")

archs = services.arch_catalogue()
datasets = services.dataset_catalogue()
# the cut to offer: this page's link (?scan=&cut=), this tab's Scan page, or the cut chosen
# last on the Scan page in any tab (saved with its scan): a new tab or a reload finds it too
cut0, link_problem = services.train_prefill(st.query_params.get("scan"),
                                            st.query_params.get("cut"), state.get_cut())
cut0 = cut0 or {}
no_cut_reason = None
if cut0 and not cut0.get("layer"):
    # the scan suggested no cut (no layer significantly above its controls) and none was
    # chosen: do not prefill the form from noise
    no_cut_reason = cut0.get("reason") or "The scan suggested no cut."
    cut0 = {}
if cut0.get("scan_id") in services.state.load_scans():   # a link that can be shared
    st.query_params.update({"scan": cut0["scan_id"], "cut": cut0["layer"]})
limits = guard.limits()  # served mode: at most these (None: the whole machine)
PREFILL_KEYS = ("arch", "weights", "layer", "dataset", "scan_id")
prefill_key = tuple(cut0.get(k) for k in PREFILL_KEYS)
if cut0 and st.session_state.get("train_prefilled") != prefill_key:
    # a new cut arrived: the form's widgets start again from it (their defaults below)
    for k in [k for k in st.session_state if str(k).startswith(
            ("train_arch", "train_cut_", "train_weights_", "train_dataset", "train_ds_"))]:
        del st.session_state[k]
    st.session_state["train_prefilled"] = prefill_key
SOURCES = {"tab": "the Scan page", "saved": "the Scan page (the cut chosen there last, saved "
           "with its scan)", "link": "the Scan page (by this page's link)"}

# ------------------------------------------------------------------------------------ form
# open the form when there is nothing to watch, or a new cut arrived from the Scan page
fresh_cut = bool(cut0) and st.session_state.get("train_launched_for") != prefill_key
folded = st.session_state.pop("train_folded", False)     # just launched: watch it
if st.session_state.get("train_toast"):
    st.toast(st.session_state.pop("train_toast"))
with st.expander("New training run",
                 expanded=not folded and (not services.list_groups() or fresh_cut)):
    if link_problem:
        st.warning(link_problem, icon=":material/link_off:")
    if cut0:
        scan = f"; scan {cut0['label']} (`{cut0['scan_id'][:6]}`)" if cut0.get("label") else ""
        st.success(f"From {SOURCES.get(cut0.get('source'), 'the Scan page')}: "
                   f"**{cut0['arch']}** ({cut0['weights']}) on **{cut0.get('dataset')}**, cut "
                   f"at **{cut0['layer']}**{scan}.", icon=":material/content_cut:")
    elif no_cut_reason:
        st.info(f"Not prefilled from the Scan page: {no_cut_reason}",
                icon=":material/block:")
    c = st.columns(3)
    if str(cut0.get("arch", "")).startswith("timm:") and cut0["arch"] not in archs:
        archs = {**archs, cut0["arch"]: services.arch_info(cut0["arch"])}
    arch_names = list(archs)
    arch_default = cut0.get("arch") if cut0.get("arch") in archs else "efficientnet_lite0"
    arch = c[0].selectbox("Architecture", arch_names, index=arch_names.index(arch_default),
                          key="train_arch")
    # a cut at the last feature map is the full network ('none'): not offered as a pruned model
    cuttable = [n for n in archs[arch]["all_layers"] if n not in ("pre_softmax", "softmax")
                and n not in archs[arch].get("full_layers", ())]
    default_cut = (cut0.get("layer") if cut0.get("arch") == arch and cut0.get("layer") in cuttable
                   else archs[arch]["paper_cut"] or cuttable[-1])
    if cut0.get("arch") == arch and cut0.get("layer") in archs[arch].get("full_layers", ()):
        st.error(services.cut_refusal(arch, cut0["layer"], False), icon=":material/block:")
    cut = c[1].selectbox("Cut after layer", cuttable + ["none"],
                         index=(cuttable + ["none"]).index(default_cut), key=f"train_cut_{arch}",
                         help="'none' trains the full network (the baseline); the last "
                              "feature layer is the full network too, so it is not offered")
    have_imagenet, how = services.imagenet_status(arch)
    w_default = cut0.get("weights") if cut0.get("arch") == arch else None
    w_options = ["imagenet", "random (control)", "checkpoint path"]
    w_index = 0 if (w_default == "imagenet" and have_imagenet) or (
        w_default is None and have_imagenet) else 1
    if w_default and w_default not in ("imagenet", "random"):
        w_index = 2
    w_choice = c[2].radio("Weights", w_options, index=w_index, key=f"train_weights_{arch}",
                          horizontal=True)
    weights = {"imagenet": "imagenet", "random (control)": "random"}.get(w_choice)
    if w_choice == "checkpoint path":
        weights = c[2].text_input("Checkpoint path", value=w_default or "",
                                  key="train_ckpt").strip() or None
    if w_choice == "imagenet" and not have_imagenet:
        st.error(how, icon=":material/cloud_off:")
        weights = None
    elif weights == "random":
        st.caption("Random weights: the control (no ImageNet pretraining); fine for trying the "
                   "app offline, not for reproducing the paper.")

    c = st.columns(3)
    dataset, ds_options = widgets.dataset_picker(
        c[0], datasets, "train", default=cut0.get("dataset") or "demo-histology",
        options=cut0.get("dataset_options"))
    target = c[1].radio("Target", ["nuclei-area", "magnification", "mpp"], key="train_target",
                        horizontal=True, help="nuclei-area: regression (the paper); "
                        "magnification: classification; mpp: log2 µm/px of a slides: dataset")
    seeds_text = c[2].text_input("Seeds", "1001", key="train_seeds",
                                 help="comma-separated; the paper used 10 seeds")
    baseline = c[2].checkbox("Also train the unpruned baseline (full network)", value=True,
                             key="train_baseline")
    c = st.columns(2)
    protocol = c[0].radio("Protocol", ["recommended", "paper"], horizontal=True,
                          key="train_protocol",
                          help="paper: raw 0-255 input, MSE on raw areas, random Dense(1) head, "
                               "np.std in Table 2; recommended: normalised input, standardised "
                               "target, head started at its ridge fit, batch-norm statistics "
                               "kept, sample std")
    head_options = ["rcv", "random"]
    head_init = c[1].radio("Head start", head_options, horizontal=True,
                           index=head_options.index(services.protocol_head_init(protocol)),
                           key=f"train_head_init_{protocol}",
                           help="rcv: the head starts at the ridge fit of the pooled features "
                                "at the cut on the training split (the scan's RCV); with 0 "
                                "epochs that fit is the model. random: PyTorch's init.")
    c = st.columns(5)
    epochs = c[0].number_input("Epochs", 0 if head_init == "rcv" else 1,
                               limits.max_epochs if limits else 500, 5, key="train_epochs")
    batch = c[1].number_input("Batch size", 1, 1024, 32, key="train_batch")
    lr = c[2].number_input("Learning rate", 1e-7, 1.0, 1e-4, format="%.1e", key="train_lr")
    n = c[3].number_input("Images (0 = all)", 0, 10**7, 0, step=10, key="train_n")
    image_size = c[4].number_input("Image size (0 = the network's)", 0, 1024, 0, step=16,
                                   key="train_image_size")
    c = st.columns(3)
    device = c[0].selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="train_device")
    trainable = c[1].radio("Trainable", ["all", "head"], horizontal=True, key="train_trainable")
    parallel = c[2].number_input("Runs at a time", 1, limits.max_parallel if limits else 16, 1,
                                 key="train_parallel",
                                 help="the others wait their turn (a CPU run already uses every "
                                      "core; on a GPU, runs share its memory)")

    seeds, seeds_error = [], None
    try:
        seeds = [int(s) for s in seeds_text.replace(" ", "").split(",") if s]
    except ValueError:
        seeds_error = f"Seeds must be integers separated by commas, got {seeds_text!r}."
    if seeds_error:
        st.error(seeds_error)
    refusal = services.cut_refusal(arch, cut, bool(baseline))
    if refusal:
        st.error(refusal, icon=":material/block:")
    leak = services.scan_leak(cut0, dataset) if cut0.get("layer") == cut else None
    if leak:
        st.warning(leak, icon=":material/visibility:")
    ready = bool(seeds) and weights is not None and dataset is not None and not refusal
    n_runs = len(seeds) * (2 if baseline and cut != "none" else 1)
    if st.button(f"Launch {n_runs} run{'s' * (n_runs != 1)}", type="primary",
                 disabled=not ready, key="train_launch"):
        try:
            services.check_training(len(seeds), int(epochs), int(parallel), n_runs)
            config = services.train_config(
                arch=arch, weights=weights, cut=cut, dataset=dataset, target=target,
                epochs=int(epochs), batch_size=int(batch), lr=float(lr), n=int(n) or None,
                image_size=int(image_size) or None, device=device, trainable=trainable,
                seed=seeds[0], log_every=1, dataset_options=ds_options, protocol=protocol,
                head_init=head_init)
            group = services.launch_group(config, seeds, baseline, int(parallel))
        except Exception as e:  # rcvcore's UserError names the field and the fix
            st.error(str(e))
        else:
            # watch what was launched: its group selected, the form folded, the monitor up
            st.session_state["train_group_select"] = group.name
            st.session_state["train_launched_for"] = prefill_key
            st.session_state["train_folded"] = True
            st.session_state["train_toast"] = f"Launched {n_runs} run(s) in {group.name}"
            st.rerun()

# --------------------------------------------------------------------------------- monitor
groups = services.list_groups()
if not groups:
    st.info("No training run yet. Choose a cut on the **Scan** page (or above) and launch one.")
    st.stop()

names = list(groups)
if st.session_state.get("train_group_select") not in names:
    st.session_state.pop("train_group_select", None)     # a deleted group: the newest
group_name = st.selectbox("Runs", names, key="train_group_select",
                          help=f"Run folders under {state.runs_root()}")
run_dirs = groups[group_name]
RESULT_KEYS = (*services.METRICS, "loss")


def _message(rs) -> str:
    msg = rs.status.get("message") or rs.status.get("error") or ""
    return msg.replace("; resume with --resume", "; Resume below")   # the page has a button


def _run_buttons(group_dir: Path, runs) -> None:
    """A Cancel button per running run, a Resume button per run that stopped unfinished."""
    acts = []
    for r in runs:
        s, name = services.run_state(r), Path(r.run_dir).name
        if s in services.RUN_STATES_ACTIVE and s != "launching":
            acts.append(("Cancel", name, r, ":material/stop_circle:"))
        elif s in ("cancelled", "interrupted", "failed") and r.config:
            acts.append(("Resume", name, r, ":material/play_circle:"))
    if not acts:
        return
    cols = st.columns(min(len(acts), 4))
    for i, (what, name, r, icon) in enumerate(acts):
        if cols[i % len(cols)].button(f"{what} {name}", key=f"{what.lower()}_run_{name}",
                                      icon=icon, help="stop after the current step "
                                      "(checkpointed, resumable)" if what == "Cancel" else
                                      "continue from its last checkpoint"):
            try:
                if what == "Cancel":
                    services.cancel_run(Path(r.run_dir))
                    st.toast(f"Cancelling {name}: it checkpoints and stops after this step.")
                else:
                    services.resume_run(group_dir, Path(r.run_dir))
                    st.toast(f"Resuming {name} from its last checkpoint.")
            except Exception as e:   # rcvcore's UserError says why
                st.error(guard.redact(str(e)))
            st.rerun()


def _render_group() -> None:
    services.reap_children()
    group_dir = state.runs_root() / group_name
    plan = services.read_group(group_dir)
    dirs = services.list_groups().get(group_name, run_dirs)
    runs = services.read_runs(dirs)
    active = [r for r in runs if services.run_state(r) in services.RUN_STATES_ACTIVE]
    rows_ = [{
        "run": r.run_dir.split("/")[-1], "state": services.run_state(r),
        "progress": r.progress(services.run_state(r)),
        "message": _message(r),
        **{f"test {k}": (r.result or {}).get("test", {}).get(k)
           for k in services.metric_names(listed=True)},
    } for r in runs]
    if plan:
        have = {Path(r.run_dir).name for r in runs}
        for seed in plan["seeds"]:
            for cut in plan["cuts"]:
                name = services.run_dir_of(group_dir, cut, seed).name
                if name not in have:
                    rows_.append({"run": name, "state": "cancelled" if plan.get("cancelled")
                                  else "waiting", "progress": "", "message": ""})
    st.dataframe(pd.DataFrame(rows_), hide_index=True, width="stretch")
    waiting = any(r["state"] == "waiting" for r in rows_)
    if not services.can_control(group_dir):
        st.caption("Launched by another user: only they can cancel or resume these runs.")
    elif active or waiting:
        if st.button("Cancel all runs of this group", key=f"cancel_group_{group_name}",
                     icon=":material/stop_circle:"):
            services.cancel_group(group_dir)
            st.toast("Cancelling: each run checkpoints and stops after its current step.")
    if services.can_control(group_dir):
        _run_buttons(group_dir, runs)
    for r in runs:
        why = r.status.get("error") if r.state == "failed" else services.start_failure(r)
        if why:
            st.error(f"{r.run_dir.split('/')[-1]} failed: {guard.redact(why)}")

    if any(r.metrics for r in runs):
        root = state.runs_root()
        tracker.curves_panel(runs, tracker.colours_of(services.list_groups(), root), root=root,
                             key=f"curves_{group_name}")
    elif active:
        st.caption("Starting (loading the dataset and the network)...")

    done = [r for r in runs if r.state == "done" and r.result]
    if done:
        st.subheader("Test metrics")
        st.dataframe(pd.DataFrame([{
            "run": r.run_dir.split("/")[-1], "cut": (r.config or {}).get("cut"),
            "seed": (r.config or {}).get("seed"),
            **{k: r.result.get("test", {}).get(k) for k in RESULT_KEYS
               if k in r.result.get("test", {})},
            "n_test": r.result.get("n_test")} for r in done]), hide_index=True,
            width="stretch")
        _render_comparison(group_dir, runs)
    busy = bool(active or waiting)
    was_active = st.session_state.get("train_was_active", False)
    st.session_state["train_was_active"] = busy
    if was_active and not busy:
        st.rerun()  # all finished: a full rerun stops the polling


def _render_comparison(group_dir: Path, runs) -> None:
    try:
        view = services.table2_view(group_dir)
    except Exception as e:
        st.warning(f"Cannot compare these runs: {e}")
        return
    if not view:
        return
    st.subheader("Pruned vs full (layout of the paper's Table 2)")
    st.dataframe(pd.DataFrame(view["measured"]), hide_index=True, width="stretch")
    st.caption(view["caption"])
    if view["verdict"]:
        st.markdown(view["verdict"])
    if view["tests"]:
        st.markdown("**Paired tests** (by seed, against the full network)")
        st.dataframe(pd.DataFrame(view["tests"]), hide_index=True, width="stretch")
    st.markdown("**The paper's numbers** (their data and networks, not these runs)")
    st.dataframe(pd.DataFrame(view["paper"]), hide_index=True, width="stretch")
    st.caption(view["paper_source"])
    with st.expander("As text"):
        st.code(view["text"], language=None)
    st.download_button("Table (text)", view["text"], f"table2-{group_name}.txt", "text/plain",
                       key="dl_table2", on_click="ignore")


plan_now = services.read_group(state.runs_root() / group_name)
active_now = any(services.run_state(r) in services.RUN_STATES_ACTIVE
                 for r in services.read_runs(run_dirs)) \
    or bool(plan_now and not plan_now.get("cancelled")
            and len(run_dirs) < len(plan_now["seeds"]) * len(plan_now["cuts"]))
st.fragment(run_every=2.0 if active_now else None)(_render_group)()

with st.expander("All runs (every group): search, sort, compare configurations"):
    tracker.runs_overview(services.list_groups(), state_of=services.run_state)

"""Thin adapters between the pages and rcvcore: one function per user action, no science.

Scans run in one background worker thread of the server process (so a click elsewhere on the page
never aborts them and a reload finds them still running); fine-tuning runs are separate processes
that write their run directory, started and scheduled by rcvcore.runs, polled by the Train page.

Each scan job belongs to the user who submitted it (:func:`app.auth.session_user`): only that
user sees its progress, can cancel it and counts it against their quota. The worker, its jobs
and the run scheduler are server objects (:func:`app.state.server_object`), which a client's
``clear_cache`` cannot drop.

Layers: pages -> services -> {auth, guard, uploads, state} -> rcvcore.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from app import auth, charts, guard, state, uploads
from rcvcore import demo, runs
from rcvcore.errors import UserError
from rcvcore.metrics import METRICS, metric_names, metric_summary  # noqa: F401 (pages)
from rcvcore.prune import NONE
from rcvcore.runs.config import PROTOCOLS, TrainConfig
from rcvcore.scan import ScanConfig, ScanResult, run_scan

# --------------------------------------------------------------------------------------------
# catalogue (cheap, cached per server)


def _arch_record(a) -> dict:
    from rcvcore.prune import is_full

    feature = [n for n, _ in a.all_layers if n not in ("pre_softmax", "softmax")]
    return {"description": a.description, "layers": a.layer_names,
            "all_layers": [n for n, _ in a.all_layers], "paper_cut": a.paper_cut,
            "tokens": a.has_tokens, "class_token": a.class_token,
            # layers cut at the last feature map: the "pruned" model is the full network
            "full_layers": [n for n in feature if is_full(a, n)]}


@st.cache_data(show_spinner=False)
def arch_catalogue() -> dict[str, dict]:
    """``{arch: {"description", "layers", "all_layers", "paper_cut", "tokens", "class_token"}}``
    from the registry (``tokens``: a vision transformer whose tokens are pooled)."""
    from rcvcore.models import ARCHS

    return {name: _arch_record(a) for name, a in ARCHS.items()}


@st.cache_data(show_spinner="Reading the timm model's structure...", max_entries=32)
def arch_info(name: str) -> dict:
    """The catalogue record of any architecture name, ``timm:NAME`` included (raises
    :class:`rcvcore.errors.UserError` for an unknown name)."""
    from rcvcore.models import get_arch

    return _arch_record(get_arch(name))


def imagenet_status(arch: str) -> tuple[bool, str]:
    """(available, how to supply the weights) for ``arch``'s ImageNet weights; never downloads."""
    from rcvcore.models import missing_weights_message, weights_available

    ok, where = weights_available(arch)
    if ok:
        return True, guard.redact(where)
    # rcvcore's message says where the file goes and which networks need no download; its
    # first sentence is this one's, said once (a served client sees no server folder)
    rest = missing_weights_message(arch).split(". ", 1)[-1]
    return False, guard.redact(f"ImageNet weights for **{arch}** are not on this machine. "
                               f"{rest}")


@st.cache_data(show_spinner=False)
def dataset_catalogue() -> list[dict]:
    from rcvcore.data import list_datasets
    from rcvcore.data.registry import loader_options

    return [{"name": k.name, "description": k.description, "needs_path": k.needs_path,
             "path_optional": k.path_optional, "measure": k.measure_name,
             "options": {o: repr(v) for o, v in loader_options(k.name).items()}}
            for k in list_datasets()]


def dataset_options(text: str) -> dict:
    """``"classes=n02058221,n01608432; single_object=true"`` -> loader options (rcvcore's
    parser; a bad item raises its UserError)."""
    from rcvcore.data.options import parse_options

    return parse_options([t.strip() for t in (text or "").split(";") if t.strip()])


@st.cache_data(show_spinner="Counting parameters and FLOPs...", max_entries=64)
def cut_summary(arch: str, cut: str) -> dict:
    """Parameters and forward FLOPs of the full network vs. the network cut at ``cut``."""
    from rcvcore.prune import cut_summary as _cut_summary

    return _cut_summary(arch, "random", cut).to_dict()


# --------------------------------------------------------------------------------------------
# scans


@dataclass
class ScanJob:
    """A scan submitted to the worker thread; progress is written by the callback."""

    job_id: str
    config: dict
    future: Future | None = None
    fraction: float = 0.0
    message: str = "queued"
    started: float = field(default_factory=time.time)
    cancel_requested: bool = False
    record_id: str | None = None      # saved scan id once finished
    error: str | None = None
    from_cache: bool = False          # rcvcore returned the saved scores: nothing recomputed
    owner: str = "local"              # the user who submitted it (auth.session_user)

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()


class ScanCancelled(Exception):
    pass


def _scan_worker() -> tuple[ThreadPoolExecutor, dict[str, ScanJob], threading.Lock]:
    # one scan at a time: a scan already uses every core (and the GPU)
    return state.server_object("scan_worker", lambda: (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcv-scan"), {}, threading.Lock()))


def scan_id_for(config: dict) -> str:
    """Id of a saved scan: its full configuration and the rcvcore version."""
    import rcvcore

    key = {"config": config, "rcvcore": rcvcore.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_config(**kwargs):
    """A :class:`rcvcore.scan.ScanConfig` from the form's values (validation is rcvcore's)."""
    names = {f.name for f in dataclasses.fields(ScanConfig)}
    kwargs = guard.vet_config_kwargs(kwargs)  # served mode: paths under the data root
    guard.check_scan_queue(len(running_jobs()), len(running_jobs(auth.session_user())))
    return ScanConfig(**{k: v for k, v in kwargs.items() if k in names})


def _run_job(job: ScanJob, config) -> str:
    def progress(fraction: float, message: str) -> None:
        if job.cancel_requested:
            raise ScanCancelled("cancelled")
        job.fraction, job.message = float(fraction), str(message)

    try:
        result = run_scan(config, progress=progress)
    except Exception as e:
        if not isinstance(e, ScanCancelled):  # a rejected upload is not kept
            readers = [j for j in running_jobs() if j.config.get("weights") == config.weights]
            uploads.discard(config.weights, users=len(readers))
        raise
    finally:
        _free_gpu()
    record = {"label": charts.scan_label(result), "config": job.config,
              "result": result.to_json(), "created": time.time()}
    rid = scan_id_for(job.config)
    state.save_scan(rid, record)
    job.from_cache = result.cache.get("result") == "hit"
    job.record_id, job.fraction, job.message = rid, 1.0, "done"
    return rid


def submit_scan(config, owner: str | None = None) -> ScanJob:
    """Queue ``config`` on the scan worker for ``owner`` (default: this page's user); an
    identical scan of the same owner already running is reused."""
    owner = auth.session_user() if owner is None else owner
    executor, jobs, lock = _scan_worker()
    cfg = dataclasses.asdict(config)
    with lock:
        for job in jobs.values():
            if job.config == cfg and not job.done and job.owner == owner:
                return job
        job = ScanJob(job_id=uuid.uuid4().hex[:12], config=cfg, owner=owner)
        job.future = executor.submit(_run_job, job, config)
        jobs[job.job_id] = job
    return job


_ANY = "\0any"


def get_job(job_id: str | None, owner: str | None = None) -> ScanJob | None:
    """The job ``job_id`` if it belongs to ``owner`` (default: this page's user), else None."""
    job = _scan_worker()[1].get(job_id) if job_id else None
    owner = auth.session_user() if owner is None else owner
    return job if job is not None and job.owner == owner else None


def running_jobs(owner: str | None = _ANY) -> list[ScanJob]:
    """Jobs running or queued: every user's (the default, for the server's limits), or
    ``owner``'s only (None: this page's user)."""
    owner = auth.session_user() if owner is None else owner
    return [j for j in _scan_worker()[1].values()
            if not j.done and owner in (_ANY, j.owner)]


def cancel_job(job_id: str | None, owner: str | None = None) -> bool:
    """Ask ``owner``'s job to stop at its next step; False when it is not theirs or done."""
    job = get_job(job_id, owner)
    if job is None or job.done:
        return False
    job.cancel_requested = True
    return True


def job_progress(job: ScanJob) -> str:
    """The progress line of ``job`` as the browser may see it (no server folder)."""
    return guard.redact(f"Scanning {job.config['arch']} on {job.config['dataset']}: "
                        f"{job.message}")


def job_error(job: ScanJob) -> str | None:
    """The user-facing message of a failed job, or None."""
    if not job.done:
        return None
    exc = job.future.exception()
    if exc is None:
        return None
    if isinstance(exc, ScanCancelled):
        return "Scan cancelled."
    from rcvcore.errors import disk_error

    exc = disk_error(exc, state.runs_root(create=False)) or exc  # a full disk: one line
    if isinstance(exc, UserError):
        return guard.redact(str(exc))
    if auth.served():  # no traceback, no server path in the browser
        return guard.failure_message("The scan", exc)
    return (f"The scan failed: {type(exc).__name__}: {exc}\n\n"
            + "".join(traceback.format_exception(exc))[-3000:])


def _free_gpu() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never fail a scan
        pass


@dataclass(frozen=True, kw_only=True)
class SavedScan:
    """A scan saved by the dashboard (``<root>/_scans/<scan_id>.json``), read as its result."""

    scan_id: str
    label: str | None
    config: dict                  # the ScanConfig the form submitted, as a dict
    result: ScanResult
    created: float = 0.0
    chosen_cut: dict | None = None   # {"layer", "source", "at"}: chosen on the Scan page


def load_scans() -> dict[str, SavedScan]:
    """The saved scans, newest first; a record whose result does not load is left out."""
    out = {}
    for sid, rec in state.load_scans().items():
        try:
            result = ScanResult.from_json(rec["result"])
        except Exception:  # a foreign or damaged file is not a scan (as one that is not JSON)
            continue
        out[sid] = SavedScan(scan_id=sid, label=rec.get("label"), config=rec.get("config") or {},
                             result=result, created=float(rec.get("created") or 0),
                             chosen_cut=rec.get("chosen_cut"))
    return out


def save_chosen_cut(scan_id: str, layer: str | None, source: str,
                    saved: dict[str, SavedScan]) -> None:
    """Keep the cut chosen on the Scan page with its scan (:func:`app.state.save_chosen_cut`)."""
    state.save_chosen_cut(scan_id, layer, source,
                          {sid: s.chosen_cut for sid, s in saved.items()})


def suggest_cut(result: ScanResult) -> tuple[str | None, str]:
    """rcvcore's suggested cut (layer, rule) for a scan result."""
    try:
        layer, rule = result.suggest_cut()
    except Exception as e:  # an old or partial result: say so, do not crash the page
        return None, f"No suggestion for this scan ({type(e).__name__}: {e})."
    return layer, rule


def scan_cut(scan: SavedScan, layer: str | None, source: str) -> dict:
    """The cut record the Train page is prefilled from: the scan's network, weights, dataset
    (spec and loader options), exclusions, ``layer`` and where it comes from (``source``)."""
    result, config = scan.result, scan.config
    suggested, rule = suggest_cut(result)
    return {"arch": result.config.arch or config.get("arch"), "weights": config.get("weights"),
            "layer": layer, "dataset": config.get("dataset") or result.dataset,
            "dataset_options": dict(config.get("dataset_options") or {}),
            "exclude": list(config.get("exclude") or ()), "scan_id": scan.scan_id,
            "label": scan.label, "suggested": suggested, "reason": rule,
            "source": source}


def train_prefill(scan_id: str | None, layer: str | None, session_cut: dict | None
                  ) -> tuple[dict | None, str | None]:
    """What the Train page offers, and why not: ``(cut record or None, problem or None)``.

    In order: the page's link (``?scan=ID&cut=LAYER``), this tab's Scan page, the cut chosen
    last on the Scan page in any tab (saved with its scan, :func:`app.state.last_chosen_scan`).
    """
    saved = load_scans()
    if scan_id:
        scan = saved.get(scan_id)
        if scan is None:
            return None, (f"The link names scan `{scan_id}`, which is not saved on this "
                          "server: choose a cut on the Scan page.")
        layer = layer or (scan.chosen_cut or {}).get("layer")
        names = [s.layer for s in scan.result.layers]
        if layer and layer not in names:
            return None, (f"The link's cut `{layer}` is not a layer of scan `{scan_id}`; "
                          f"its layers: {', '.join(map(str, names))}.")
        return scan_cut(scan, layer, "link"), None
    if session_cut:
        return {"source": "tab", **session_cut}, None
    sid = state.last_chosen_scan({sid: s.chosen_cut for sid, s in saved.items()})
    if sid is None:
        return None, None
    return scan_cut(saved[sid], saved[sid].chosen_cut.get("layer"), "saved"), None


def cut_refusal(arch: str, cut: str, baseline: bool) -> str | None:
    """Why a launch of ``cut`` (with the full ``baseline`` or not) compares a model with itself,
    or None: a cut at the last feature layer is the full network; ``none`` with the baseline
    is the full network twice."""
    from rcvcore.errors import UserError
    from rcvcore.models import get_arch
    from rcvcore.prune import check_pruned

    if cut == NONE and baseline:
        return ("The pruned model 'none' is the full network, the same as the baseline: the "
                "comparison would compare a model with itself. Choose a layer to cut at, or "
                "untick *Also train the unpruned baseline* to train the full network alone.")
    try:
        check_pruned(get_arch(arch), cut)
    except UserError as e:
        return str(e).replace("--cut none", "'none'")
    return None


def scan_leak(cut0: dict, dataset: str | None) -> str | None:
    """Why the scan that chose ``cut0`` may have seen the test groups of a comparison on
    ``dataset`` (issue 22: no test data in any choice), or None when it saw other data."""
    if not cut0.get("scan_id") or cut0.get("dataset") != dataset:
        return None
    rescan = (f"`python -m rcvcore scan --arch {cut0.get('arch')} --weights "
              f"{cut0.get('weights')} --dataset {dataset} --exclude RUNS_OR_LIST`")
    if not cut0.get("exclude"):
        return (f"The scan that chose this cut saw every image of **{dataset}**, including the "
                "test patches this comparison is scored on: the cut is chosen with test data. "
                f"Rescan leaving them out ({rescan}: a comparison or run folder, or a text file "
                "of image paths, see README) and choose the cut on that scan; `python -m "
                "rcvcore demo transfer` does this for demo-he.")
    return (f"The scan that chose this cut left out {len(cut0['exclude'])} images of "
            f"**{dataset}** ({rescan}); make sure they include this comparison's test split "
            "(the same dataset, split seeds and fractions).")


#: rcvcore's advice names CLI flags; the Scan page says it with its own controls
PAGE_TERMS = {"--no-per-class": "*Scoring: pooled* (Options)",
              "--per-class": "*Scoring: per class* (Options)",
              "--ungrouped": "*Grouped splits* unticked (Options)",
              "--repeats": "*Repeats* (Options)", "--controls": "*Controls* (Options)",
              "--model": "*Regression* (Options)", "--batch-size": "*Batch size* (Options)",
              "--n": "*Images* (Options)", "--opt": "*Dataset options*",
              "--dataset": "*Dataset*"}
_FLAG = re.compile(r"`?(" + "|".join(sorted(map(re.escape, PAGE_TERMS), key=len, reverse=True))
                   + r")(?![\w-])`?")


def page_terms(text: str) -> str:
    """``text`` with the CLI flags that have a Scan page control named as that control."""
    return _FLAG.sub(lambda m: PAGE_TERMS[m.group(1)], text or "")


def legend_labels(results: list[ScanResult]) -> list[str]:
    """Short legend names of the scans shown together: only what tells them apart
    (network, weights, dataset, images, regression), the network alone for a single scan."""
    parts = [(r.config.arch, r.config.weights, r.dataset, f"n={r.n_images}", r.config.model)
             for r in results]
    varying = [i for i in range(5) if len({p[i] for p in parts}) > 1] or [0]
    base = [" · ".join(str(p[i]) for i in varying) for p in parts]
    # identical settings (e.g. another seed): numbered
    return [f"{label} #{base[:k].count(label) + 1}" if base.count(label) > 1 else label
            for k, label in enumerate(base)]


def scan_form_state(config: dict, archs: list[str], timm_choice: str,
                    scoring: dict) -> dict:
    """The Scan page's widget values (session-state keys) that show the scan ``config``
    (the ScanConfig as a dict): a reloaded page shows the settings of the scan running."""
    arch, weights = config.get("arch"), config.get("weights")
    out = {"scan_arch": arch if arch in archs else timm_choice}
    if arch not in archs:
        out["scan_timm_name"] = arch
    w = {"imagenet": "imagenet", "random": "random (control)"}.get(weights, "checkpoint")
    out[f"scan_weights_{arch}"] = w
    if w == "checkpoint":
        out["scan_ckpt_path"] = weights
    kind, _, path = str(config.get("dataset") or "").partition(":")
    out["scan_dataset"] = kind
    if path:
        out[f"scan_ds_path_{kind}"] = path
    out[f"scan_ds_opts_{kind}"] = "; ".join(
        f"{k}={v}" for k, v in (config.get("dataset_options") or {}).items())
    layers = config.get("layers") or "paper"
    out["scan_layer_mode"] = layers if layers in ("paper", "all") else "choose"
    if out["scan_layer_mode"] == "choose":
        out[f"scan_layers_{arch}"] = [x for x in str(layers).split(",") if x]
    per_class = {v: k for k, v in scoring.items()}
    out.update({"scan_n": int(config.get("n") or 0), "scan_repeats": int(config["repeats"]),
                "scan_model": config["model"], "scan_controls": list(config["controls"]),
                "scan_scoring": per_class.get(config.get("per_class"), "dataset default"),
                "scan_grouped": bool(config.get("grouped", True)),
                "scan_device": config["device"], "scan_batch": int(config["batch_size"]),
                "scan_seed": int(config["seed"]), "scan_use_cache": bool(config["use_cache"])})
    return out


def result_csv(result: ScanResult) -> str:
    return result.to_csv()


# --------------------------------------------------------------------------------------------
# fine-tuning runs (subprocesses writing their run directory; rcvcore.runs does the work)

RUN_STATES_ACTIVE = runs.ACTIVE


def _new_scheduler() -> runs.Scheduler:
    sched = runs.Scheduler()   # the root is $RCV_RUNS_DIR, resolved at each step
    sched.start()
    return sched


def _scheduler() -> runs.Scheduler:
    """One run scheduler per server (rcvcore's): its daemon thread starts queued runs of every
    group under the runs root, reaps finished children and finishes groups (comparison.json),
    so a group keeps going without an open page."""
    return state.server_object("run_scheduler", _new_scheduler)


def train_config(**kwargs):
    """A validated :class:`rcvcore.train.TrainConfig` (rcvcore raises UserError on bad input)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = guard.vet_config_kwargs(kwargs)  # served mode: paths under the data root
    return TrainConfig(**{k: v for k, v in kwargs.items() if k in names}).validate()


def run_dir_of(group: Path, cut: str, seed: int) -> Path:
    """``<group>/<cut>_seed<seed>``: the layout of rcvcore's run groups and comparisons."""
    return runs.run_dir_of(group, cut, seed)


def launch_group(config, seeds: list[int], baseline: bool, max_parallel: int = 1) -> Path:
    """Plan one run per (cut, seed) in a new group folder and start the first ones (the
    baseline, the full network, first for each seed); the server's scheduler starts the others
    as earlier ones end."""
    group = _scheduler().launch_group(config, seeds, baseline=baseline,
                                      max_parallel=max_parallel, group=None)
    _set_owner(group, auth.session_user())
    return group


# A launched group belongs to the user who launched it (served mode: only they may cancel or
# resume its runs; everyone signed in sees the runs, the shared view of the runs folder). The
# owner is an app concern, kept beside group.json in a file rcvcore never reads.
OWNER_FILE = ".owner"


def _set_owner(group: Path, user: str) -> None:
    (Path(group) / OWNER_FILE).write_text(hashlib.sha256(user.encode()).hexdigest())


def can_control(group: Path, user: str | None = None) -> bool:
    """Whether ``user`` (default: this page's) may cancel or resume the runs of ``group``:
    always outside served mode; in served mode only the user who launched it (a group launched
    from the command line, with no owner file, by nobody on the dashboard)."""
    if not auth.served():
        return True
    user = auth.session_user() if user is None else user
    try:
        owner = (Path(group) / OWNER_FILE).read_text().strip()
    except OSError:
        return False
    return owner == hashlib.sha256(user.encode()).hexdigest()


def _require_control(group: Path) -> None:
    if not can_control(group):
        raise UserError("These runs were launched by another user: only they can cancel or "
                        "resume them.")


def read_group(group: Path) -> dict | None:
    return runs.read_group(group)


def cancel_group(group: Path) -> None:
    """Cancel every active run of ``group`` and drop the ones not started yet (its owner only,
    :func:`can_control`)."""
    _require_control(group)
    _scheduler().cancel_group(group, wait=None)


def table2_view(group: Path) -> dict | None:
    """The group's Table 2 as display rows (measured, paired tests, the paper's numbers, and
    ``"text"``), or None before any run finished. Reads only."""
    comp = runs.group_comparison(group)
    return None if comp is None or not comp.rows else {**comp.view(), "text": comp.table()}


def protocol_head_init(protocol: str) -> str:
    """The head initialisation a protocol starts with (``rcv`` or ``random``)."""
    return PROTOCOLS[protocol].head_init


def launch_demo_model() -> None:
    """Start training the demo model (:func:`rcvcore.demo.launch_demo_model`) as a run
    process reaped by the server's scheduler."""
    check_training(1, demo.DEMO_SETTINGS["epochs"], 1, 1)
    proc = demo.launch_demo_model(state.runs_root())
    if proc is not None:
        _scheduler().adopt(demo.demo_model_dir(state.runs_root()), proc)


def demo_model_status() -> dict:
    """Where the demo model stands: ``{"state", "run_dir", "message", "fraction", "test",
    "n_test", "cut", "demo_cut", "error"}`` (state ``missing`` before the first launch;
    ``demo_cut`` is the demo's current cut, ``cut`` the run's)."""
    run = demo.demo_model_dir(state.runs_root(create=False))
    if not run.is_dir():
        return {"state": "missing", "run_dir": str(run), "cut": demo.DEMO_CUT,
                "demo_cut": demo.DEMO_CUT, "epochs": demo.DEMO_SETTINGS["epochs"]}
    rs = runs.read_run(run)
    st, cfg = rs.status, rs.config or {}
    epochs = cfg.get("epochs") or 1
    frac = 1.0 if rs.state == "done" else min(0.99, (st.get("epoch") or 0) / max(epochs, 1))
    return {"state": run_state(rs), "run_dir": str(run), "message": st.get("message") or "",
            "fraction": frac, "test": (rs.result or {}).get("test") or {},
            "n_test": (rs.result or {}).get("n_test"), "cut": cfg.get("cut") or demo.DEMO_CUT,
            "demo_cut": demo.DEMO_CUT, "epochs": cfg.get("epochs") or demo.DEMO_SETTINGS["epochs"],
            "error": st.get("error") or start_failure(rs)}


def held_out_samples(run_dir: str, limit: int = 8) -> list[tuple[str, bytes, str | None]]:
    """Up to ``limit`` test patches of a finished run (never seen in its training), spread over
    the classes: ``(file name, bytes, true class)``."""
    out = []
    for h in demo.held_out_patches(run_dir, limit):
        p = Path(h.path)
        if p.is_file():
            out.append((f"{p.parent.name}/{p.name}", p.read_bytes(), h.label))
    return out


def reap_children() -> None:
    _scheduler().reap()


def run_state(rs) -> str:
    """``rs.state``, except a run whose process ended before writing any status: ``failed``."""
    return _scheduler().run_state(rs)


def start_failure(rs) -> str | None:
    """Why a run never started (its process ended before writing status), with its log tail."""
    why = _scheduler().start_failure(rs)
    if why and auth.served():  # the log tail holds a traceback with server paths
        return why.split("\n\n", 1)[0]
    return why


def list_groups() -> dict[str, list[Path]]:
    """Run groups under the runs root, newest first: ``{group name: [run dirs that exist]}``."""
    return runs.list_groups(state.runs_root())


def read_runs(run_dirs: list[Path]) -> list:
    return [runs.read_run(r) for r in run_dirs]


def cancel_run(run_dir: Path) -> str:
    """Cancel one run of a group (its owner only, :func:`can_control`)."""
    _require_control(Path(run_dir).parent)
    return runs.cancel(run_dir, wait=None)  # a run still launching is cancelled by the scheduler


def resume_run(group: Path, run_dir: Path) -> str:
    """Resume a cancelled, interrupted or failed run of ``group`` from its last checkpoint
    (:meth:`rcvcore.runs.Scheduler.resume_run`; its owner only); returns its state."""
    _require_control(group)
    return _scheduler().resume_run(group, run_dir)


def active_or_waiting_runs() -> int:
    """Runs running, or planned and not started, in every group under the runs root."""
    n = 0
    for group, dirs in list_groups().items():
        n += sum(run_state(r) in RUN_STATES_ACTIVE for r in read_runs(dirs))
        plan = read_group(state.runs_root() / group)
        if plan and not plan.get("cancelled"):
            n += max(0, len(plan["seeds"]) * len(plan["cuts"]) - len(dirs))
    return n


def check_training(n_seeds: int, epochs: int, parallel: int, n_runs: int) -> None:
    """Refuse a launch beyond the served dashboard's limits (:func:`app.guard.check_training`)."""
    if guard.limits() is not None:
        guard.check_training(n_seeds, epochs, parallel, n_runs, active_or_waiting_runs())


# --------------------------------------------------------------------------------------------
# uploads (app/uploads.py stores and deletes; here: which are in use)


def uploads_in_use() -> set[Path]:
    """Stored uploads a running or queued scan, or an active or waiting run, still reads."""
    used = {uploads.stored(job.config.get("weights")) for job in running_jobs()}
    try:
        for group, dirs in list_groups().items():
            plan = read_group(state.runs_root() / group) or {}
            if plan and not plan.get("cancelled"):
                used.add(uploads.stored((plan.get("base") or {}).get("weights")))
            used |= {uploads.stored((r.config or {}).get("weights")) for r in read_runs(dirs)
                     if run_state(r) in RUN_STATES_ACTIVE}
    except OSError:
        pass
    return used - {None}


def sweep_uploads(now: float | None = None) -> list[Path]:
    """Delete stored uploads unused for ``RCV_UPLOAD_TTL_HOURS`` (app/uploads.py)."""
    return uploads.sweep(uploads_in_use(), now)


def maybe_sweep_uploads(every_s: float = 600.0) -> None:
    """:func:`sweep_uploads` at most every ``every_s`` per server (called after page runs)."""
    if uploads.sweep_due(every_s):
        try:
            sweep_uploads()
        except OSError:  # a racing delete or a read-only folder must not break the page
            pass


def keep_upload(uploaded, kept: dict) -> str | None:
    """Store an uploaded checkpoint (:func:`app.uploads.keep`) and return its path, or draw why
    it was refused and return None."""
    try:
        if uploaded.file_id not in kept:
            sweep_uploads()
        return uploads.keep(uploaded, kept)
    except guard.Refused as e:
        st.error(str(e))
        return None


# --------------------------------------------------------------------------------------------
# prediction


def finished_runs() -> list[dict]:
    """Every run that is ``done``, newest group first: ``{"run_dir", "label", "config", ...}``."""
    out = []
    for group, dirs in list_groups().items():
        for r in read_runs(dirs):
            if r.state != "done" or not r.config:
                continue
            c, test = r.config, (r.result or {}).get("test", {})
            score = metric_summary(test, metric_names(listed=True))
            cut = "full" if c.get("cut") in (NONE, None) else f"cut at {c.get('cut')}"
            out.append({"run_dir": r.run_dir, "config": c,
                        "label": f"{group}/{Path(r.run_dir).name} · {c.get('arch')} {cut} · "
                                 f"{c.get('target')}" + (f" · test {score}" if score else "")})
    return out


@st.cache_resource(show_spinner="Loading the trained model...", max_entries=4)
def _loaded_run(run_dir: str, checkpoint_mtime_ns: int, device: str):
    from rcvcore.predict import load_run_model

    return load_run_model(run_dir, device)


def load_run(run_dir: str, device: str = "auto"):
    """The run's model, cached read-only across sessions (a new checkpoint reloads it)."""
    ck = Path(run_dir) / "checkpoint.pt"
    return _loaded_run(str(run_dir), ck.stat().st_mtime_ns if ck.exists() else 0, device)


def release_models() -> None:
    """Drop cached models (and their GPU memory)."""
    _loaded_run.clear()
    _free_gpu()


THUMBNAIL_PX = 160  # the longer side of each Predict card's image


def predict_uploads(run, items: list[tuple[str, bytes]]) -> list[dict]:
    """Predict uploaded files (name, bytes); each bad file gets its own ``error``. Each dict
    also holds the image's ``thumbnail`` (:data:`THUMBNAIL_PX`, None for a bad file) from the
    same decode."""
    from rcvcore.predict import predict_images

    lim = guard.limits()  # served: the request's decoded pixels are bounded
    budget = None if lim is None else lim.upload_megapixels * 1_000_000
    return [{**p.to_dict(), "thumbnail": p.thumbnail}
            for p in predict_images(run, items, thumbnail=THUMBNAIL_PX,
                                    max_total_pixels=budget)]


# --------------------------------------------------------------------------------------------
# whole slides


def check_slides(run_dir: str, slides_path: str, n_tiles: int, progress=None) -> dict:
    """Check the slides under ``slides_path`` (vetted like any served path) with a ``--target
    mpp`` run: ``{"rows": [...], "thumbnails": {path: image}, "domain": str | None}``."""
    from rcvcore.slidecheck import check_slides as run_check
    from rcvcore.slidecheck import thumbnail

    path = guard.vet_path(slides_path, "Slides")
    checks, domain = run_check(run_dir, [path], n_tiles=n_tiles, progress=progress)
    return {"rows": [c.row() for c in checks], "checks": checks,
            "thumbnails": {c.path: thumbnail(c, 320) for c in checks if c.verdict != "error"},
            "domain": domain.description if domain else None}

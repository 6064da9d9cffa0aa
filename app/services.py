"""Thin adapters between the pages and rcvcore: one function per user action, no science.

Scans run in one background worker thread of the server process (so a click elsewhere on the page
never aborts them and a reload finds them still running); fine-tuning runs are separate processes
that write their run directory (rcvcore.train), polled by the Train page.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import os

import streamlit as st

from app import state


# --------------------------------------------------------------------------------------------
# catalogue (cheap, cached per server)


def _arch_record(a) -> dict:
    return {"description": a.description, "layers": a.layer_names,
            "all_layers": [n for n, _ in a.all_layers], "paper_cut": a.paper_cut}


@st.cache_data(show_spinner=False)
def arch_catalogue() -> dict[str, dict]:
    """``{arch: {"description", "layers", "all_layers", "paper_cut"}}`` from the registry."""
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
    from rcvcore.errors import WeightsUnavailable
    from rcvcore.models import resolve_backbone, weights_available

    ok, where = weights_available(arch)
    if ok:
        return True, where
    old = os.environ.get("RCV_NO_DOWNLOAD")
    os.environ["RCV_NO_DOWNLOAD"] = "1"       # only ask what is on this machine
    try:
        resolve_backbone(arch, "imagenet")
        return True, where
    except WeightsUnavailable as e:
        why = str(e)
    finally:
        if old is None:
            os.environ.pop("RCV_NO_DOWNLOAD", None)
        else:
            os.environ["RCV_NO_DOWNLOAD"] = old
    return False, (f"ImageNet weights for **{arch}** are not on this machine. {why} "
                   "**efficientnet_lite0** has ImageNet weights that need no download.")


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

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()


class ScanCancelled(Exception):
    pass


@st.cache_resource(show_spinner=False)
def _scan_worker() -> tuple[ThreadPoolExecutor, dict[str, ScanJob], threading.Lock]:
    # one scan at a time: a scan already uses every core (and the GPU)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcv-scan"), {}, threading.Lock()


def scan_id_for(config: dict) -> str:
    """Id of a saved scan: its full configuration and the rcvcore version."""
    import rcvcore

    key = {"config": config, "rcvcore": rcvcore.__version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_config(**kwargs):
    """A :class:`rcvcore.scan.ScanConfig` from the form's values (validation is rcvcore's)."""
    from rcvcore.scan import ScanConfig

    names = {f.name for f in dataclasses.fields(ScanConfig)}
    return ScanConfig(**{k: v for k, v in kwargs.items() if k in names})


def _run_job(job: ScanJob, config) -> str:
    from rcvcore.scan import run_scan

    def progress(fraction: float, message: str) -> None:
        if job.cancel_requested:
            raise ScanCancelled("cancelled")
        job.fraction, job.message = float(fraction), str(message)

    try:
        result = run_scan(config, progress=progress)
    finally:
        _free_gpu()
    record = {"label": None, "config": job.config, "result": result.to_json(),
              "created": time.time()}
    record["label"] = default_label(record["result"])
    rid = scan_id_for(job.config)
    state.save_scan(rid, record)
    job.from_cache = result.cache.get("result") == "hit"
    job.record_id, job.fraction, job.message = rid, 1.0, "done"
    return rid


def submit_scan(config) -> ScanJob:
    """Queue ``config`` on the scan worker; an identical scan already running is reused."""
    executor, jobs, lock = _scan_worker()
    cfg = dataclasses.asdict(config)
    with lock:
        for job in jobs.values():
            if job.config == cfg and not job.done:
                return job
        job = ScanJob(job_id=uuid.uuid4().hex[:12], config=cfg)
        job.future = executor.submit(_run_job, job, config)
        jobs[job.job_id] = job
    return job


def get_job(job_id: str | None) -> ScanJob | None:
    if not job_id:
        return None
    return _scan_worker()[1].get(job_id)


def running_jobs() -> list[ScanJob]:
    return [j for j in _scan_worker()[1].values() if not j.done]


def job_error(job: ScanJob) -> str | None:
    """The user-facing message of a failed job, or None."""
    if not job.done:
        return None
    exc = job.future.exception()
    if exc is None:
        return None
    if isinstance(exc, ScanCancelled):
        return "Scan cancelled."
    from rcvcore.errors import UserError

    if isinstance(exc, UserError):
        return str(exc)
    return (f"The scan failed: {type(exc).__name__}: {exc}\n\n"
            + "".join(traceback.format_exception(exc))[-3000:])


def default_label(result: dict) -> str:
    return f"{result.get('arch')} · {result.get('weights')} · {result.get('dataset')}"


def _free_gpu() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never fail a scan
        pass


def suggest_cut(result: dict) -> tuple[str | None, str]:
    """rcvcore's suggested cut (layer, rule) for a scan result dict."""
    from rcvcore.scan import ScanResult

    try:
        layer, rule = ScanResult.from_json(result).suggest_cut()
    except Exception as e:  # an old or partial result: say so, do not crash the page
        return None, f"No suggestion for this scan ({type(e).__name__}: {e})."
    return layer, rule


def result_csv(result: dict) -> str:
    from rcvcore.scan import ScanResult

    return ScanResult.from_json(result).to_csv()


# --------------------------------------------------------------------------------------------
# fine-tuning runs (subprocesses writing their run directory)

RUN_STATES_ACTIVE = ("launching", "running")


@st.cache_resource(show_spinner=False)
def _children() -> dict[str, object]:
    """Popen handles of the runs this server started (polled so that none is left a zombie)."""
    return {}


def train_config(**kwargs):
    """A validated :class:`rcvcore.train.TrainConfig` (rcvcore raises UserError on bad input)."""
    from rcvcore.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in kwargs.items() if k in names}).validate()


GROUP_FILE = "group.json"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def run_dir_of(group: Path, cut: str, seed: int) -> Path:
    """``<group>/<cut>_seed<seed>``: the layout of rcvcore.compare, so it can reuse the runs."""
    return group / f"{cut}_seed{seed}"


def launch_group(config, seeds: list[int], baseline: bool, max_parallel: int = 1) -> Path:
    """Plan one run per (cut, seed) in a new group folder and start the first ones.

    The baseline (``cut="none"``, the full network) comes first for each seed, as in
    rcvcore.compare. Runs beyond ``max_parallel`` wait in ``group.json`` and are started by the
    server's scheduler thread as earlier ones end (so they do not need an open page).
    """
    group = state.runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.arch}-{config.cut}"
    k = 1
    while group.exists():
        k += 1
        group = group.with_name(f"{group.name.split('~')[0]}~{k}")
    group.mkdir(parents=True)
    cuts = (["none"] if baseline and config.cut != "none" else []) + [config.cut]
    _write_json(group / GROUP_FILE, {
        "base": config.to_dict(), "cuts": cuts, "seeds": [int(s) for s in seeds],
        "max_parallel": int(max(1, max_parallel)), "cancelled": False, "created": time.time()})
    advance_group(group)
    _scheduler()
    return group


def read_group(group: Path) -> dict | None:
    try:
        return json.loads((Path(group) / GROUP_FILE).read_text())
    except (OSError, ValueError):
        return None


def advance_group(group: Path) -> int:
    """Start planned runs of ``group`` while fewer than ``max_parallel`` are active.

    Returns the number of runs still waiting to start.
    """
    from rcvcore.train import TrainConfig, launch, read_run

    plan = read_group(group)
    if not plan or plan.get("cancelled"):
        return 0
    base = TrainConfig.from_dict(plan["base"])
    pending, active = [], 0
    for seed in plan["seeds"]:
        for cut in plan["cuts"]:
            d = run_dir_of(group, cut, seed)
            if not d.exists():
                pending.append((cut, seed, d))
            elif read_run(d).state in RUN_STATES_ACTIVE:
                active += 1
    children = _children()
    while pending and active < plan["max_parallel"]:
        cut, seed, d = pending.pop(0)
        children[str(d)] = launch(dataclasses.replace(base, cut=cut, seed=int(seed)), d)
        active += 1
    return len(pending)


def _cancel_started(group: Path) -> None:
    """SIGTERM the runs of a cancelled group that have reached ``running`` (a run still
    launching has no pid yet; the scheduler comes back to it)."""
    from rcvcore.train import cancel, read_run

    for d in Path(group).iterdir():
        if d.is_dir() and read_run(d).state == "running":
            cancel(d, wait=None)


def cancel_group(group: Path) -> None:
    """Cancel every active run of ``group`` and drop the ones not started yet."""
    plan = read_group(group)
    if plan is not None:
        plan["cancelled"] = True
        _write_json(Path(group) / GROUP_FILE, plan)
    for r in read_runs(list_groups().get(Path(group).name, [])):
        if r.state in RUN_STATES_ACTIVE:
            cancel_run(Path(r.run_dir))


@st.cache_resource(show_spinner=False)
def _scheduler() -> threading.Thread:
    """One daemon thread per server: starts queued runs and reaps finished children."""
    def loop():
        while True:
            try:
                reap_children()
                root = state.runs_root(create=False)
                for g in (root.iterdir() if root.is_dir() else ()):
                    if (g / GROUP_FILE).is_file():
                        if advance_group(g) == 0 and (read_group(g) or {}).get("cancelled"):
                            _cancel_started(g)
            except Exception:  # never let the scheduler die on a half-written folder
                pass
            time.sleep(2.0)

    t = threading.Thread(target=loop, name="rcv-run-scheduler", daemon=True)
    t.start()
    return t


def group_table(group: Path, runs: list) -> tuple[str | None, list[dict]]:
    """rcvcore's Table 2 summary of the finished runs of ``group`` (text, rows), or (None, [])."""
    from rcvcore.compare import summarise
    from rcvcore.train import TrainConfig

    plan = read_group(group)
    if not plan:
        return None, []
    by_dir = {Path(r.run_dir).name: r for r in runs}
    results, states = {}, {}
    for seed in plan["seeds"]:
        for cut in plan["cuts"]:
            r = by_dir.get(run_dir_of(group, cut, seed).name)
            results[(cut, seed)] = r.result if r is not None and r.state == "done" else None
            states[(cut, seed)] = r.state if r is not None else "waiting"
    if not any(results.values()):
        return None, []
    finished = all(s in ("done", "failed", "cancelled") for s in states.values())
    comp = summarise(TrainConfig.from_dict(plan["base"]), plan["cuts"], plan["seeds"], results,
                     states, group, "cancelled" if plan.get("cancelled") else "done")
    if finished and not (group / "comparison.json").is_file():
        comp.save()  # the same comparison.json as `python -m rcvcore compare`
    return comp.table(), list(comp.rows)


@st.cache_resource(show_spinner=False)
def _exited() -> dict[str, int]:
    """Exit codes of the runs this server started, once their process has ended."""
    return {}


def reap_children() -> None:
    for key, proc in list(_children().items()):
        code = proc.poll()
        if code is not None:  # finished: collect its exit status, drop the handle
            _exited()[key] = code
            _children().pop(key, None)


def run_state(rs) -> str:
    """``rs.state``, except a run whose process ended before writing any status: ``failed``."""
    s = rs.state
    if s == "launching" and str(Path(rs.run_dir)) in _exited():
        return "failed"
    return s


def start_failure(rs) -> str | None:
    """Why a run never started (its process ended before writing status), with its log tail."""
    code = _exited().get(str(Path(rs.run_dir)))
    if rs.state != "launching" or code is None:
        return None
    try:
        tail = (Path(rs.run_dir) / "train.log").read_text()[-1500:]
    except OSError:
        tail = ""
    return f"the training process exited with status {code} before starting.\n\n{tail}"


def list_groups() -> dict[str, list[Path]]:
    """Run groups under the runs root, newest first: ``{group name: [run dirs that exist]}``.

    A run directory directly under the root (e.g. from the CLI) is its own group.
    """
    from rcvcore.train import is_run_dir

    root = state.runs_root()
    groups: list[tuple[float, str, list[Path]]] = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        if is_run_dir(d):
            groups.append((d.stat().st_mtime, d.name, [d]))
            continue
        runs = sorted((r for r in d.iterdir() if r.is_dir() and is_run_dir(r)), key=lambda p: p.name)
        plan = read_group(d)
        if runs or plan:
            groups.append(((plan or {}).get("created") or d.stat().st_mtime, d.name, runs))
    groups.sort(key=lambda g: (g[0], g[1]), reverse=True)
    return {name: runs for _, name, runs in groups}


def read_runs(run_dirs: list[Path]) -> list:
    from rcvcore.train import read_run

    return [read_run(r) for r in run_dirs]


def cancel_run(run_dir: Path) -> str:
    from rcvcore.train import cancel

    return cancel(run_dir, wait=None)  # a run still launching is cancelled by the scheduler


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
            score = ", ".join(f"{k} {test[k]:.3g}" for k in ("mae", "kappa", "accuracy")
                              if isinstance(test.get(k), (int, float)))
            cut = "full" if c.get("cut") in ("none", None) else f"cut at {c.get('cut')}"
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


def predict_uploads(run, items: list[tuple[str, bytes]]) -> list[dict]:
    """Predict uploaded files (name, bytes); each bad file gets its own ``error``."""
    from rcvcore.predict import predict_images

    return [p.to_dict() for p in predict_images(run, items)]

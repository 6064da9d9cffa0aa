"""The run concept: a run directory, reading and listing runs, their processes, and run groups.

A **run** is a directory:

- ``config.json``: the :class:`rcvcore.train.TrainConfig` (``--resume`` reads it back).
- ``metrics.jsonl``: one JSON object per line: ``{"kind": "step", ...}`` every ``log_every``
  steps (train loss, learning rate, images/s) and ``{"kind": "epoch", ...}`` per epoch (train
  loss, validation loss and metrics, learning rate, images/s).
- ``checkpoint.pt``: model, optimizer, epoch and step (plain dicts of tensors, numbers and
  strings: loads with ``torch.load(weights_only=True)``), written atomically at the end of every
  epoch and, optionally, every ``checkpoint_every`` steps.
- ``status.json``: ``{"state": "running" | "done" | "failed" | "cancelled", "pid", "error", ...}``.
- ``result.json``: test (and last validation) metrics, the task (classes, training-set class
  means) and the parameter count / forward cost of the full and the pruned model.
- ``train.log``: the output of a run started by :func:`launch`.

A **group** is a folder of runs ``<cut>_seed<seed>`` planned by ``group.json`` (``base``
configuration, ``cuts``, ``seeds``, ``max_parallel``, ``cancelled``, ``created``; rcvcore adds
``state``, ``error`` and ``finished``): the dashboard's "launch" and ``compare --parallel N``.
:class:`Scheduler` starts a group's runs, at most ``max_parallel`` at a time, as subprocesses;
when the last run of a group ends it writes the group's ``comparison.json`` (the paper's Table 2,
as ``python -m rcvcore compare`` writes it).

Everything here reads the directory as the training process writes it; nothing imports the
training loop. The root of everything the dashboard writes is ``$RCV_RUNS_DIR`` (default
``./runs``): :func:`runs_root`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .comparison import COMPARISON, Comparison, summarise
from .errors import Notice, UserError
from .evidence import check_replicate, replicate_config
from .files import atomic_path, json_safe, read_json, write_json
from .prune import NONE
from .train.config import TrainConfig, config_to_argv

log = logging.getLogger(__name__)

CONFIG, METRICS, CHECKPOINT, STATUS, RESULT, LOG = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "status.json", "result.json", "train.log")
GROUP = "group.json"
#: Version of the checkpoint's layout (``format`` key).
CHECKPOINT_FORMAT = 1
#: States of a run that has not ended yet (``launching``: started, no status written yet).
ACTIVE = ("launching", "running")
#: States a run ends in.
FINISHED = ("done", "failed", "cancelled")
RUNS_DIR_ENV = "RCV_RUNS_DIR"


def runs_root(root=None, *, create: bool = False) -> Path:
    """The folder of runs: ``root`` when given, else ``$RCV_RUNS_DIR``, else ``./runs``."""
    path = Path(root if root is not None else os.environ.get(RUNS_DIR_ENV) or "runs")
    path = path.expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


class RunFailed(RuntimeError):
    """The run stopped as ``failed`` (e.g. a NaN loss); the message says why and what to try."""


class RunCancelled(RuntimeError):
    """The run was cancelled (SIGTERM/SIGINT); its state is consistent and resumable."""


@dataclass(frozen=True)
class RunResult:
    """How a run ended, and its ``result.json`` contents (None unless ``done``)."""

    run_dir: str
    state: str
    result: dict | None = None
    error: str | None = None


# --------------------------------------------------------------------------------------------
# reading a run (the dashboard polls these)


def read_metrics(run_dir) -> list[dict]:
    """Every record of ``metrics.jsonl`` (a partly written last line is ignored)."""
    out = []
    try:
        text = (Path(run_dir) / METRICS).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass   # the line being written right now
    return out


def pid_alive(pid) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class RunState:
    """A snapshot of a run directory, as :func:`read_run` finds it.

    ``state`` is the status file's state, except ``"launching"`` (no status yet) and
    ``"interrupted"`` (status says running but its process on this host is gone: resume it).
    """

    run_dir: str
    config: dict | None
    status: dict
    metrics: list[dict]
    result: dict | None

    @property
    def state(self) -> str:
        s = self.status.get("state")
        if s is None:
            return "launching"
        if (s == "running" and self.status.get("host") == socket.gethostname()
                and not pid_alive(self.status.get("pid"))):
            return "interrupted"
        return s

    @property
    def epochs(self) -> list[dict]:
        return [m for m in self.metrics if m.get("kind") == "epoch"]

    @property
    def steps(self) -> list[dict]:
        return [m for m in self.metrics if m.get("kind") == "step"]


def read_run(run_dir) -> RunState:
    """Read a run directory (config, status, metrics, result); never raises for partial runs."""
    d = Path(run_dir)
    return RunState(str(d), read_json(d / CONFIG), read_json(d / STATUS) or {},
                    read_metrics(d), read_json(d / RESULT))


def is_run_dir(d) -> bool:
    """Whether ``d`` looks like a run directory (a config, a status or a launch log)."""
    d = Path(d)
    return (d / CONFIG).is_file() or (d / STATUS).is_file() or (d / LOG).is_file()


def is_group_dir(d) -> bool:
    """Whether ``d`` is a run group (it has a ``group.json``)."""
    return (Path(d) / GROUP).is_file()


def _run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root``: itself, its sub-directories, and theirs."""
    if is_run_dir(root):
        return [root]
    found = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith((".", "_")):
            continue
        if is_run_dir(d):
            found.append(d)
        else:
            found += [r for r in sorted(d.iterdir()) if r.is_dir() and is_run_dir(r)]
    return found


def find_runs(root) -> list[RunState]:
    """Every run under ``root``: ``root`` itself, its sub-directories, and theirs (the run
    folders of a ``compare`` or of a dashboard group), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is not a folder. Give the folder that holds run "
                        f"directories (default ${RUNS_DIR_ENV} or ./runs).")
    return [read_run(d) for d in _run_dirs(root)]


def list_groups(root=None) -> dict[str, list[Path]]:
    """Run groups under the runs root, newest first: ``{group name: [run dirs that exist]}``.

    A run directory directly under the root (e.g. from the CLI) is its own group.
    """
    root = runs_root(root)
    if not root.is_dir():
        return {}
    groups: list[tuple[float, str, list[Path]]] = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        if is_run_dir(d):
            groups.append((d.stat().st_mtime, d.name, [d]))
            continue
        runs = sorted((r for r in d.iterdir() if r.is_dir() and is_run_dir(r)),
                      key=lambda p: p.name)
        plan = read_group(d)
        if runs or plan:
            groups.append(((plan or {}).get("created") or d.stat().st_mtime, d.name, runs))
    groups.sort(key=lambda g: (g[0], g[1]), reverse=True)
    return {name: runs for _, name, runs in groups}


# --------------------------------------------------------------------------------------------
# writing a run (the training process; rank 0 only under DDP)


class RunWriter:
    """Everything the training process writes into its run directory besides the checkpoint.

    ``enabled=False`` (the other ranks of a DDP run) makes every method a no-op, so one process
    alone writes.
    """

    def __init__(self, run_dir, enabled: bool = True):
        self.dir, self.enabled = Path(run_dir), enabled
        self.status: dict = {}

    def write_config(self, config: TrainConfig, version: str) -> None:
        if self.enabled:
            write_json(self.dir / CONFIG, {**config.to_dict(), "rcvcore_version": version})
            (self.dir / METRICS).write_text("")

    def write_status(self, **kw) -> None:
        if not self.enabled:
            return
        self.status.update(kw, updated_at=time.time())
        write_json(self.dir / STATUS, self.status)

    def write_result(self, result: dict) -> None:
        if self.enabled:
            write_json(self.dir / RESULT, result)

    def log(self, record: dict, on_record=None) -> None:
        if not self.enabled:
            return
        record = json_safe({**record, "time": time.time()})
        with open(self.dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if on_record:
            on_record(record)

    def truncate_metrics(self, global_step: int, epochs_done: int) -> None:
        """Drop the records logged after the checkpoint we resume from."""
        if not self.enabled:
            return
        keep = [m for m in read_metrics(self.dir)
                if (m.get("kind") == "epoch" and m.get("epoch", 0) <= epochs_done)
                or (m.get("kind") != "epoch" and m.get("global_step", 0) <= global_step)]
        atomic_path(self.dir / METRICS, lambda tmp: tmp.write_text(
            "".join(json.dumps(m) + "\n" for m in keep)))


#: The checkpoint before the latest one, kept so that a damaged latest one is not a dead end.
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"


def save_checkpoint(path, state: dict) -> None:
    """``torch.save`` atomically: a kill never leaves a torn checkpoint behind. The checkpoint
    it replaces is kept as :data:`PREVIOUS_CHECKPOINT` beside it."""
    path = Path(path)

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        if path.exists():      # a kill between the two renames leaves the previous one
            os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    atomic_path(path, write)


def load_checkpoint(path) -> dict:
    """Read a run checkpoint with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"No checkpoint at {p}; the run has not finished an epoch yet. Start it "
                        "again without --resume.")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        # one line, in our words: torch's own can quote the file or run over many lines
        why = ("holds Python objects other than tensors and is refused for safety"
               if "weights only load failed" in str(e).lower() else
               f"is empty, truncated or damaged ({type(e).__name__})")
        raise UserError(f"Checkpoint {p} cannot be read: it {why}.") from None
    if not isinstance(ck, dict):
        raise UserError(f"Checkpoint {p} cannot be read: it is not an rcvcore run checkpoint.")
    return ck


def load_resume_checkpoint(run_dir) -> tuple[dict, Path] | None:
    """The checkpoint a run resumes from: the latest, or the previous one (with a warning) when
    the latest is missing or unreadable; None when the run has none yet.

    Raises:
        UserError: neither checkpoint can be read (then ``train --restart`` starts afresh).
    """
    import warnings

    run = Path(run_dir)
    latest, previous = run / CHECKPOINT, run / PREVIOUS_CHECKPOINT
    if not latest.exists() and not previous.exists():
        return None
    problem = None
    if latest.exists():
        try:
            return load_checkpoint(latest), latest
        except UserError as e:
            problem = str(e)
    if previous.exists():
        try:
            ck = load_checkpoint(previous)
        except UserError as e:
            raise UserError(f"{problem or f'No {CHECKPOINT} in {run}.'} The previous checkpoint "
                            f"cannot be read either ({e}). Start the run again with "
                            f"`python -m rcvcore train --restart --run-dir {run} ...`.") from None
        warnings.warn(f"{problem or f'No {CHECKPOINT} in {run}.'} Resuming from the previous "
                      f"checkpoint {previous} (epoch {ck.get('epoch')}, step "
                      f"{ck.get('global_step')}).", Notice, stacklevel=2)
        return ck, previous
    raise UserError(f"{problem} Start the run again with `python -m rcvcore train --restart "
                    f"--run-dir {run} ...`.")


def clear_run_dir(run_dir) -> list[str]:
    """Remove a run's files (configuration, status, metrics, result, checkpoints) so the
    directory can hold a new run (``train --restart``); a running run is refused.

    Returns the names removed. Other files in the directory are left alone.
    """
    run = Path(run_dir)
    st = read_json(run / STATUS) or {}
    pid = st.get("pid")
    if st.get("state") == "running" and isinstance(pid, int) and pid_alive(pid) and \
            st.get("host") in (None, socket.gethostname()):
        raise UserError(f"--restart: the run in {run} is running (pid {pid}). Cancel it first: "
                        f"`python -m rcvcore runs cancel {run}`.")
    removed = []
    for name in (CONFIG, STATUS, METRICS, RESULT, CHECKPOINT, PREVIOUS_CHECKPOINT):
        try:
            (run / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed



# --------------------------------------------------------------------------------------------
# processes


def launch(config: TrainConfig | None, run_dir, *, resume: bool = False,
           python: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m rcvcore train`` for ``config`` as a detached subprocess.

    Output goes to ``RUN_DIR/train.log``; the child writes its pid into ``status.json`` (use
    :func:`cancel` to stop it). With ``resume=True`` the configuration is read back from the run
    directory and ``config`` may be None.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    argv = [python or sys.executable, "-m", "rcvcore", "train", "--run-dir", str(run)]
    if resume:
        argv.append("--resume")
    else:
        if config is None:
            raise UserError("launch: give a TrainConfig, or resume=True for an existing run.")
        argv += config_to_argv(config.validate())
    with open(run / LOG, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})


def cancel(run_dir, *, wait: float | None = 60.0) -> str:
    """Send SIGTERM to the run's process; it finishes its step, checkpoints, marks ``cancelled``.

    Args:
        run_dir: the run directory.
        wait: seconds to wait for the state to leave ``running`` (None: do not wait).

    Returns:
        The run's state afterwards (``cancelled``, or ``done``/``failed`` if it ended first).
    """
    st = read_run(run_dir)
    if st.state != "running":
        return st.state
    try:
        os.kill(int(st.status.get("pid")), signal.SIGTERM)
    except (OSError, TypeError, ValueError):
        return read_run(run_dir).state
    deadline = time.monotonic() + (wait or 0)
    while wait is not None and time.monotonic() < deadline:
        s = read_run(run_dir).state
        if s not in ACTIVE:
            return s
        time.sleep(0.2)
    return read_run(run_dir).state


# --------------------------------------------------------------------------------------------
# groups


def run_dir_of(group, cut: str, seed: int) -> Path:
    """``<group>/<cut>_seed<seed>``: the layout of every group and comparison."""
    return Path(group) / f"{cut}_seed{int(seed)}"


def read_group(group) -> dict | None:
    """The plan of a group (``group.json``), or None."""
    plan = read_json(Path(group) / GROUP)
    return plan if isinstance(plan, dict) and "cuts" in plan and "seeds" in plan else None


def _update_group(group, **changes) -> dict | None:
    plan = read_group(group)
    if plan is not None:
        plan.update(changes)
        write_json(Path(group) / GROUP, plan)
    return plan


def plan_group(group, base: TrainConfig, cuts, seeds, max_parallel: int = 1,
               replicate: str = "split") -> Path:
    """Write ``group.json`` for one run per (cut, seed) of ``base`` into the folder ``group``;
    ``replicate`` (:mod:`rcvcore.evidence`): ``split`` gives each seed its own data split.

    Runs are ordered seed-major, as in :func:`rcvcore.compare.compare`: an interrupted group
    still has paired runs. Nothing is started (see :meth:`Scheduler.advance`).
    """
    cuts = list(dict.fromkeys(cuts))
    if not cuts or not seeds:
        raise UserError("A run group needs at least one cut and one seed.")
    if int(max_parallel) < 1:
        raise UserError(f"--parallel must be >= 1, got {max_parallel}.")
    for c in cuts:
        dataclasses.replace(base, cut=c).validate()
    group = Path(group)
    group.mkdir(parents=True, exist_ok=True)
    plan = read_group(group)
    new = {"base": base.to_dict(), "cuts": cuts, "seeds": [int(s) for s in seeds],
           "max_parallel": int(max_parallel), "cancelled": False,
           "created": (plan or {}).get("created") or time.time(), "state": "running",
           "error": None, "replicate": check_replicate(replicate)}
    write_json(group / GROUP, new)
    return group


def new_group_dir(root, config: TrainConfig) -> Path:
    """A fresh ``<root>/<date>-<arch>-<cut>`` folder name (``~2``, ``~3`` ... when taken)."""
    group = runs_root(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.arch}-{config.cut}"
    k = 1
    while group.exists():
        k += 1
        group = group.with_name(f"{group.name.split('~')[0]}~{k}")
    return group


def group_runs(group) -> list[tuple[str, int, Path, RunState | None]]:
    """``(cut, seed, run dir, state or None when not started)`` of each planned run."""
    plan = read_group(group) or {"cuts": [], "seeds": []}
    out = []
    for seed in plan["seeds"]:
        for cut in plan["cuts"]:
            d = run_dir_of(group, cut, seed)
            out.append((cut, int(seed), d, read_run(d) if d.exists() else None))
    return out


def group_comparison(group) -> Comparison | None:
    """The Table 2 summary of the finished runs of ``group``, or None when none has finished.
    Reads only (the group's completion writes ``comparison.json``)."""
    plan = read_group(group)
    if not plan:
        return None
    results, states = {}, {}
    for cut, seed, _, st in group_runs(group):
        results[(cut, seed)] = st.result if st is not None and st.state == "done" else None
        states[(cut, seed)] = st.state if st is not None else "waiting"
    if not any(results.values()):
        return None
    return summarise(TrainConfig.from_dict(plan["base"]), plan["cuts"], plan["seeds"], results,
                     states, group, "cancelled" if plan.get("cancelled") else "done")


def read_comparison(run_dir) -> dict | None:
    """``comparison.json`` of a comparison directory or group, or None."""
    return read_json(Path(run_dir) / COMPARISON)


class Scheduler:
    """Starts the planned runs of groups, at most ``max_parallel`` at a time per group, as
    subprocesses (:func:`launch`); reaps them; finishes a group when its last run has ended.

    One scheduler per process that launches runs: the dashboard server keeps one running in a
    daemon thread (:meth:`start`) over every group of the runs root; ``compare --parallel``
    drives one group in the foreground (:meth:`wait`). Errors never stop it: each is logged and
    recorded in the group's ``group.json`` (``error``).

    Args:
        root: folder of groups for :meth:`step`; None: :func:`runs_root` at each step.
        env: extra environment of the run processes.
    """

    def __init__(self, root=None, env: dict | None = None):
        self._root = root
        self.env = env
        self.children: dict[str, subprocess.Popen] = {}
        self.exited: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return runs_root(self._root)

    # ---- processes
    def reap(self) -> None:
        """Collect the exit status of finished children (none is left a zombie)."""
        with self._lock:
            for key, proc in list(self.children.items()):
                code = proc.poll()
                if code is not None:
                    self.exited[key] = code
                    self.children.pop(key, None)

    def adopt(self, run_dir, proc: subprocess.Popen) -> None:
        """Reap ``proc`` (a run launched outside a group, e.g. the demo model) like the
        group's runs."""
        with self._lock:
            self.children[str(Path(run_dir))] = proc

    def run_state(self, rs: RunState) -> str:
        """``rs.state``, except a run whose process ended before writing any status:
        ``failed``."""
        if rs.state == "launching" and str(Path(rs.run_dir)) in self.exited:
            return "failed"
        return rs.state

    def start_failure(self, rs: RunState) -> str | None:
        """Why a run never started (its process ended before writing status), with its log."""
        code = self.exited.get(str(Path(rs.run_dir)))
        if rs.state != "launching" or code is None:
            return None
        try:
            tail = (Path(rs.run_dir) / LOG).read_text()[-1500:]
        except OSError:
            tail = ""
        return f"the training process exited with status {code} before starting.\n\n{tail}"

    # ---- groups
    def launch_group(self, config: TrainConfig, seeds, cuts=None, *, baseline: bool = True,
                     max_parallel: int = 1, group=None) -> Path:
        """Plan a group and start its first runs; returns the group folder.

        Args:
            config: the base configuration (its ``cut`` is the pruned model).
            seeds: the seeds of the runs.
            cuts: the cuts (first = baseline of the paired tests); default ``config.cut``,
                preceded by ``none`` (the full network) when ``baseline``.
            max_parallel: runs at a time; the others wait in ``group.json``.
            group: the group folder (default a new one under the root).
        """
        if cuts is None:
            cuts = ([NONE] if baseline and config.cut != NONE else []) + [config.cut]
        group = Path(group) if group is not None else new_group_dir(self.root, config)
        plan_group(group, config, cuts, seeds, max_parallel)
        self.advance(group)
        return group

    def advance(self, group, *, resume: set[str] | None = None) -> int:
        """Start planned runs of ``group`` while fewer than ``max_parallel`` are active;
        cancel started runs of a cancelled group; finish the group when every run has ended.

        Args:
            resume: run directories (``str``) to resume once if they have ended without being
                done (``compare --parallel`` run again over interrupted or failed runs); each
                is removed from the set when its run is restarted.

        Returns:
            The number of runs still to start or still active (0: the group has finished).
        """
        resume = resume if resume is not None else set()
        with self._lock:
            self.reap()
            plan = read_group(group)
            if plan is None or plan.get("finished"):
                return 0
            base = TrainConfig.from_dict(plan["base"], str(Path(group) / GROUP))
            pending, active = [], 0
            for cut, seed, d, st in group_runs(group):
                state = None if st is None else self.run_state(st)
                if state is None or (str(d) in resume and state not in ACTIVE
                                     and state != "done"):
                    pending.append((cut, seed, d, st is not None and st.config is not None))
                elif state in ACTIVE:
                    active += 1
            if plan.get("cancelled"):
                for _, _, d, st in group_runs(group):
                    if st is not None and st.state == "running":
                        cancel(d, wait=None)
                pending = []
            while pending and active < int(plan.get("max_parallel", 1)):
                cut, seed, d, existing = pending.pop(0)
                resume.discard(str(d))
                self.exited.pop(str(d), None)
                cfg = replicate_config(base, cut, seed, plan.get("replicate", "seed"))
                self.children[str(d)] = launch(None if existing else cfg, d, resume=existing,
                                               env=self.env)
                active += 1
            if not pending and not active:
                self._finish(group, plan)
            return len(pending) + active

    def _finish(self, group, plan: dict) -> None:
        """The last run of the group has ended: write ``comparison.json`` and the state."""
        comp = group_comparison(group)
        if comp is not None:
            comp.save()
        _update_group(group, state="cancelled" if plan.get("cancelled") else "done",
                      finished=time.time())

    def cancel_group(self, group, *, wait: float | None = None) -> str:
        """Cancel every active run of ``group`` and drop the ones not started yet (a run still
        launching is cancelled by the next :meth:`advance`, once it has a pid)."""
        with self._lock:
            plan = _update_group(group, cancelled=True)
            if plan is None:
                raise UserError(f"{str(group)!r} is not a run group (no {GROUP}).")
            for _, _, d, st in group_runs(group):
                if st is not None and st.state == "running":
                    cancel(d, wait=None)
        end = time.monotonic() + (wait or 0)
        while wait is not None and time.monotonic() < end and self.advance(group):
            time.sleep(0.2)
        self.advance(group)
        return group_state(group)

    def step(self) -> None:
        """One pass over every group of the root (the server's thread calls it every 2 s)."""
        self.reap()
        root = self.root
        for g in sorted(root.iterdir()) if root.is_dir() else ():
            if not is_group_dir(g):
                continue
            try:
                self.advance(g)
                self.errors.pop(str(g), None)
            except Exception as e:  # one bad group must not stop the others: record it
                msg = f"{type(e).__name__}: {e}"
                log.exception("run scheduler: group %s", g)
                if self.errors.get(str(g)) != msg:
                    self.errors[str(g)] = msg
                    try:
                        _update_group(g, error=msg)
                    except OSError:
                        log.exception("run scheduler: cannot record the error in %s", g)

    def start(self, interval: float = 2.0) -> threading.Thread:
        """Run :meth:`step` every ``interval`` seconds in a daemon thread (once)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                def loop():
                    while True:
                        try:
                            self.step()
                        except Exception:  # e.g. the root vanished: log, keep scheduling
                            log.exception("run scheduler: step failed")
                        time.sleep(interval)

                self._thread = threading.Thread(target=loop, name="rcv-run-scheduler",
                                                daemon=True)
                self._thread.start()
        return self._thread

    def wait(self, group, *, interval: float = 1.0, resume: set[str] | None = None,
             progress=None) -> str:
        """Drive ``group`` in the foreground until every run has ended; returns its state.
        ``progress(fraction, message)`` gets the share of runs that have ended."""
        while True:
            left = self.advance(group, resume=resume)
            runs = group_runs(group)
            if progress:
                ended = sum(1 for *_, st in runs if st is not None and st.state in FINISHED)
                running = [d.name for *_, d, st in runs if st is not None and st.state in ACTIVE]
                progress(ended / max(len(runs), 1), f"{ended}/{len(runs)} runs ended"
                         + (f"; running {', '.join(running)}" if running else ""))
            if not left:
                return group_state(group)
            time.sleep(interval)


def group_state(group) -> str:
    """``waiting`` / ``running`` while runs remain, then ``done`` or ``cancelled``."""
    plan = read_group(group)
    if plan is None:
        return "missing"
    if plan.get("finished"):
        return plan.get("state") or "done"
    runs = group_runs(group)
    if any(st is not None and st.state in ACTIVE for *_, st in runs):
        return "running"
    return "cancelled" if plan.get("cancelled") else "waiting"

"""The scheduler of run groups: at most ``max_parallel`` runs of a group at a time."""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

from .._shared import NONE
from ..errors import UserError
from ..evidence import replicate_config
from .config import TrainConfig
from .directory import (
    ACTIVE,
    CONFIG,
    FINISHED,
    GROUP,
    LOG,
    RunState,
    is_group_dir,
    read_run,
    runs_root,
)
from .groups import (
    group_comparison,
    group_runs,
    group_state,
    new_group_dir,
    plan_group,
    read_group,
    update_group,
)
from .process import cancel, launch

log = logging.getLogger(__name__)


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
        self.resumes: set[str] = set()   # runs to resume as soon as their group has a slot
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
                cfg = replicate_config(base, cut, seed, plan.get("replicate", "seed"),
                                       plan.get("cut_of"))
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
        update_group(group, state="cancelled" if plan.get("cancelled") else "done",
                      finished=time.time())

    def cancel_group(self, group, *, wait: float | None = None) -> str:
        """Cancel every active run of ``group`` and drop the ones not started yet (a run still
        launching is cancelled by the next :meth:`advance`, once it has a pid)."""
        with self._lock:
            plan = update_group(group, cancelled=True)
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

    def resume_run(self, group, run_dir) -> str:
        """Resume one run of ``group`` that ended without finishing (cancelled, interrupted,
        failed) from its last checkpoint, as soon as the group has a free slot.

        A finished or cancelled group is reopened: runs of a cancelled group that had not
        started are planned again. Returns the run's state (``running`` once started).
        """
        run = Path(run_dir)
        with self._lock:
            plan = read_group(group)
            if plan is None:
                raise UserError(f"{str(group)!r} is not a run group (no {GROUP}).")
            state = self.run_state(read_run(run))
            if state in ACTIVE or state == "done":
                return state
            if not (run / CONFIG).is_file():
                raise UserError(f"{run.name} has no configuration to resume from; launch it "
                                "again instead.")
            update_group(group, cancelled=False, finished=None, state="running")
            self.resumes.add(str(run))
            self.advance(group, resume=self.resumes)
        return self.run_state(read_run(run))

    def step(self) -> None:
        """One pass over every group of the root (the server's thread calls it every 2 s)."""
        self.reap()
        root = self.root
        for g in sorted(root.iterdir()) if root.is_dir() else ():
            if not is_group_dir(g):
                continue
            try:
                self.advance(g, resume=self.resumes)
                self.errors.pop(str(g), None)
            except Exception as e:  # one bad group must not stop the others: record it
                msg = f"{type(e).__name__}: {e}"
                log.exception("run scheduler: group %s", g)
                if self.errors.get(str(g)) != msg:
                    self.errors[str(g)] = msg
                    try:
                        update_group(g, error=msg)
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

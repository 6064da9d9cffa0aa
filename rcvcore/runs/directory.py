"""The run directory: its file names, reading and listing runs, clearing a run.

A **run** is a directory:

- ``config.json``: the :class:`rcvcore.runs.config.TrainConfig` (``--resume`` reads it back).
- ``metrics.jsonl``: one JSON object per line: ``{"kind": "step", ...}`` every ``log_every``
  steps (train loss, learning rate, images/s) and ``{"kind": "epoch", ...}`` per epoch (train
  loss, validation loss and metrics, learning rate, images/s).
- ``checkpoint.pt``: model, optimizer, epoch and step (plain dicts of tensors, numbers and
  strings: loads with ``torch.load(weights_only=True)``), written atomically at the end of every
  epoch and, optionally, every ``checkpoint_every`` steps (:mod:`rcvcore.runs.checkpoint`);
  ``checkpoint.prev.pt`` is the one before it.
- ``status.json``: ``{"state": "running" | "done" | "failed" | "cancelled", "pid", "error", ...}``.
- ``result.json``: test (and last validation) metrics, the task (classes, training-set class
  means) and the parameter count / forward cost of the full and the pruned model.
- ``domain.json``: what the model was trained on (:class:`rcvcore.domain.TrainingDomain`: classes,
  measure range, feature-space class means and distance threshold), written with the result.
- ``train.log``: the output of a run started by :func:`rcvcore.runs.process.launch`.

Everything here reads the directory as the training process writes it (no torch). The root of
everything the dashboard writes is ``$RCV_RUNS_DIR`` (default ``./runs``): :func:`runs_root`.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .._files import read_json
from ..errors import UserError

CONFIG, METRICS, CHECKPOINT, STATUS, RESULT, LOG = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "status.json", "result.json", "train.log")
#: The checkpoint before the latest one, kept so that a damaged latest one is not a dead end.
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
#: The run's training domain (:mod:`rcvcore.domain`), written at the end of training.
DOMAIN = "domain.json"
GROUP = "group.json"
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

    def progress(self, state: str | None = None) -> str:
        """Where the run stands, in words that agree with ``state`` (default :attr:`state`):
        ``epoch 2/5`` while running (the epoch under way), ``5/5 epochs`` when done,
        ``stopped after 1/5 epochs (step 7)`` when cancelled, interrupted or failed."""
        state = state or self.state
        total = (self.config or {}).get("epochs")
        done = int(self.status.get("epoch") or 0)
        step = self.status.get("global_step")
        at_step = f" (step {step})" if step else ""
        if total is None or state == "launching":
            return "starting" if state in ("launching", "running") else ""
        if state == "done":
            return f"{total}/{total} epochs"
        if state == "running":
            return f"epoch {min(done + 1, max(int(total), 1))}/{total}"
        return f"stopped after {done}/{total} epochs{at_step}"


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
    for name in (CONFIG, STATUS, METRICS, RESULT, CHECKPOINT, PREVIOUS_CHECKPOINT, DOMAIN):
        try:
            (run / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed

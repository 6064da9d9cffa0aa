"""A run's process: ``python -m rcvcore train`` started detached, and cancelled by SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from .config import TrainConfig, config_to_argv
from .directory import ACTIVE, LOG, read_run


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

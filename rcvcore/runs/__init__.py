"""The run concept: a fine-tuning run's configuration, its directory, its process, run groups.

- :mod:`.config`: :class:`TrainConfig` (``config.json``), the protocols, the command-line form;
- :mod:`.directory`: the run-directory format (file names, states), reading and listing runs;
- :mod:`.writer`: :class:`RunWriter`, what the training process writes there;
- :mod:`.checkpoint`: torch checkpoints, written atomically, the one a resume starts from;
- :mod:`.process`: :func:`launch` and :func:`cancel` a run as a subprocess;
- :mod:`.groups`: a folder of runs (cuts x seeds) planned by ``group.json``, its Table 2;
- :mod:`.scheduler`: :class:`Scheduler`, at most ``max_parallel`` runs of a group at a time.

The CLI, the dashboard and :mod:`rcvcore.train` all call these; nothing here imports the
training loop. The names below are imported on first use (PEP 562): reading a run
(``from rcvcore.runs import read_run``) never imports torch.
"""
from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "TrainConfig": ".config", "PROTOCOLS": ".config", "Protocol": ".config",
    "config_to_argv": ".config",
    "RunFailed": ".directory", "RunCancelled": ".directory", "RunResult": ".directory",
    "RunState": ".directory", "read_run": ".directory", "read_metrics": ".directory",
    "find_runs": ".directory", "is_run_dir": ".directory", "runs_root": ".directory",
    "clear_run_dir": ".directory",
    "CONFIG": ".directory", "METRICS": ".directory", "CHECKPOINT": ".directory",
    "PREVIOUS_CHECKPOINT": ".directory", "STATUS": ".directory", "RESULT": ".directory",
    "LOG": ".directory", "ACTIVE": ".directory", "FINISHED": ".directory",
    "RunWriter": ".writer",
    "save_checkpoint": ".checkpoint", "load_checkpoint": ".checkpoint",
    "CHECKPOINT_FORMAT": ".checkpoint",
    "launch": ".process", "cancel": ".process",
    "plan_group": ".groups", "run_dir_of": ".groups", "new_group_dir": ".groups",
    "read_group": ".groups", "group_runs": ".groups", "group_state": ".groups",
    "group_comparison": ".groups", "list_groups": ".groups", "read_comparison": ".groups",
    "Scheduler": ".scheduler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

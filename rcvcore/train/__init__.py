"""Fine-tuning runs of pruned networks, by concept:

- :mod:`.config`: :class:`TrainConfig` (``config.json``) and its command-line form;
- :mod:`.data`: the run's train/val/test split, its :class:`Task`, the image sets;
- :mod:`.model`: the pruned network with its head, the input transform;
- :mod:`.distributed`: DDP helpers under ``torchrun``;
- :mod:`.loop`: :func:`train`, the training loop, and :func:`evaluate`.

The run directory itself (format, reading, launching, cancelling, groups) is
:mod:`rcvcore.runs`; its names are re-exported here for callers of the former single module.

Names are imported on first use (PEP 562), so reading a run (``from rcvcore.train import
TrainConfig``) never imports the training loop.
"""
from __future__ import annotations

import importlib

from ..utils import callable_module

_EXPORTS = {
    "TrainConfig": ".config", "TARGETS": ".config", "OPTIMIZERS": ".config",
    "TRAINABLE": ".config", "config_to_argv": ".config",
    "Task": ".data", "make_task": ".data", "split_dataset": ".data", "ImageSet": ".data",
    "image_set": ".data",
    "build_run_model": ".model", "train_transform": ".model",
    "run_transform": ".model", "PROTOCOLS": ".config", "Protocol": ".config",
    "HEAD_INITS": ".config",
    "train": ".loop", "evaluate": ".loop",
    # the run concept (rcvcore.runs)
    "RunFailed": "rcvcore.runs", "RunCancelled": "rcvcore.runs", "RunResult": "rcvcore.runs",
    "RunState": "rcvcore.runs", "read_run": "rcvcore.runs", "read_metrics": "rcvcore.runs",
    "find_runs": "rcvcore.runs", "is_run_dir": "rcvcore.runs", "launch": "rcvcore.runs",
    "cancel": "rcvcore.runs", "save_checkpoint": "rcvcore.runs",
    "load_checkpoint": "rcvcore.runs", "CHECKPOINT_FORMAT": "rcvcore.runs",
    "CONFIG": "rcvcore.runs", "METRICS": "rcvcore.runs", "CHECKPOINT": "rcvcore.runs",
    "STATUS": "rcvcore.runs", "RESULT": "rcvcore.runs", "LOG": "rcvcore.runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # lazy re-export (PEP 562): importing a submodule by name, not an import cycle
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _train(*args, **kwargs):
    """``rcvcore.train(config, run_dir, ...)``: :func:`rcvcore.train.loop.train`."""
    return importlib.import_module(".loop", __name__).train(*args, **kwargs)


callable_module(__name__, _train)   # rcvcore.train is the package and the entry point

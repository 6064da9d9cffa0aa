"""Fine-tuning runs of pruned networks, by concept:

- :mod:`.data`: the run's train/val/test split, its :class:`Task`, the image sets;
- :mod:`.model`: the pruned network with its head, the input transform;
- :mod:`.distributed`: DDP helpers under ``torchrun``;
- :mod:`.loop`: :func:`train`, the training loop, and :func:`evaluate`.

The run concept (its configuration :class:`~rcvcore.runs.config.TrainConfig`, the directory
format, reading, launching, cancelling, groups) is :mod:`rcvcore.runs`: training imports runs,
never the reverse. ``TrainConfig`` is also named here, as the argument of :func:`train`.

Names are imported on first use (PEP 562), so ``from rcvcore.train import TrainConfig`` never
imports the training loop.
"""
from __future__ import annotations

import importlib

from .._utils import callable_module

_EXPORTS = {
    "TrainConfig": "rcvcore.runs.config",   # what train(config, run_dir) takes
    "Task": ".data", "make_task": ".data", "split_dataset": ".data", "ImageSet": ".data",
    "image_set": ".data",
    "build_run_model": ".model", "train_transform": ".model", "run_transform": ".model",
    "train": ".loop", "evaluate": ".loop",
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

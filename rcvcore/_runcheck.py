"""What a run directory says about itself, checked before it is used (issue 25.3).

``config.json`` and the checkpoint's task are files anyone can edit or swap: a config saying
``image_size: 100000`` once made ``predict`` allocate 23 GB, an empty one loaded silently as the
defaults. :func:`check_config` and :func:`check_task` check types and ranges and name the file,
the key and the valid range in one line (a :class:`UserError`).
"""
from __future__ import annotations

import math
import numbers

from .errors import UserError

#: keys every run's config.json holds (written by every rcvcore that writes runs)
REQUIRED = ("arch", "weights", "cut", "dataset", "target", "epochs", "batch_size")
#: (low, high) of numeric keys; None: that side is open
RANGES = {"image_size": (8, 4096), "epochs": (1, 1_000_000), "batch_size": (1, 65_536),
          "lr": (0.0, 10.0), "weight_decay": (0.0, 10.0), "val_fraction": (0.0, 0.9),
          "test_fraction": (0.0, 0.9), "log_every": (1, None), "checkpoint_every": (0, None),
          "n": (3, None), "workers": (0, 1024), "seed": (0, 2**63 - 1),
          "split_seed": (0, 2**63 - 1)}
INTS = {"image_size", "epochs", "batch_size", "log_every", "checkpoint_every", "n", "workers",
        "seed", "split_seed"}
STRS = {"arch", "weights", "cut", "dataset", "target", "optimizer", "trainable", "device",
        "protocol", "head_init", "dataset_cache_dir", "token_pool"}
TASK_RANGES = {"patch_size": (8, 8192), "image_size": (8, 4096)}


def _bad(source: str, key: str, value, want: str) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return UserError(f"{source}: {key} is {shown}, expected {want}; this run directory was "
                     "edited or is damaged: train it again (or restore the file).")


def _check_number(source: str, key: str, value, lo, hi, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
            integer and not isinstance(value, numbers.Integral)):
        raise _bad(source, key, value, kind)
    if not math.isfinite(value) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise _bad(source, key, value, f"{kind} {span}")


def check_config(d, source: str) -> dict:
    """``d`` (a run's config.json content) when its types and ranges are sound.

    Raises:
        UserError: not an object, a required key missing, or a value of the wrong type or out
            of range (naming ``source``, the key and what is expected).
    """
    if not isinstance(d, dict):
        raise UserError(f"{source}: not a run configuration (a JSON object); train this run "
                        "again.")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise UserError(f"{source}: no {', '.join(missing)}; this is not a complete run "
                        "configuration: train the run again (or restore the file).")
    for key, value in d.items():
        if value is None:
            continue
        if key in RANGES:
            _check_number(source, key, value, *RANGES[key], integer=key in INTS)
        elif key in STRS and not isinstance(value, str):
            raise _bad(source, key, value, "a string")
        elif key == "dataset_options" and not isinstance(value, dict):
            raise _bad(source, key, value, "an object of loader options")
    return d


def check_task(d, source: str) -> dict:
    """The checkpoint's task record when its sizes are sound (see :func:`check_config`)."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: the checkpoint holds no task record; train the run again.")
    for key, (lo, hi) in TASK_RANGES.items():
        if key not in d:
            raise UserError(f"{source}: the checkpoint's task has no {key}; train the run "
                            "again.")
        _check_number(source, f"task {key}", d[key], lo, hi, integer=True)
    return d

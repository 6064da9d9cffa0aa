"""Small helpers near the bottom of the import graph (above :mod:`rcvcore._shared` and
:mod:`rcvcore.errors`, beside :mod:`rcvcore._files`)."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import types
from collections.abc import Callable, Sequence

from ._shared import ProgressFn

__all__ = ["parallel_map", "as_list", "downloads_disabled",
           "NO_DOWNLOAD_ENV", "callable_module"]

#: ``RCV_NO_DOWNLOAD``: forbid every download attempt (tests, air-gapped machines).
NO_DOWNLOAD_ENV = "RCV_NO_DOWNLOAD"


def downloads_disabled() -> bool:
    """Whether ``$RCV_NO_DOWNLOAD`` forbids downloads: any value but empty, ``0``, ``false``,
    ``no`` or ``off`` (so ``1``, ``yes`` and ``true`` all mean "no downloads")."""
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no",
                                                                       "off")


def callable_module(name: str, call: Callable) -> None:
    """Make the module ``name`` callable: ``module(*args)`` is ``call(*args)``.

    The public API's entry points ``rcvcore.train``, ``rcvcore.compare`` and ``rcvcore.predict``
    share their names with their modules; Python sets a package attribute to its submodule on
    import, so a function of the same name in ``rcvcore`` would be overwritten. A callable
    module is both: ``rcvcore.train.TrainConfig`` and ``rcvcore.train(config, run_dir)``.
    """
    module = sys.modules[name]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return call(*args, **kwargs)

    CallableModule.__call__.__doc__ = call.__doc__
    module.__class__ = CallableModule


def as_list(value) -> list:
    """A loader option as a list: ``None`` -> ``[]``; ``"a,b"`` or ``"a;b"`` -> ``["a", "b"]``;
    a list or tuple -> a list (strings stripped); anything else -> ``[value]``. (For the four
    ``_as_list`` copies of the data loaders to share.)"""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v.strip() if isinstance(v, str) else v for v in value]
    return [value]


def parallel_map(fn: Callable, items: Sequence, *, workers: int | None = None,
                 progress: ProgressFn | None = None, message: str = "") -> list:
    """``[fn(*item) for item in items]``, over processes when there is more than one item.

    Results keep the order of ``items``. ``progress(fraction, message)`` is called as items finish.
    """
    n = len(items)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), n))
    out: list = [None] * n
    if workers == 1:
        for i, item in enumerate(items):
            out[i] = fn(*item)
            if progress:
                progress((i + 1) / n, message)
        return out
    # fork: no re-import of the caller's __main__ (scripts without a main guard, notebooks,
    # Streamlit pages); the workers only run numpy / PIL / scikit-image code.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    done = 0
    try:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(fn, *item): i for i, item in enumerate(items)}
            for fut in cf.as_completed(futures):
                out[futures[fut]] = fut.result()
                done += 1
                if progress:
                    progress(done / n, message)
    except cf.process.BrokenProcessPool:
        # a worker died (out of memory, killed): finish the rest in this process
        for i, item in enumerate(items):
            if out[i] is None:
                out[i] = fn(*item)
                done += 1
                if progress:
                    progress(done / n, message)
    return out

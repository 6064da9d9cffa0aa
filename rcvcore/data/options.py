"""Checking loader options, so a typo gets a clear error instead of a ``TypeError``."""
from __future__ import annotations

import inspect

from .base import DatasetError, closest

_COMMON = {"path", "n", "seed", "cache_dir", "progress"}


def reject_unknown(kind: str, loader, unknown: dict) -> None:
    """Raise a :class:`DatasetError` naming the first unknown option and the valid ones.

    Args:
        kind: the dataset kind (for the message).
        loader: the ``load`` function whose keyword-only parameters are the valid options.
        unknown: the options the loader did not recognise (its ``**unknown``).
    """
    if not unknown:
        return
    valid = [p.name for p in inspect.signature(loader).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON]
    name = sorted(unknown)[0]
    raise DatasetError(f"{kind}: unknown option {name!r}.{closest(name, valid)} Valid options: "
                       f"{', '.join(valid)} (on the command line: --opt KEY=VALUE).")

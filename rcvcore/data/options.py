"""Checking loader options, so a typo gets a clear error instead of a ``TypeError``."""
from __future__ import annotations

import inspect

from .._shared import closest
from .base import DatasetError

_COMMON = {"path", "n", "seed", "cache_dir", "progress"}


def loader_keywords(loader) -> dict[str, object]:
    """A loader's own options (keyword-only parameters beyond the common ones) and defaults."""
    return {p.name: p.default for p in inspect.signature(loader).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON}


def reject_unknown(kind: str, loader, unknown: dict) -> None:
    """Raise a :class:`DatasetError` naming the first unknown option and the valid ones.

    Args:
        kind: the dataset kind (for the message).
        loader: the ``load`` function whose keyword-only parameters are the valid options.
        unknown: the options the loader did not recognise (its ``**unknown``).
    """
    if not unknown:
        return
    valid = list(loader_keywords(loader))
    name = sorted(unknown)[0]
    if not valid:
        raise DatasetError(f"{kind}: unknown option {name!r}; {kind} takes no options.")
    raise DatasetError(f"{kind}: unknown option {name!r}.{closest(name, valid)} Valid options: "
                       f"{', '.join(valid)} (on the command line: --opt KEY=VALUE).")


def parse_value(text: str):
    """``true``/``false``/``none``, an int, a float, or the string itself."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str] | None) -> dict:
    """Turn ``["classes=n02058221,n01608432", "single_object=true"]`` into loader options.

    Raises:
        DatasetError: an item is not ``KEY=VALUE``.
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"--opt expects KEY=VALUE (e.g. --opt classes=n02058221), "
                               f"got {item!r}.")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def format_options(options: dict) -> list[str]:
    """The ``--opt KEY=VALUE`` arguments that :func:`parse_options` turns back into
    ``options`` (lists and tuples are written comma-separated)."""
    out = []
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif value is None:
            value = "none"
        out += ["--opt", f"{key}={value}"]
    return out


def check_options(options) -> dict:
    """``options`` as a dict of str keys, or a :class:`DatasetError` saying what is expected."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise DatasetError(f"dataset options must be a mapping of names to values (--opt "
                           f"KEY=VALUE), got {options!r}.")
    return dict(options)

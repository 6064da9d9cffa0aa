"""Small file helpers shared by every module (no rcvcore imports: the bottom of the graph).

``atomic_write`` is the one way rcvcore writes a file that a reader may look at while it is
being written (status files polled by the dashboard, caches, manifests, checkpoints): the bytes
go to a temporary file in the same folder, then ``os.replace`` swaps it in, so a reader (or a
kill) never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_path", "temp_name", "write_json", "read_json", "json_safe"]


def temp_name(path) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``: per
    process, so two processes finishing the same file never share one."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else bytes(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_path(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary path, then move it to ``path``
    (for writers that want a path, e.g. ``torch.save`` or ``PIL.Image.save``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keeps the extension
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def json_safe(obj):
    """``obj`` with NaN/inf floats as None and numpy scalars as Python numbers (JSON has no
    NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    item = getattr(obj, "item", None)   # numpy scalars, without importing numpy here
    if item is not None and getattr(obj, "shape", None) == ():
        return json_safe(item())
    return obj


def write_json(path, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (see :func:`json_safe`) to ``path`` atomically."""
    return atomic_write(path, json.dumps(json_safe(obj), indent=indent) + "\n")


def read_json(path):
    """The JSON content of ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

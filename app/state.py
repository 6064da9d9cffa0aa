"""Where the dashboard keeps things, and the small bits of session state shared by pages.

Everything the app writes lives under one root (``$RCV_RUNS_DIR``, default ``./runs``):

- ``<root>/<run-id>/``      fine-tuning runs (written by the training subprocess, polled here)
- ``<root>/_scans/``        finished scan results as JSON, so they survive a reload
- ``<root>/_uploads/``      uploaded checkpoints, stored under their SHA-256, never a user's name

Session state holds only what a single browser tab is looking at (which scans are overlaid, the
chosen cut); anything that must outlive a reload is on disk. What the server itself keeps (the
scan worker and its jobs, the run scheduler) is held by :func:`server_object`, never in
Streamlit's caches, which any client can clear.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import streamlit as st

from rcvcore._files import atomic_write

CUT_KEY = "rcv_cut"            # {"arch", "weights", "layer", "dataset", "scan_id"}
T = TypeVar("T")
_SERVER: dict[str, object] = {}
_SERVER_LOCK = threading.Lock()


def server_object(key: str, factory: Callable[[], T]) -> T:
    """The one object ``key`` of this server process, made by ``factory`` on first use.

    Unlike ``st.cache_resource``, a client's ``clear_cache`` message cannot drop it (which
    once reset the scan queue, lost running scans and another user's progress: issue 25).
    """
    with _SERVER_LOCK:
        if key not in _SERVER:
            _SERVER[key] = factory()
        return _SERVER[key]  # type: ignore[return-value]


def runs_root(create: bool = True) -> Path:
    """Root folder of everything the app writes (``$RCV_RUNS_DIR`` or ``./runs``)."""
    from rcvcore.runs import runs_root as _rcv_runs_root

    return _rcv_runs_root(create=create)


def scans_dir() -> Path:
    d = runs_root() / "_scans"
    d.mkdir(parents=True, exist_ok=True)
    return d


def uploads_dir() -> Path:
    d = runs_root() / "_uploads"
    d.mkdir(parents=True, exist_ok=True)
    return d


def store_upload(data: bytes, suffix: str) -> Path:
    """Write uploaded bytes under their content hash (the user's file name is never used).

    ``suffix`` is reduced to a safe extension (``.pt``, ``.png``...) so readers that look at it
    still work.
    """
    ext = suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix.lower() or "") else ".bin"
    path = uploads_dir() / (hashlib.sha256(data).hexdigest()[:32] + ext)
    if not path.exists():
        atomic_write(path, data)
    return path


def save_scan(scan_id: str, record: dict) -> Path:
    return atomic_write(scans_dir() / f"{scan_id}.json", json.dumps(record))


def load_scans() -> dict[str, dict]:
    """Saved scans as stored, newest first: ``{scan_id: {"label", "config", "result",
    "created"[, "chosen_cut"]}}`` (:func:`app.services.load_scans` reads them as results)."""
    out = []
    for p in scans_dir().glob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file is not a scan
        if isinstance(rec, dict) and "result" in rec:
            out.append((p.stem, rec))
    out.sort(key=lambda kv: kv[1].get("created", 0), reverse=True)
    return dict(out)


def delete_scan(scan_id: str) -> None:
    (scans_dir() / f"{scan_id}.json").unlink(missing_ok=True)


def save_chosen_cut(scan_id: str, layer: str | None, source: str,
                    cuts: Mapping[str, dict | None] | None = None) -> None:
    """Keep the cut chosen on the Scan page with its scan (``chosen_cut`` in the scan's JSON).

    ``source`` is ``clicked`` (chosen by the user), ``suggested`` (rcvcore's suggestion, kept)
    or ``none`` (no suggestion and nothing chosen). The newest choice over all scans is what
    the Train page offers in any tab (:func:`last_chosen_scan`); the file is rewritten only
    when the choice changes or another scan held the newest one. ``cuts``: each saved scan's
    ``chosen_cut`` as last read (default: read now).
    """
    cuts = chosen_cuts() if cuts is None else cuts
    if scan_id not in cuts:
        return
    chosen = cuts[scan_id] or {}
    if (chosen.get("layer"), chosen.get("source")) == (layer, source) \
            and last_chosen_scan(cuts) == scan_id:
        return
    rec = load_scans().get(scan_id)   # the record as stored: its result is written back as it is
    if rec is None:
        return
    rec["chosen_cut"] = {"layer": layer, "source": source, "at": time.time()}
    save_scan(scan_id, rec)


def chosen_cuts() -> dict[str, dict | None]:
    """Each saved scan's ``chosen_cut`` (None: never chosen)."""
    return {sid: rec.get("chosen_cut") for sid, rec in load_scans().items()}


def last_chosen_scan(cuts: Mapping[str, dict | None] | None = None) -> str | None:
    """The id of the saved scan whose cut was chosen last, or None (``cuts``: as in
    :func:`save_chosen_cut`)."""
    cuts = chosen_cuts() if cuts is None else cuts
    dated = [(float((c or {}).get("at") or 0), sid) for sid, c in cuts.items() if c]
    return max(dated)[1] if dated else None


def get_cut() -> dict | None:
    return st.session_state.get(CUT_KEY)


def set_cut(cut: dict | None) -> None:
    st.session_state[CUT_KEY] = cut

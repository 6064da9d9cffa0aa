"""Uploads: what one user may send, where it is kept, and when it is deleted.

- **Budget** (served mode): each signed-in user may upload ``RCV_USER_UPLOADS_MB`` per rolling
  hour, counted where the bytes arrive, at Streamlit's upload endpoint (:class:`UploadBudget`,
  an ASGI middleware behind the HTTP gate); a request with no sign-in gets no budget at all.
  The ledger is process memory, not a Streamlit cache: a client's ``clear_cache`` cannot reset it.
- **Storage**: a checkpoint is stored once under its SHA-256 (:func:`keep`); the whole upload
  folder is capped by ``RCV_UPLOADS_MB``.
- **Deletion** in every mode: a checkpoint whose scan failed at once (:func:`discard`), the
  others once unused for ``RCV_UPLOAD_TTL_HOURS`` (:func:`sweep`), never while a scan or run
  uses them (the caller says which are in use).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from app import auth, guard, state

UPLOAD_TTL_ENV = "RCV_UPLOAD_TTL_HOURS"
UPLOAD_ROUTE = "/_stcore/upload_file/"
WINDOW_S = 3600.0


# --------------------------------------------------------------------------------------------
# the per-user budget


class Ledger:
    """Bytes each user uploaded in the last :data:`WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._by_user: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def used(self, user: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._by_user.setdefault(user, deque())
            while q and now - q[0][0] >= WINDOW_S:
                q.popleft()
            return sum(n for _, n in q)

    def charge(self, user: str, n_bytes: int, budget: int, now: float | None = None) -> bool:
        """Count ``n_bytes`` for ``user`` and return True, or False (nothing counted) when it
        would go over ``budget``."""
        now = time.monotonic() if now is None else now
        if self.used(user, now) + n_bytes > budget:
            return False
        with self._lock:
            self._by_user.setdefault(user, deque()).append((now, n_bytes))
        return True


LEDGER = Ledger()


class UploadBudget:
    """ASGI middleware: uploads to Streamlit's upload endpoint count against the sender's
    budget (served mode); over it, or without a sign-in, the upload is refused before a byte of
    it is read (413 / 401; 411 without a Content-Length)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        lim = guard.limits() if scope["type"] == "http" else None
        path = auth._local(scope.get("path") or "/", auth._base()) if lim else ""
        if lim is None or scope.get("method") not in ("PUT", "POST") or not path.startswith(
                UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        user = auth.user_from_cookies(auth._cookies(scope))
        length = auth._header(scope, b"content-length")
        if user is None:
            status, why = 401, "sign in first"
        elif not length.isdigit():
            status, why = 411, "a Content-Length is required"
        elif not LEDGER.charge(user, int(length), lim.user_uploads_mb * 2**20):
            status, why = 413, (f"upload budget used: at most {lim.user_uploads_mb} MB per user "
                                "and hour on this server")
        else:
            await self.app(scope, receive, send)
            return
        await auth.HttpGate._send(send, status, f"{status}: {why}.\n".encode(), "text/plain")


# --------------------------------------------------------------------------------------------
# storage and deletion


def _ttl_s() -> float:
    try:
        return float(os.environ.get(UPLOAD_TTL_ENV, "24")) * 3600
    except ValueError:
        return 24 * 3600.0


def stored(path) -> Path | None:
    """The stored upload ``path`` names (resolved), or None when it is not one."""
    if not isinstance(path, str) or path in guard.NAMED_WEIGHTS:
        return None
    real = Path(os.path.realpath(Path(path).expanduser()))
    return real if real.parent == Path(os.path.realpath(state.uploads_dir())) else None


def sweep(used: Iterable[Path], now: float | None = None) -> list[Path]:
    """Delete stored uploads unused for ``RCV_UPLOAD_TTL_HOURS`` (default 24) and not in
    ``used``, and half-written ``.part`` files older than an hour. Returns what was deleted."""
    now = time.time() if now is None else now
    ttl = _ttl_s()
    gone: list[Path] = []
    used = set(used)
    for p in (p for p in state.uploads_dir().iterdir() if p.is_file()):
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        stale = age > (3600 if p.name.endswith(".part") else ttl)
        if stale and Path(os.path.realpath(p)) not in used:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


_LAST_SWEEP = [0.0]


def sweep_due(every_s: float = 600.0) -> bool:
    """True at most once every ``every_s`` per server process (then the caller sweeps)."""
    if time.monotonic() - _LAST_SWEEP[0] < every_s:
        return False
    _LAST_SWEEP[0] = time.monotonic()
    return True


def discard(weights, users: int) -> bool:
    """Delete the stored upload ``weights`` (a rejected checkpoint) unless more than one job
    (``users``, the failing one included) still reads it. Returns True when deleted."""
    p = stored(weights)
    if p is None or not p.exists() or users > 1:
        return False
    p.unlink(missing_ok=True)
    return True


def total_bytes() -> int:
    return sum(p.stat().st_size for p in state.uploads_dir().iterdir() if p.is_file())


def keep(uploaded, kept: dict) -> str:
    """Store an uploaded checkpoint once (under its hash) and return its path; store it again if
    it was deleted meanwhile.

    Args:
        uploaded: the ``st.file_uploader`` value.
        kept: ``{file_id: path}`` kept in the session.

    Raises:
        guard.Refused: served mode and the upload folder is full.
    """
    path = kept.get(uploaded.file_id)
    if path and Path(path).is_file():
        Path(path).touch()  # in use: not swept
        return path
    lim = guard.limits()
    if lim is not None and total_bytes() + uploaded.size > lim.uploads_mb * 2**20:
        raise guard.Refused(f"The upload folder of this server is full (at most "
                            f"{lim.uploads_mb} MB): try again later, or scan with the imagenet "
                            "or random weights.")
    path = str(state.store_upload(uploaded.getvalue(), Path(uploaded.name).suffix))
    kept[uploaded.file_id] = path
    return path

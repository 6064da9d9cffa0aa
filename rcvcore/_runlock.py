"""One writer per run directory, and no temporary files of killed writes left behind.

:func:`claim_run_dir` takes an exclusive ``flock`` on ``<run>/.rcv.lock`` for the training
process (rank 0) before it clears, reads or writes anything there. A second process given the
same run directory is refused at once with one line naming the directory and the holder (two
identical runs launched into one directory used to write every metrics record twice). The lock
is the kernel's: a killed holder releases it, so a stale lock file never blocks a resume.

Holding the lock, the claimant also removes every temporary file an interrupted write left in
the directory, whatever its age (``.checkpoint.PID.tmp.pt`` of a kill during ``torch.save``):
nobody else can be writing them.

Within one process a run directory may be claimed again (a resume after a cancel in the same
Python session); the lock is released when the last claim is released or dropped.
"""
from __future__ import annotations

import errno
import os
import threading
import weakref
from pathlib import Path

from .data.base import clean_temp_files
from .errors import UserError

LOCK_NAME = ".rcv.lock"
_HELD: dict[str, list[int]] = {}   # resolved run dir -> [fd, claims]
_GUARD = threading.Lock()


class RunLock:
    """A claim on a run directory; :meth:`release` (or dropping it) gives it back."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._finalizer = weakref.finalize(self, _release, key)

    def release(self) -> None:
        self._finalizer()


def _release(key: str) -> None:
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            os.close(held[0])  # closing the descriptor releases the flock


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def claim_run_dir(run_dir) -> RunLock:
    """Lock ``run_dir`` (created if missing) for this process and clean its temporary files.

    Raises:
        UserError: another process holds the directory, or it cannot be created or locked
            (the message names the folder and what to do).
    """
    import fcntl

    run = Path(run_dir)
    key = os.path.realpath(run)
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return RunLock(key)
        try:
            run.mkdir(parents=True, exist_ok=True)
            fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{run}: cannot write in this run directory ({e.strerror}); "
                            "choose a --run-dir you can write to, or free space.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{run} is being written by {_holder(run / LOCK_NAME)}: two "
                                "processes never write one run directory. Wait for it to end "
                                "(or cancel it), or choose another --run-dir.") from None
            raise UserError(f"{run}: cannot lock this run directory ({e.strerror}).") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = [fd, 1]
    never = -float("inf")  # nobody else writes here now: every temp file is an orphan
    clean_temp_files(run, min_age_s=never, max_age_s=never)
    return RunLock(key)

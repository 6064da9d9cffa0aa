"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the parameter or file and the next step."""


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached nor downloadable."""


class Notice(UserWarning):
    """Something the user should know, that did not stop the job (a damaged cache healed, a
    table read in another encoding, duplicate rows merged). The CLI prints it as one line,
    ``warning: <message>``."""


class SkippedFile(Notice):
    """A file of a dataset was left out (unreadable, outside the folder, hidden by the crop);
    the message is ``skipped PATH: reason``."""


class DiskError(UserError):
    """A write that the disk refused (full, read-only, no permission): one line naming the
    folder and what to free or change."""


#: errno values of a write the disk refused, and what to do about each
_DISK_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded",
                30: "the file system is read-only", 13: "permission denied",
                1: "operation not permitted", 27: "file too large",
                5: "input/output error"}
_DISK_WORDS = ("disk is full", "no space left", "readonly database", "read-only file system",
               "file write failed", "quota exceeded")


def disk_error(e: BaseException, folder, hint: str = "") -> DiskError | None:
    """The one-line :class:`DiskError` for ``e`` when it is a refused write (an ``OSError``
    with a disk errno, SQLite's "database or disk is full", torch's "file write failed"), else
    None. ``folder`` is where the write went (named in the message); ``hint`` a way to write
    elsewhere (e.g. "or set RCV_CACHE_DIR to another folder")."""
    import os

    errno = getattr(e, "errno", None)
    if isinstance(e, OSError) and errno in _DISK_ERRNOS:
        why = _DISK_ERRNOS[errno]
        where = os.path.dirname(e.filename) if isinstance(e.filename, str) and \
            e.filename else folder
    elif any(w in str(e).lower() for w in _DISK_WORDS):
        why, where = "the disk refused the write (full or read-only)", folder
    else:
        return None
    todo = ("free space there" if errno in (28, 122, 27, None) else
            "make it writable" if errno in (30, 13, 1) else "check it")
    tail = f" ({hint})" if hint else ""
    return DiskError(f"cannot write in {where or folder}: {why}; {todo}{tail}.")

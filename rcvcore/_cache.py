"""The disk cache: a generic store of arrays and JSON under string keys, and the cache root.

:class:`Store` is a diskcache-backed store with an explicit size limit; it knows nothing of what
it holds. Each user owns its key prefix and its value format: pooled activations are
:class:`ActivationCache` entries (``act:``, keyed by content fingerprints; the record is
:class:`Extraction`, which :mod:`rcvcore._extract` returns), scan results are the
scan's JSON under its own prefix (:data:`rcvcore.scan.RESULT_PREFIX`).

One activation entry per (architecture, weights fingerprint, layer, pooling, preprocessing,
dataset fingerprint). The dataset fingerprint covers every image path with its size and mtime and
every label, so a changed image, measure or checkpoint never returns stale activations. An entry
that cannot be read or has the wrong shape is treated as a miss and recomputed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import diskcache
import numpy as np

from ._shared import Extraction
from .errors import Notice, UserError, disk_error

#: Explicit size limit (diskcache's default evicts silently at 1 GiB). ``RCV_CACHE_SIZE_GB``.
DEFAULT_SIZE_GB = 8.0


def open_diskcache(directory, **settings):
    """``diskcache.Cache(directory, **settings)``, healing a corrupt database.

    A ``cache.db`` that SQLite cannot read (not a database, a malformed image: a disk that filled
    up, a copy cut short) is moved aside to ``<directory>/corrupt-<time>/`` with a warning and a
    new, empty cache is opened: cached values are lost, nothing else. A database that is only
    busy (locked by another process) is left alone.

    Processes may open one directory at once (concurrent scans): opening takes a shared lock on
    ``<directory>/open.lock`` and healing an exclusive one, so one process moves the database
    aside and creates the new one while no other is half-way through opening either, and the
    others then find the healed database (without the lock, a process could open the new
    database just as another moved it aside: "disk I/O error", "readonly database").
    """
    import sqlite3
    import time
    import warnings

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "cache.db"
    with _open_lock(directory, exclusive=False):
        problem = _db_problem(db)
        if problem is None:
            try:
                return diskcache.Cache(str(directory), **settings)
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as e:
                problem = str(e)
    with _open_lock(directory, exclusive=True):
        # check again under the lock: another process may have healed it meanwhile, and its
        # fresh database must not be moved aside
        if _db_problem(db) is not None or (db.is_file() and not _db_healthy(db)):
            aside = directory / f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            aside.mkdir(parents=True, exist_ok=True)
            for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
                try:
                    os.replace(directory / name, aside / name)
                except FileNotFoundError:
                    pass
            warnings.warn(f"The cache database {db} was corrupt ({problem}); moved it to "
                          f"{aside} and started an empty cache (cached activations and results "
                          f"are recomputed). Delete {aside} when you no longer need it.", Notice,
                          stacklevel=3)
        return diskcache.Cache(str(directory), **settings)


@contextlib.contextmanager
def _open_lock(directory: Path, exclusive: bool):
    """An advisory lock on ``directory/open.lock`` (shared or exclusive) while opening; none
    where the platform has no ``fcntl`` (Windows)."""
    try:
        import fcntl  # POSIX only
    except ImportError:
        yield
        return
    with open(directory / "open.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _db_problem(db: Path) -> str | None:
    """Why SQLite cannot use ``db`` (its integrity quick-check or error), or None when it can
    (or when it is only locked, missing or empty: nothing to heal)."""
    import sqlite3

    try:
        if not db.is_file() or db.stat().st_size == 0:
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None         # locked or busy: not corruption; diskcache waits for it
    except sqlite3.DatabaseError as e:
        return str(e)
    except OSError:
        return None
    return None if row and row[0] == "ok" else str(row[0] if row else "no answer")


def _db_healthy(db: Path) -> bool:
    """Whether ``db`` opens read-write and answers (what diskcache itself needs)."""
    import sqlite3

    try:
        con = sqlite3.connect(str(db), timeout=30)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return True         # busy: leave it to diskcache
    except sqlite3.DatabaseError:
        return False
    return True


class Store:
    """A diskcache store of arrays, dicts of arrays and JSON values under string keys.

    A value that cannot be read back (damaged file, unpicklable) reads as missing and is
    dropped, so its owner recomputes it.
    """

    def __init__(self, directory, size_limit_gb: float | None = None):
        gb = size_limit_gb if size_limit_gb is not None else float(
            os.environ.get("RCV_CACHE_SIZE_GB", DEFAULT_SIZE_GB))
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = open_diskcache(self.directory, size_limit=int(gb * 2**30),
                                     eviction_policy="least-recently-used")

    def get(self, key: str):
        """The value under ``key``, or None (missing or unreadable: then it is dropped)."""
        try:
            return self._cache.get(key)
        except Exception:  # an unreadable pickle / file is a miss, and must not stay
            self.delete(key)
            return None

    def put(self, key: str, value) -> None:
        """Store ``value`` (an array, a dict of arrays and plain values, or JSON data).

        A disk that refuses the write (full, read-only) does not fail the caller: the value is
        not cached and one :class:`Notice` per store says where to free space.
        """
        try:
            self._cache.set(key, value)
        except Exception as e:
            err = disk_error(e, self.directory, "or set RCV_CACHE_DIR to another folder")
            if err is None:
                raise
            if not getattr(self, "_warned", False):
                import warnings

                self._warned = True
                warnings.warn(Notice(f"not cached: {err}"), stacklevel=2)

    def get_json(self, key: str):
        """A JSON value stored with :meth:`put_json`, or None."""
        text = self.get(key)
        if text is None:
            return None
        try:
            return json.loads(text) if isinstance(text, str) else text
        except ValueError:
            self.delete(key)
            return None

    def put_json(self, key: str, value) -> None:
        self.put(key, json.dumps(value))

    def delete(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except Exception:  # a damaged entry that cannot even be deleted: diskcache culls it
            pass

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

    def count(self, prefix: str = "") -> int:
        return len(self.keys(prefix))

    def clear(self, prefix: str = "") -> int:
        """Delete every entry whose key starts with ``prefix``; returns how many."""
        keys = self.keys(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    def volume(self) -> int:
        """Bytes used on disk."""
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class ActivationKey:
    arch: str
    weights: str          # WeightsInfo.fingerprint
    layer: str
    pooling: str          # "gap" | "gap-nhwc" | "tokens-mean" | "tokens-cls" (models.pooling)
    preprocessing: str    # Preprocess.fingerprint
    images: str           # dataset fingerprint (paths, sizes, mtimes, labels)

    def digest(self) -> str:
        payload = json.dumps(self.__dict__, sort_keys=True).encode()
        return ACTIVATION_PREFIX + hashlib.sha256(payload).hexdigest()


ACTIVATION_PREFIX = "act:"


class ActivationCache:
    """Pooled activations kept in a :class:`Store` (``store``, which other users share under
    their own key prefixes); ``hits`` and ``misses`` count layer lookups.

    On disk, one entry per :class:`ActivationKey` (one layer):
    ``{"features": (n_ok, C) float32, "ok": [int], "failed": [[int, str]]}``.
    """

    def __init__(self, directory, size_limit_gb: float | None = None):
        self.store = Store(directory, size_limit_gb)
        self.directory = self.store.directory
        self.hits = 0
        self.misses = 0

    def get(self, key: ActivationKey, n_images: int) -> Extraction | None:
        """The cached activations of layer ``key.layer`` (an :class:`Extraction` with that one
        layer) for a dataset of ``n_images``, or None: missing, unreadable or inconsistent
        entries are misses (and dropped)."""
        value = self.store.get(key.digest())
        entry = self._validate(value, n_images, key.layer)
        if entry is None:
            if value is not None:
                self.store.delete(key.digest())
            self.misses += 1
            return None
        self.hits += 1
        return entry

    @staticmethod
    def _validate(value, n_images: int, layer: str) -> Extraction | None:
        try:
            feats = np.asarray(value["features"], dtype=np.float32)
            ok = np.asarray(value["ok"], dtype=int)
            failed = tuple((int(i), str(r)) for i, r in value["failed"])
        except Exception:  # any malformed entry is a miss
            return None
        if feats.ndim != 2 or ok.ndim != 1 or feats.shape[0] != len(ok) or \
                len(ok) + len(failed) != n_images:
            return None
        if not np.all(np.isfinite(feats)):
            return None
        return Extraction({layer: feats}, ok, failed)

    def put(self, key: ActivationKey, extraction: Extraction) -> None:
        """Store layer ``key.layer`` of ``extraction`` with its ok / failed record."""
        self.store.put(key.digest(), {
            "features": np.ascontiguousarray(extraction.features[key.layer], dtype=np.float32),
            "ok": np.asarray(extraction.ok, dtype=int).tolist(),
            "failed": [[int(i), str(r)] for i, r in extraction.failed]})

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: What lives under the cache root (``--cache-dir`` / ``$RCV_CACHE_DIR``).
SECTIONS = {
    "activations": "pooled activations and saved scan results (diskcache)",
    "demo-scale": "generated demo-scale crops",
    "demo-histology": "generated demo-histology 40x tiles and masks",
    "demo-he": "the demo-he source image, its tiles and automatic nuclei masks",
    "histology-patches": "patches of janowczyk / demo-histology / demo-he sources",
    "image-checks": "verdicts of the image checks of imagenet / voc / breakhis folders",
    "datasets": "embedded datasets written by scans of rcvcore 0.1.0 before 2026-11-26",
}
#: The section that is a :class:`Store`.
STORE_SECTION = "activations"


def _du(path: Path) -> tuple[int, int]:
    files, size = 0, 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                size += os.stat(os.path.join(dirpath, n)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def cache_usage(root) -> list[dict]:
    """Size of each section of the cache root: ``[{"section", "path", "files", "bytes",
    "what"}]``; the store's row adds ``entries`` and ``prefixes`` (entries per key prefix, the
    part of the key up to and including its first ``:``)."""
    root = Path(root)
    out = []
    for name, what in SECTIONS.items():
        path = root / name
        files, size = _du(path) if path.is_dir() else (0, 0)
        row = {"section": name, "path": str(path), "files": files, "bytes": size, "what": what}
        if name == STORE_SECTION and path.is_dir():
            with Store(path) as store:
                keys = store.keys()
            prefixes: dict[str, int] = {}
            for k in keys:
                p = k.split(":", 1)[0] + ":" if ":" in k else ""
                prefixes[p] = prefixes.get(p, 0) + 1
            row["entries"] = len(keys)
            row["prefixes"] = prefixes
        out.append(row)
    return out


def clear_cache(root, what: str) -> list[str]:
    """Delete a section of the cache root (a name of :data:`SECTIONS`) or ``all``. Returns
    what was removed."""
    root = Path(root)
    names = list(SECTIONS) if what == "all" else [what]
    for n in names:
        if n not in SECTIONS:
            raise UserError(f"--clear {what!r}: choose results, {', '.join(SECTIONS)} or all.")
    removed = []
    for n in names:
        if (root / n).exists():
            shutil.rmtree(root / n)
            removed.append(str(root / n))
    return removed

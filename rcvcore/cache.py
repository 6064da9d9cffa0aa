"""Disk cache of pooled activations, keyed by content fingerprints.

One entry per (architecture, weights fingerprint, layer, pooling, preprocessing, dataset
fingerprint). The dataset fingerprint covers every image path with its size and mtime and every
label, so a changed image, measure or checkpoint never returns stale activations. An entry that
cannot be read or has the wrong shape is treated as a miss and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Explicit size limit (diskcache's default evicts silently at 1 GiB). ``RCV_CACHE_SIZE_GB``.
DEFAULT_SIZE_GB = 8.0


@dataclass(frozen=True)
class ActivationKey:
    arch: str
    weights: str          # WeightsInfo.fingerprint
    layer: str
    pooling: str          # "gap"
    preprocessing: str    # Preprocess.fingerprint
    images: str           # dataset fingerprint (paths, sizes, mtimes, labels)

    def digest(self) -> str:
        payload = json.dumps(self.__dict__, sort_keys=True).encode()
        return "act:" + hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class CachedActivations:
    features: np.ndarray                   # (n_ok, n_channels) float32
    ok: np.ndarray                         # indices of readable images
    failed: tuple[tuple[int, str], ...]    # (index, reason)


class ActivationCache:
    """diskcache-backed store; ``hits`` and ``misses`` count layer lookups."""

    def __init__(self, directory, size_limit_gb: float | None = None):
        import diskcache

        gb = size_limit_gb if size_limit_gb is not None else float(
            os.environ.get("RCV_CACHE_SIZE_GB", DEFAULT_SIZE_GB))
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), size_limit=int(gb * 2**30),
                                      eviction_policy="least-recently-used")
        self.hits = 0
        self.misses = 0

    def get(self, key: ActivationKey, n_images: int) -> CachedActivations | None:
        try:
            value = self._cache.get(key.digest())
        except Exception:  # unreadable pickle / file: recompute
            value = None
        entry = self._validate(value, n_images)
        if entry is None:
            if value is not None:
                self._cache.delete(key.digest())
            self.misses += 1
            return None
        self.hits += 1
        return entry

    @staticmethod
    def _validate(value, n_images: int) -> CachedActivations | None:
        try:
            feats = np.asarray(value["features"], dtype=np.float32)
            ok = np.asarray(value["ok"], dtype=int)
            failed = tuple((int(i), str(r)) for i, r in value["failed"])
        except Exception:
            return None
        if feats.ndim != 2 or feats.shape[0] != len(ok) or len(ok) + len(failed) != n_images:
            return None
        if not np.all(np.isfinite(feats)):
            return None
        return CachedActivations(feats, ok, failed)

    def put(self, key: ActivationKey, entry: CachedActivations) -> None:
        self._cache.set(key.digest(), {"features": np.ascontiguousarray(entry.features,
                                                                          dtype=np.float32),
                                       "ok": entry.ok.tolist(),
                                       "failed": [list(f) for f in entry.failed]})

    def get_result(self, key: str):
        """A whole scan result saved under ``key`` (see :func:`rcvcore.scan.result_key`), or
        None; an entry that does not load is dropped and recomputed."""
        from .scan import ScanResult

        try:
            value = self._cache.get(key)
            return None if value is None else ScanResult.from_json(value)
        except Exception:
            self._cache.delete(key)
            return None

    def put_result(self, key: str, result) -> None:
        self._cache.set(key, result.to_json())

    def clear_results(self) -> int:
        """Forget every saved scan result (activations stay); returns how many were dropped."""
        keys = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith("scan:")]
        for k in keys:
            self._cache.delete(k)
        return len(keys)

    def close(self) -> None:
        self._cache.close()

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
    "datasets": "embedded datasets written by scans of rcvcore 0.1.0 before 2026-11-26",
}


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
    "what"}]`` (plus the number of saved scan results for ``activations``)."""
    root = Path(root)
    out = []
    for name, what in SECTIONS.items():
        path = root / name
        files, size = _du(path) if path.is_dir() else (0, 0)
        row = {"section": name, "path": str(path), "files": files, "bytes": size, "what": what}
        if name == "activations" and path.is_dir():
            import diskcache

            with diskcache.Cache(str(path)) as c:
                keys = [k for k in c.iterkeys() if isinstance(k, str)]
            row["entries"] = len(keys)
            row["scan_results"] = sum(k.startswith("scan:") for k in keys)
        out.append(row)
    return out


def clear_cache(root, what: str) -> list[str]:
    """Delete a part of the cache root: ``results`` (saved scan results only), a section name
    of :data:`SECTIONS`, or ``all``. Returns what was removed."""
    import shutil

    root = Path(root)
    if what == "results":
        path = root / "activations"
        if not path.is_dir():
            return []
        with ActivationCache(path) as store:
            n = store.clear_results()
        return [f"{n} saved scan results"]
    names = list(SECTIONS) if what == "all" else [what]
    for n in names:
        if n not in SECTIONS:
            from .errors import UserError

            raise UserError(f"--clear {what!r}: choose results, {', '.join(SECTIONS)} or all.")
    removed = []
    for n in names:
        if (root / n).exists():
            shutil.rmtree(root / n)
            removed.append(str(root / n))
    return removed

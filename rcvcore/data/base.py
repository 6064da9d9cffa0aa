"""The dataset interface shared by every loader.

Every dataset resolves to image files on disk plus one row of labels per file. Generated datasets
(demo crops, histology patches) are written once into a cache folder and then read like any other
folder, so extraction, caching (fingerprints of path, size and mtime) and training see one code
path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..errors import UserError


class DatasetError(UserError):
    """A dataset cannot be used as given (missing path, wrong layout, unknown kind)."""


@dataclass(frozen=True)
class Sample:
    """One image and its labels."""

    path: str                    # absolute path of an image file
    measure: float               # the continuous scale measure (zoom, box fraction, nuclei area px)
    label: str | None = None     # class: WordNet id, magnification ("10x"), tumour type ...
    group: str | None = None     # items sharing a group never straddle train and test
    split: str | None = None     # "train" | "val" | "test" when the dataset fixes its splits


@dataclass(frozen=True)
class Skipped:
    """An input that was left out, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A resolved dataset: samples with labels, and the inputs that were skipped.

    Attributes:
        name: the spec the user gave (``demo-scale``, ``folder:/data/x``); appears in JSON output.
        kind: the loader kind (``demo-scale``, ``folder``, ``janowczyk`` ...).
        measure_name: what ``Sample.measure`` is (``log_zoom``, ``box_area_fraction``,
            ``nuclei_area_px``).
        label_name: what ``Sample.label`` is (``class``, ``magnification``, ``wnid``), or None.
        samples: the usable items, in a deterministic order.
        skipped: inputs left out (unreadable image, unparsable annotation, no nuclei ...).
        label_order: the classes in their natural order (``5x`` < ``8x`` ...), when there are any.
        pooled_by_default: the classes are a proxy of the measure (magnifications in
            histology): a scan fitted within one class would remove the very signal it
            measures, so it pools the classes unless asked to fit per class.
    """

    name: str
    kind: str
    measure_name: str
    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...] = ()
    label_name: str | None = None
    label_order: tuple[str, ...] = ()
    info: dict = field(default_factory=dict, compare=False, hash=False)
    pooled_by_default: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def measures(self) -> np.ndarray:
        """(n_samples,) float64 array of the scale measure."""
        return np.asarray([s.measure for s in self.samples], dtype=np.float64)

    @property
    def labels(self) -> np.ndarray | None:
        if all(s.label is None for s in self.samples):
            return None
        return np.asarray([s.label if s.label is not None else "" for s in self.samples])

    @property
    def groups(self) -> np.ndarray | None:
        if all(s.group is None for s in self.samples):
            return None
        return np.asarray([s.group if s.group is not None else s.path for s in self.samples])

    @property
    def classes(self) -> list[str]:
        """Distinct labels, in ``label_order`` when given, else in natural order (numbers by
        value: ``5x, 10x, 40x``, not ``10x, 40x, 5x``; quadratic kappa depends on it)."""
        present = {s.label for s in self.samples if s.label is not None}
        ordered = [c for c in self.label_order if c in present]
        return ordered + sorted(present - set(ordered), key=natural_key)

    def subset(self, indices) -> Dataset:
        """A new Dataset holding only ``samples[i]`` for ``i`` in ``indices``."""
        return dataclasses.replace(self, samples=tuple(self.samples[i] for i in indices))

    def split_indices(self, split: str) -> np.ndarray:
        return np.asarray([i for i, s in enumerate(self.samples) if s.split == split], dtype=int)


def limit(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """Keep at most ``n`` samples, drawn at random with ``seed`` but stratified by label.

    The order of the kept samples is the dataset order, so the result is deterministic.
    """
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise DatasetError(f"--n must be a positive number of images, got {n}.")
    rng = np.random.default_rng(seed)
    labels = ds.labels
    if labels is None:
        keep = rng.choice(len(ds), size=n, replace=False)
    else:
        # round-robin over classes so every class keeps a share
        pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
        keep = []
        while len(keep) < n:
            for c in sorted(pools):
                if pools[c] and len(keep) < n:
                    keep.append(pools[c].pop())
    return ds.subset(sorted(int(i) for i in keep))


def natural_key(text) -> tuple:
    """Sort key that orders the numbers inside names by value (``5x`` < ``10x`` < ``40x``)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(text))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p.lower())
                 for i, p in enumerate(parts) if p)


def fingerprint(ds: Dataset) -> str:
    """Content fingerprint of a dataset: paths with size and mtime, plus every label.

    A changed file (new mtime or size), a changed measure or a changed label gives a new value, so
    activations cached under the old one are never returned for the new data.
    """
    h = hashlib.sha256()
    for s in ds.samples:
        h.update(json.dumps([s.path, file_stamp(s.path), repr(float(s.measure)), s.label,
                             s.group, s.split]).encode())
    return h.hexdigest()[:32]


def file_stamp(path) -> str:
    """``size:mtime_ns`` of a file (``missing`` when it cannot be stat'ed): changes with it."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def file_fingerprint(paths: list[str]) -> str:
    """Fingerprint of a list of files by path, size and mtime (no labels)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p}\0{file_stamp(p)}\n".encode())
    return h.hexdigest()[:32]


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`rcvcore._files.atomic_write`): a killed write
    leaves the old file (or none), never half a file."""
    atomic_write(path, text)


_TEMP_PID = re.compile(r"^\.(?:.*[.-](\d+)\.tmp(?:\.\w+)?|(\d+)-.+)$")


def clean_temp_files(folder, *, min_age_s: float = 60.0, max_age_s: float = 3600.0) -> int:
    """Remove temporary files left in ``folder`` by killed writes; returns how many.

    A temporary file is a hidden ``.NAME.PID.tmp`` or ``.NAME.PID.tmp.EXT`` (or an older
    ``.NAME-PID.tmp`` / ``.PID-NAME``). It is removed when its writer is no longer running and
    it is older than ``min_age_s``, or when it is older than ``max_age_s`` whoever wrote it (a
    cache shared by several machines cannot tell whether a foreign pid runs). Never fails.
    """
    import time

    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        m = _TEMP_PID.match(e.name)
        if not m:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
            if age < min_age_s:
                continue
            if age < max_age_s and _pid_alive(int(m.group(1) or m.group(2))):
                continue
            os.unlink(e.path)
            removed += 1
        except (OSError, ValueError):
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def default_cache_dir() -> Path:
    """The user's cache directory for rcvcore (``$RCV_CACHE_DIR`` overrides it)."""
    env = os.environ.get("RCV_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rcvcore"))

"""``folder:PATH``: a folder of images with ``labels.csv`` (``path,scale[,class][,group]``).

``labels.csv`` is read as UTF-8 (with or without a byte-order mark); a table saved in another
encoding by a spreadsheet (Windows-1252, then Latin-1) is read with a warning that names the
encoding. Messages about the table name the file and its line, never its content.

Rows are checked before any image is used:

- a path that resolves outside the dataset folder (``../x.png``, an absolute path elsewhere, a
  symlink pointing out) is refused and named, unless ``--opt allow_outside=true`` (a served
  dashboard never sets it);
- a path listed twice (also through two names of one file) is merged with a warning when both
  rows agree, and is an error when they disagree: the same image in train and test would leak;
- every image is decoded once (the verdict cached by path, size and mtime under
  ``<cache>/image-checks``), so a truncated or non-image file is a named skip here and never
  stops a scan or a training run later (``--opt verify=false`` only reads the headers).
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections import Counter
from pathlib import Path

from ..errors import Notice, SkippedFile
from .base import Dataset, DatasetError, Sample, Skipped
from .checks import check_images
from .options import reject_unknown

LAYOUT = ("a folder holding labels.csv with a header row and columns path,scale (optional: "
          "class, group, split); path is relative to the folder, scale a number")
COLUMNS = ("path", "scale", "class", "group", "split")
WALK_ROWS = 2000     # a table longer than this is checked against one listing of the folder
MAX_SKIP_WARNINGS = 20
MAX_TABLE_BYTES = 256 * 2**20      # a labels.csv beyond this is not a table of image names
ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def load(path, *, n=None, seed=0, cache_dir=None, progress=None, allow_outside: bool = False,
         verify: bool = True, workers: int | None = None, **unknown) -> Dataset:
    """Load a folder dataset.

    Args:
        path: the folder (holding ``labels.csv``) or the table itself.
        allow_outside: also use rows whose path resolves outside the folder (CLI only).
        verify: decode every image once (cached) and skip those that cannot be used; False
            only checks that each file's header is that of an image.
        workers: processes for the image checks (default: all cores).
    """
    reject_unknown("folder", load, unknown)
    root = Path(path).expanduser()
    try:
        table = root / "labels.csv" if root.is_dir() else root
        found = table.is_file()
    except OSError as e:
        raise DatasetError(f"Cannot open {str(root)!r} ({e.strerror}). Expected {LAYOUT}."
                           ) from None
    if not found:
        raise DatasetError(f"No labels.csv in {str(root)!r}. Expected {LAYOUT}.")
    rows = _read_table(table)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: dict[str, tuple[int, Sample]] = {}
    merged = []
    root = table.parent.resolve()
    tree = _Tree.walk(root) if len(rows) > WALK_ROWS else None
    for line, r in rows:
        sample, why = (tree.row_sample(table, line, r) if tree else None) or \
            _row_sample(table, line, r, bool(allow_outside), root)
        if sample is None:
            skipped.append(why)
            continue
        if sample.path in seen:
            first, other = seen[sample.path]
            if other != sample:
                raise DatasetError(
                    f"{table}: lines {first} and {line} both list the image {sample.path} with "
                    "different labels; an image listed twice would sit in both train and test. "
                    "Keep one row per image.")
            merged.append((first, line, sample.path))
            continue
        seen[sample.path] = (line, sample)
        samples.append(sample)
    if merged:
        first, line, p = merged[0]
        more = f" (and {len(merged) - 1} more)" if len(merged) > 1 else ""
        warnings.warn(f"{table}: {len(merged)} duplicate row(s) merged: lines {first} and {line} "
                      f"list the same image {p} with the same labels{more}.", Notice, stacklevel=2)
    if samples:
        checks = check_images([s.path for s in samples], cache_dir, decode=bool(verify),
                              workers=workers, progress=progress)
        good = []
        for s in samples:
            reason = checks[s.path][0]
            if reason:
                skipped.append(Skipped(s.path, reason))
            else:
                good.append(s)
        samples = good
    _warn_skipped(table, skipped)
    return Dataset(f"folder:{path}", "folder", "scale", tuple(samples), tuple(skipped),
                   label_name="class" if any(s.label for s in samples) else None)


def _read_table(table: Path) -> list[tuple[int, dict]]:
    """The rows of ``labels.csv`` as ``(line number, {column: value})``; errors name the file
    and never quote it."""
    try:
        size = table.stat().st_size
        if size > MAX_TABLE_BYTES:
            raise DatasetError(f"{table} is {size / 2**20:.0f} MiB, too large for a labels.csv "
                               f"(at most {MAX_TABLE_BYTES // 2**20} MiB). Expected {LAYOUT}.")
        data = table.read_bytes()
    except OSError as e:
        raise DatasetError(f"Cannot read {table} ({e.strerror or type(e).__name__}). "
                           f"Expected {LAYOUT}.") from None
    if b"\0" in data[:65536]:
        raise DatasetError(f"{table} is a binary file, not a labels.csv text table. "
                           f"Expected {LAYOUT}.")
    for encoding in ENCODINGS:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if encoding != "utf-8-sig":
        warnings.warn(f"{table} is not UTF-8; read it as {encoding}. Save it as UTF-8 to be "
                      "sure of non-ASCII names.", Notice, stacklevel=3)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{table} is empty. Expected {LAYOUT}.")
        cols = [c.strip().lower() for c in header]
        if "path" not in cols or "scale" not in cols:
            raise DatasetError(f"{table} has no header row with the columns path and scale "
                               f"(its first line has {len(cols)} field(s), none of them "
                               f"{'path' if 'path' not in cols else 'scale'}). Expected {LAYOUT}.")
        index = {c: cols.index(c) for c in COLUMNS if c in cols}
        rows = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue                                  # blank line
            rows.append((reader.line_num, {c: (fields[i].strip() if i < len(fields) else "")
                                           for c, i in index.items()}))
    except csv.Error as e:
        raise DatasetError(f"{table} line {reader.line_num} is not valid CSV "
                           f"({_csv_reason(e)}). Expected {LAYOUT}.") from None
    return rows


def _csv_reason(e: csv.Error) -> str:
    msg = str(e)
    if "field larger than field limit" in msg:
        return "a field is longer than the CSV field limit"
    if "new-line character" in msg:
        return "a new line inside an unquoted field"
    if "unexpected end of data" in msg:
        return "a quote opened and never closed"
    return "malformed quoting"


def _warn_skipped(table: Path, skipped: list[Skipped]) -> None:
    """One warning per skipped item up to :data:`MAX_SKIP_WARNINGS`, then one summary by
    reason (a 1.5 M-row table of missing files once printed 1.5 M lines for minutes)."""
    for s in skipped[:MAX_SKIP_WARNINGS]:
        warnings.warn(f"skipped {s.path}: {s.reason}", SkippedFile, stacklevel=3)
    rest = skipped[MAX_SKIP_WARNINGS:]
    if rest:
        kinds = Counter(s.reason.split(": ", 1)[-1] for s in rest)
        top = "; ".join(f"{n:,} {why}" for why, n in kinds.most_common(3))
        more = f"; {len(kinds) - 3} other reasons" if len(kinds) > 3 else ""
        warnings.warn(f"{table}: {len(rest):,} more item(s) skipped ({top}{more}); every "
                      "skipped item is in the dataset's skipped list (rcvcore inspect --json).",
                      Notice, stacklevel=3)


class _Tree:
    """The regular files and folders under a dataset folder, listed once (no symlink
    followed), so that a large table's rows are checked by lookup, not by one path resolution
    and one stat each. Rows it cannot decide (symlinks, absolute or outside paths) return None
    and go through :func:`_row_sample`."""

    def __init__(self, root: Path, files: set[str], dirs: set[str], links: set[str]):
        self.root, self.files, self.dirs, self.links = root, files, dirs, links

    @classmethod
    def walk(cls, root: Path) -> _Tree:
        files, dirs, links = set(), {"."}, set()
        for here, subdirs, names in os.walk(root):
            rel = os.path.relpath(here, root)
            for name in subdirs + names:
                p = os.path.join(here, name)
                key = os.path.normpath(os.path.join(rel, name))
                if os.path.islink(p):
                    links.add(key)
                elif os.path.isfile(p):
                    files.add(key)
                else:                     # a folder, a FIFO...: there, but not a file
                    dirs.add(key)
        return cls(root, files, dirs, links)

    def row_sample(self, table: Path, line: int, r: dict):
        name = r["path"]
        if not name or name[0] == "/" or "\0" in name or "\n" in name or "\r" in name:
            return None
        key = os.path.normpath(name) if ("." in name and "/." in "/" + name) or "//" in name \
            else name.rstrip("/")
        if key.startswith("..") or (self.links and self._link_prefixes(key)):
            return None
        where, listed = f"{table.name} line {line}", f"{self.root}/{key}"
        value = _finite(r["scale"])
        if value is None:
            return None, Skipped(listed, f"{where}: the scale column is not a finite number")
        if key not in self.files:
            why = "not a file" if key in self.dirs else "file not found"
            return None, Skipped(listed, f"{where}: {why}")
        return Sample(listed, value, r.get("class") or None, r.get("group") or None,
                      r.get("split") or None), None

    def _link_prefixes(self, key: str) -> list[str]:
        if not self.links:
            return []
        parts = key.split(os.sep)
        return [p for p in (os.sep.join(parts[:k]) for k in range(1, len(parts) + 1))
                if p in self.links]


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _row_sample(table: Path, line: int, r: dict, allow_outside: bool, root: Path
                ) -> tuple[Sample | None, Skipped | None]:
    """The sample of one row, or why the row is skipped."""
    name = r["path"]
    where = f"{table.name} line {line}"
    if not name:
        return None, Skipped(f"{table}:{line}", f"{where}: the path is empty")
    shown = _shown(name)
    if "\0" in name or "\n" in name or "\r" in name:
        return None, Skipped(f"{table}:{line}", f"{where}: the path holds a NUL character or "
                                                 "a line break (quoting gone wrong?)")
    raw = root / name
    listed = os.path.abspath(raw)                         # what the row names, for messages
    try:
        file = raw.resolve()
    except (OSError, RuntimeError) as e:                 # symlink loop, name too long
        return None, Skipped(listed, f"{where}: cannot resolve the path "
                                     f"({getattr(e, 'strerror', None) or type(e).__name__})")
    if not allow_outside and not file.is_relative_to(root):
        how = "points" if str(file) == listed else "is a symlink pointing"
        target = "" if str(file) == listed else f" (to {file})"
        return None, Skipped(listed, (
            f"{where}: the path {shown} {how} outside the dataset folder {root}{target}; move "
            "the image into the folder (or, on the command line only, --opt allow_outside=true)"))
    try:
        value = float(r["scale"])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        return None, Skipped(listed, f"{where}: the scale column is not a finite number")
    try:
        ok = file.is_file()
    except OSError as e:
        return None, Skipped(listed, f"{where}: cannot open the file ({e.strerror})")
    if not ok:
        if os.path.islink(listed) and not os.path.lexists(file):
            why = f"a symlink to a missing file ({file})"
        else:
            why = "not a file" if os.path.lexists(file) else "file not found"
        return None, Skipped(listed, f"{where}: {why}")
    return Sample(str(file), value, r.get("class") or None, r.get("group") or None,
                  r.get("split") or None), None


def _shown(name: str, limit: int = 80) -> str:
    """A path from the table as it may appear in a message: quoted, printable, shortened."""
    text = name if len(name) <= limit else name[:limit - 20] + "..." + name[-17:]
    return repr(text)

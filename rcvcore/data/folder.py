"""``folder:PATH``: a folder of images with ``labels.csv`` (``path,scale[,class][,group]``)."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from .base import Dataset, DatasetError, Sample, Skipped
from .options import reject_unknown

LAYOUT = ("a folder holding labels.csv with a header row and columns path,scale (optional: "
          "class, group, split); path is relative to the folder, scale a number")


def load(path, *, n=None, seed=0, cache_dir=None, progress=None, **unknown) -> Dataset:
    reject_unknown("folder", load, unknown)
    root = Path(path).expanduser()
    table = root / "labels.csv" if root.is_dir() else root
    if not table.is_file():
        raise DatasetError(f"No labels.csv in {str(root)!r}. Expected {LAYOUT}.")
    if table.parent != root and root.is_file():
        root = table.parent
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "scale" not in cols:
            raise DatasetError(f"{table} has columns {cols}; expected {LAYOUT}.")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    samples, skipped = [], []
    for line, r in enumerate(rows, start=2):
        file = (root / r["path"]).resolve()
        try:
            value = float(r["scale"])
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            skipped.append(Skipped(str(file), f"labels.csv line {line}: scale {r['scale']!r} "
                                              "is not a finite number"))
            continue
        if not file.is_file():
            skipped.append(Skipped(str(file), f"labels.csv line {line}: file not found"))
            continue
        samples.append(Sample(str(file), value, r.get("class") or None, r.get("group") or None,
                              r.get("split") or None))
    for s in skipped:
        warnings.warn(f"skipped {s.path}: {s.reason}", stacklevel=2)
    return Dataset(f"folder:{path}", "folder", "scale", tuple(samples), tuple(skipped),
                   label_name="class" if any(s.label for s in samples) else None)

"""``demo-scale``: crops of real photographs at known zoom factors (embedded, offline).

The photographs ship inside scikit-image (its data module loads them without a download). Each
crop covers ``1/zoom`` of the photograph's short side at a random position and is resized to a
fixed size, so the scale measure ``log2(zoom)`` is exact by construction. Crops of one photograph
share a group, so grouped splits never test on a photograph seen in training.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import Notice
from .base import Dataset, Sample, atomic_write_text, clean_temp_files
from .images import png_complete
from .options import reject_unknown

PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
          "page")
DEFAULT_N = 160
OUT_SIZE = 256
ZOOM_RANGE = (1.0, 4.0)
_VERSION = 1


def _photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.dtype.kind == "f" else \
            arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    return img.convert("RGB")


def load(path, *, n=None, seed=0, cache_dir: Path, progress=None, **unknown) -> Dataset:
    reject_unknown("demo-scale", load, unknown)
    n = DEFAULT_N if n is None else int(n)
    params = {"v": _VERSION, "n": n, "seed": seed, "photos": PHOTOS, "size": OUT_SIZE,
              "zoom": ZOOM_RANGE}
    key = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "demo-scale" / key
    index = folder / "labels.json"
    if index.is_file():
        rows = cached_rows(folder, index)
        if rows is not None:
            return _dataset(folder, rows)
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp_files(folder)
    rng = np.random.default_rng(seed)
    rows = []
    photos = {}
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        if name not in photos:
            photos[name] = _photo(name)
        img = photos[name]
        w, h = img.size
        zoom = float(np.exp(rng.uniform(*np.log(ZOOM_RANGE))))
        side = min(w, h) / zoom
        x0 = rng.uniform(0, w - side)
        y0 = rng.uniform(0, h - side)
        crop = img.resize((OUT_SIZE, OUT_SIZE), Image.Resampling.BICUBIC,
                          box=(x0, y0, x0 + side, y0 + side))
        file = f"{i:05d}_{name}.png"
        crop.save(folder / file)
        rows.append({"file": file, "zoom": zoom, "photo": name})
        if progress:
            progress((i + 1) / n, f"generated {i + 1}/{n} demo crops")
    atomic_write_text(index, json.dumps(rows))
    return _dataset(folder, rows)


def cached_rows(folder: Path, index: Path) -> list | None:
    """The rows of a generated ``labels.json`` when it and every crop it lists are intact;
    None (with a warning saying what was damaged) when the crops must be generated again."""
    try:
        rows = json.loads(index.read_text())
        damaged = [r["file"] for r in rows if not png_complete(folder / r["file"])]
        [(float(r["zoom"]), str(r["photo"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        warnings.warn(f"demo-scale: the cached index {index} is damaged; generating the demo "
                      "crops again.", Notice, stacklevel=3)
        return None
    if damaged:
        warnings.warn(f"demo-scale: {len(damaged)} cached crop(s) are missing or damaged (e.g. "
                      f"{folder / damaged[0]}); generating the demo crops again.", Notice,
                      stacklevel=3)
        return None
    return rows


def _dataset(folder: Path, rows) -> Dataset:
    samples = tuple(Sample(str(folder / r["file"]), float(np.log2(r["zoom"])), None, r["photo"])
                    for r in rows)
    return Dataset("demo-scale", "demo-scale", "log2_zoom", samples,
                   info={"description": "crops of scikit-image photographs at zoom 1-4x"})

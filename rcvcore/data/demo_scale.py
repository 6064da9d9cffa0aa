"""``demo-scale``: crops of real photographs at known zoom factors (embedded, offline).

The photographs ship inside scikit-image (its data module loads them without a download). Each
crop covers ``1/zoom`` of the photograph's short side at a random position and is resized to a
fixed size, so the scale measure ``log2(zoom)`` is exact by construction.

Two protocols (``--opt protocol=...``):

- ``per-photo`` (default): each photograph is a class, scored as the paper scores each ImageNet
  class: within a class, random 70/30 splits of its crops, R² averaged over classes. 20 crops per
  photograph (320 in all) give test sets of 6 crops. The question asked is the paper's: does the
  layer order the crops of one scene by zoom?
- ``across-photos``: no classes, crops grouped by photograph, so grouped splits never test on a
  photograph seen in training (160 crops by default). This asks for an absolute notion of zoom
  that transfers to unseen scenes, which 16 very different photographs (a moon, a page of text,
  a cat) cannot teach a linear probe: a pretrained EfficientNet-Lite0 peaked at R² 0.28 here
  (README),
  against 0.96 per photograph.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .._shared import closest
from ..errors import Notice
from .base import Dataset, DatasetError, Sample, atomic_write_text, clean_temp_files
from .images import png_complete
from .options import reject_unknown

PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket",
          "page")
PROTOCOLS = ("per-photo", "across-photos")
DEFAULT_N = {"per-photo": 320, "across-photos": 160}
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


def load(path, *, n=None, seed=0, cache_dir: Path, progress=None, protocol: str = "per-photo",
         **unknown) -> Dataset:
    """Generate (or reuse) the demo crops.

    Args:
        n: number of crops, dealt round-robin over the 16 photographs (default 320 per photo,
            160 across photos).
        seed: seed of the zooms and positions.
        protocol: ``per-photo`` (default; each photograph a class) or ``across-photos`` (no
            classes, grouped by photograph); see the module docstring.
    """
    reject_unknown("demo-scale", load, unknown)
    if protocol not in PROTOCOLS:
        raise DatasetError(f"demo-scale: protocol {protocol!r}:{closest(str(protocol), PROTOCOLS)}"
                           f" choose per-photo (default: each photograph a class) or "
                           f"across-photos (grouped by photograph).")
    n = DEFAULT_N[protocol] if n is None else int(n)
    params = {"v": _VERSION, "n": n, "seed": seed, "photos": PHOTOS, "size": OUT_SIZE,
              "zoom": ZOOM_RANGE}
    key = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "demo-scale" / key
    index = folder / "labels.json"
    if index.is_file():
        rows = cached_rows(folder, index)
        if rows is not None:
            return _dataset(folder, rows, protocol)
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
    return _dataset(folder, rows, protocol)


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


def _dataset(folder: Path, rows, protocol: str) -> Dataset:
    per_photo = protocol == "per-photo"
    samples = tuple(Sample(str(folder / r["file"]), float(np.log2(r["zoom"])),
                           r["photo"] if per_photo else None,
                           None if per_photo else r["photo"]) for r in rows)
    return Dataset("demo-scale", "demo-scale", "log2_zoom", samples,
                   label_name="photo" if per_photo else None,
                   label_order=PHOTOS if per_photo else (),
                   info={"description": "crops of scikit-image photographs at zoom 1-4x",
                         "protocol": protocol})

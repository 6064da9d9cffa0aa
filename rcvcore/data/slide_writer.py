"""Write small pyramidal TIFF slides with a chosen MPP header (tests and the slides demo).

OpenSlide's generic-TIFF driver reads the TIFF resolution tags (centimetre unit) as
``openslide.mpp-x`` / ``-y``, so a slide written here has exactly the header it is given: right,
deliberately wrong, or none at all.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .._files import temp_name


def write_slide(path, rgb: np.ndarray, mpp: float | None, *, tile: int = 256,
                min_side: int = 256) -> Path:
    """Write ``rgb`` ``(H, W, 3)`` uint8 as a tiled pyramidal TIFF (levels halved down to
    ``min_side``) whose header says ``mpp`` µm/px (None: no resolution tags)."""
    import tifffile

    path = Path(path)
    levels = [np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        a = levels[-1]
        levels.append(np.asarray(Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2),
                                                           Image.Resampling.BOX)))
    tmp = temp_name(path).with_suffix(".tif")
    with tifffile.TiffWriter(tmp) as tw:
        for i, level in enumerate(levels):
            kw = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2 ** i)
                kw = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(level, tile=(tile, tile), photometric="rgb", compression="zlib",
                     metadata=None, subfiletype=0 if i == 0 else 1, **kw)
    os.replace(tmp, path)
    return path

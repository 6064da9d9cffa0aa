"""Small pyramidal TIFF slides written by the tests (demo-histology H&E renderings at 0.25 µm/px)
with a header MPP that is right, wrong by 2x or missing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from rcvcore.data.demo_histology import render_tile
from rcvcore.data.slide_writer import write_slide

TRUE_MPP = 0.25          # render_tile draws 40x tissue


def tissue(seed: int, size: int = 512) -> np.ndarray:
    return render_tile(seed, 0, size)[0]


def halve(rgb: np.ndarray) -> np.ndarray:
    """The same tissue at twice the µm per pixel."""
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((w // 2, h // 2), Image.Resampling.LANCZOS))


def write_cohort(root: Path, size: int = 512) -> dict[str, float | None]:
    """Four slides with a right header (two at 0.25 µm/px, two at 0.5): name -> header MPP."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(4):
        rgb = tissue(10 + i, size)
        mpp = TRUE_MPP if i % 2 == 0 else 2 * TRUE_MPP
        if i % 2:
            rgb = halve(rgb)
        write_slide(root / f"s{i}.tif", rgb, mpp, min_side=128)
        out[f"s{i}"] = mpp
    return out

"""The whole-slide demo (``python -m rcvcore demo slides``, ``make demo-slides``).

The real H&E source of ``demo-he`` (the CMU-1 Aperio region, 0.499 µm/px, CC0) is cut into a
4 x 4 grid of pieces, each written as a small pyramidal TIFF with its true MPP in the header
(:func:`rcvcore.data.slide_writer.write_slide`). Seven pieces with tissue are the "slides whose
headers I trust": a resolution model (EfficientNet-Lite0, ImageNet weights, cut at :data:`CUT`,
``--target mpp``) is trained on ``slides:`` tiles of them at 0.5 and 1 µm/px. Two other pieces
are then written with right, tampered and missing headers, at their own resolution and halved
(1 µm/px), and in rotated colours (a stain the model never saw), and checked with the real SVS.
A model trained on one region of one slide is a demonstration of the method, not a
general-purpose checker.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ._shared import ProgressFn
from .data.base import default_cache_dir
from .data.demo_he import locate_source
from .data.images import read_rgb
from .data.slide_writer import write_slide
from .runs.config import TrainConfig
from .runs.directory import read_run
from .slidecheck import check_slides
from .train import train

ARCH = "efficientnet_lite0"
CUT = "block3.2"
MPPS = "0.5,1"
SOURCE_MPP = 0.499
GRID = 4
#: the pieces of the 4 x 4 grid with tissue (about 20-80 %) that train the model
TRAIN_PIECES = (1, 2, 5, 6, 9, 13, 15)
#: check slides: name -> (piece, downsample, header MPP or None, colours rotated)
CHECKS = {
    "piece10_right.tif": (10, 1, SOURCE_MPP, False),
    "piece10_labelled_40x.tif": (10, 1, SOURCE_MPP / 2, False),   # tampered: 20x labelled 40x
    "piece10_no_mpp.tif": (10, 1, None, False),
    "piece10_restained.tif": (10, 1, SOURCE_MPP, True),           # another stain: out of domain
    "piece14_right.tif": (14, 1, SOURCE_MPP, False),
    "piece14_at_10x_right.tif": (14, 2, 2 * SOURCE_MPP, False),
    "piece14_10x_labelled_20x.tif": (14, 2, SOURCE_MPP, False),   # tampered: 10x labelled 20x
}


def _pieces(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    return [rgb[r * h // GRID:(r + 1) * h // GRID, c * w // GRID:(c + 1) * w // GRID]
            for r in range(GRID) for c in range(GRID)]


def write_demo_slides(folder, cache_dir=None) -> tuple[Path, Path, Path]:
    """Write the training and check slides under ``folder``; returns (train dir, check dir,
    the real SVS)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    source, _ = locate_source(None, cache_dir)
    pieces = _pieces(np.asarray(read_rgb(source)))
    train, check = Path(folder) / "trusted", Path(folder) / "check"
    train.mkdir(parents=True, exist_ok=True)
    check.mkdir(parents=True, exist_ok=True)
    for i in TRAIN_PIECES:      # kept when already written: their tiles stay cached
        if not (train / f"piece{i}.tif").is_file():
            write_slide(train / f"piece{i}.tif", pieces[i], SOURCE_MPP, min_side=128)
    for name, (i, ds, header, restained) in CHECKS.items():
        if (check / name).is_file():
            continue
        img = pieces[i][..., [1, 2, 0]] if restained else pieces[i]   # pink/purple -> cyan
        if ds > 1:
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((w // ds, h // ds),
                                                         Image.Resampling.LANCZOS))
        write_slide(check / name, img, header, min_side=128)
    return train, check, source


def slides_demo(folder, *, epochs: int = 5, device: str = "auto", tiles: int = 32,
                progress: ProgressFn | None = None):
    """Write the demo slides, train the resolution model (reused when already trained) and
    check the check slides and the real SVS; returns ``(checks, domain, run_dir)``."""
    folder = Path(folder)
    trusted, check, source = write_demo_slides(folder / "slides")
    run_dir = folder / "mpp-model"
    if read_run(run_dir).state != "done":
        cfg = TrainConfig(arch=ARCH, weights="imagenet", cut=CUT, dataset=f"slides:{trusted}",
                          target="mpp", epochs=epochs, batch_size=32, lr=1e-4, image_size=64,
                          device=device, dataset_cache_dir=str(folder / "cache"),
                          dataset_options={"mpps": MPPS, "patch_size": 64,
                                           "tiles_per_slide": 48, "min_tissue": 0.3})
        train(cfg, run_dir, restart=True, progress=progress, handle_signals=False)
    checks, domain = check_slides(run_dir, [check, source], n_tiles=tiles, device=device,
                                  progress=progress)
    return checks, domain, run_dir

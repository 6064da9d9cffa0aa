"""Tiny learnable histology-like dataset for the training / prediction tests (written by tests).

Each 32x32 image holds dark "nuclei" discs whose radius depends on the class (``5x`` small ..
``20x`` large); the measure is the drawn disc area in pixels, so the task is learnable in a few
steps of a small random-weights CNN.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from rcvcore.data.base import Dataset, Sample
from rcvcore.runs.config import TrainConfig

CLASSES = ("5x", "10x", "20x")
RADII = (3.0, 6.0, 10.0)
SIZE = 32
REPO = Path(__file__).resolve().parents[1]
#: a tiny run of a random resnet18 on 32-px images
TINY = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset="unused",
                   target="nuclei-area", epochs=1, batch_size=8, lr=1e-3, image_size=32,
                   log_every=1)


def disc_image(radius: float, seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.4, size * 0.6, 2)
    img = np.empty((size, size, 3), np.uint8)
    img[...] = (235, 170, 210)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = (90, 60, 150)
    noise = rng.integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def write_folder(root: Path, n: int = 36, seed: int = 0) -> Path:
    """A ``folder:`` dataset (labels.csv path,scale,class,group) of ``n`` images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % len(CLASSES)
        r = RADII[c] + rng.uniform(-1, 1)
        Image.fromarray(disc_image(r, seed * 1000 + i)).save(root / f"im{i:03d}.png")
        rows.append((f"im{i:03d}.png", f"{np.pi * r * r:.3f}", CLASSES[c], f"g{i // 2}"))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "scale", "class", "group"])
        w.writerows(rows)
    return root


def dataset(root: Path, n: int = 36, seed: int = 0) -> Dataset:
    """The same images as an in-memory Dataset with the classes in magnification order."""
    write_folder(root, n, seed)
    samples = []
    with open(root / "labels.csv") as f:
        for row in csv.DictReader(f):
            samples.append(Sample(str((root / row["path"]).resolve()), float(row["scale"]),
                                  row["class"], row["group"]))
    return Dataset(f"folder:{root}", "folder", "nuclei_area_px", tuple(samples),
                   label_name="magnification", label_order=CLASSES)


def tiny_flags(**over) -> list[str]:
    opts = {"arch": "resnet18", "weights": "random", "image-size": "32", "batch-size": "8",
            "lr": "1e-3", "epochs": "1", "log-every": "1", **over}
    out = []
    for k, v in opts.items():
        out += [f"--{k}", str(v)]
    return out


def cli(*args, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "RCV_NO_DOWNLOAD": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rcvcore", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout, **kw)

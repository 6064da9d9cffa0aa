"""``demo-histology``: embedded, offline H&E-like tissue at 40x with exact nuclei masks.

A deterministic generator renders tiles that look like breast tissue at 40x: eosin-pink fibrous
stroma with sparse elongated fibroblast nuclei, epithelial nests dense with large, irregular
tumour nuclei (chromatin texture, darker rims, occasional nucleoli), small round dark lymphocytes,
a few empty lumina, nuclear size and stain strength varying from tile to tile; colours follow the
Beer-Lambert mixing of haematoxylin and eosin (Ruifrok's stain vectors). Each tile is written
with its true nuclei mask in the ``janowczyk`` layout
(``demo_<seed>_<i>_original.tif`` + ``demo_<seed>_<i>_mask.png``) and then goes through the very
same pipeline as ``janowczyk`` (downsampling, cropping, measuring nuclei areas from the mask).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .._files import temp_name
from .._shared import ProgressFn
from .._utils import parallel_map
from .base import Dataset, DatasetError, atomic_write_text, clean_temp_files
from .histology import MAGNIFICATIONS, PATCH_SIZE, SourcePair, grid_positions
from .images import ImageReadError, png_complete, read_rgb
from .janowczyk import load_pairs
from .options import reject_unknown

GENERATOR_VERSION = 2
DEFAULT_TILE_SIZE = 1792     # 40x pixels: 8 patches wide at 40x, 1 patch at 5x and 8x
DEFAULT_MAX_PER_LEVEL = 4
DEFAULT_N_TILES = 6          # ~130 patches: 6 at 5x and 8x, ~24 at each of 10x..40x

# Ruifrok & Johnston optical densities of the stains (R, G, B)
_H = np.array([0.650, 0.704, 0.286])
_E = np.array([0.072, 0.990, 0.105])


def _smooth(shape, sigma: float, rng: np.random.Generator, anisotropy: float = 1.0,
            angle: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of ``shape``; cheap: drawn coarse, then upsampled."""
    from scipy import ndimage

    h, w = shape
    f = max(1, int(sigma // 2))
    small = rng.standard_normal((h // f + 2, w // f + 2))
    s = (sigma / f, sigma / f * anisotropy)
    small = ndimage.gaussian_filter(small, s, mode="wrap")
    if angle:
        small = ndimage.rotate(small, np.degrees(angle), reshape=False, order=1, mode="wrap")
    up = np.asarray(Image.fromarray(small.astype(np.float32), mode="F")
                    .resize(((w // f + 2) * f, (h // f + 2) * f), Image.Resampling.BILINEAR))
    up = up[f:f + h, f:f + w]
    return (up - up.mean()) / (up.std() + 1e-9)


# Long by design: one procedural drawing (stroma, nuclei, stain, noise) from one seeded
# generator; splitting it would pass the generator's state between pieces.
def render_tile(seed: int, index: int, size: int = DEFAULT_TILE_SIZE) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Render one 40x tile.

    Args:
        seed: dataset seed; tile ``index`` of seed ``s`` is the same whatever the number of tiles.
        index: tile number.
        size: side in pixels (40x, about 0.25 um per pixel).

    Returns:
        ``(size, size, 3)`` uint8 RGB image and its ``(size, size)`` bool nuclei mask (exact: the
        nuclei that were drawn, none touching another).
    """
    from scipy import ndimage

    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    shape = (size, size)
    # tissue map: epithelial nests where a low-frequency field is high, lumina inside some nests
    epi_field = _smooth(shape, 90, rng)
    epi_cut = rng.uniform(0.1, 0.7)
    epi = 1 / (1 + np.exp(-(epi_field - epi_cut) * 6))           # soft membership in [0, 1]
    lumen = (_smooth(shape, 40, rng) > 1.9) & (epi > 0.6)
    # stroma: eosin fibres along a random direction
    angle = rng.uniform(0, np.pi)
    fibres = _smooth(shape, 4, rng, anisotropy=5.0, angle=angle)
    waves = _smooth(shape, 25, rng)
    eosin = (0.26 + 0.06 * fibres + 0.04 * waves) * (1 - epi) + (0.16 + 0.03 * waves) * epi
    haem = 0.04 + 0.08 * epi + 0.015 * _smooth(shape, 3, rng)
    eosin = np.where(lumen, 0.02, eosin)
    haem = np.where(lumen, 0.01, haem)
    chromatin = _smooth(shape, 2.0, rng)
    mask = np.zeros(shape, dtype=bool)
    # grade of the tile: size of tumour nuclei (semi-axis, px)
    r_tumour = rng.uniform(8.0, 13.0)
    density = 0.95 * epi + 0.015
    n_candidates = int(size * size / (r_tumour ** 2 * 2.5))
    ys = rng.uniform(0, size, n_candidates)
    xs = rng.uniform(0, size, n_candidates)
    keep = rng.uniform(size=n_candidates) < density[ys.astype(int), xs.astype(int)]
    for y0, x0 in zip(ys[keep], xs[keep]):
        if lumen[int(y0), int(x0)]:
            continue
        u = rng.uniform()
        in_epi = epi[int(y0), int(x0)] > 0.5
        if u < 0.12:                                    # lymphocyte: small, round, very dark
            b = rng.uniform(4.5, 6.5)
            a, dark, irregular = b * rng.uniform(1.0, 1.15), rng.uniform(1.5, 1.9), 0.03
        elif not in_epi:                                # fibroblast: elongated along fibres
            b = rng.uniform(3.5, 5.5)
            a, dark, irregular = b * rng.uniform(2.2, 3.8), rng.uniform(1.0, 1.4), 0.05
        else:                                           # tumour nucleus: large, pleomorphic
            b = r_tumour * math.exp(rng.normal(0, 0.18))
            a, dark, irregular = b * rng.uniform(1.0, 1.5), rng.uniform(0.7, 1.25), 0.06
        theta0 = angle if (u >= 0.12 and not in_epi) else rng.uniform(0, np.pi)
        harm = [(k, rng.normal(0, irregular / (k - 1)), rng.uniform(0, 2 * np.pi))
                for k in (2, 3, 4)]
        rmax = a * (1 + sum(abs(c) for _, c, _ in harm)) + 1
        y1, y2 = int(max(0, y0 - rmax - 2)), int(min(size, y0 + rmax + 3))
        x1, x2 = int(max(0, x0 - rmax - 2)), int(min(size, x0 + rmax + 3))
        if mask[y1:y2, x1:x2].any():                   # keep nuclei apart: the mask stays exact
            continue
        yy, xx = np.mgrid[y1:y2, x1:x2]
        dy, dx = yy - y0, xx - x0
        c, s = math.cos(theta0), math.sin(theta0)
        along, across = dx * c + dy * s, -dx * s + dy * c
        phi = np.arctan2(across, along)
        rho = np.hypot(along / a, across / b)
        edge = 1 + sum(ck * np.cos(k * phi + pk) for k, ck, pk in harm)
        inside = rho <= edge
        if inside.sum() < 6:
            continue
        mask[y1:y2, x1:x2] |= inside
        rel = np.clip(rho / edge, 0, 1)
        conc = dark * (0.75 + 0.35 * rel ** 4 + 0.22 * chromatin[y1:y2, x1:x2])
        if u >= 0.12 and in_epi and rng.uniform() < 0.4:   # a nucleolus
            ny, nx = y0 + rng.normal(0, b / 4), x0 + rng.normal(0, b / 4)
            conc = conc + 0.6 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / (2 * 1.5 ** 2))
        sub = haem[y1:y2, x1:x2]
        sub[inside] = np.maximum(sub[inside], conc[inside])
        eosin[y1:y2, x1:x2][inside] *= 0.5
    # optics: slight blur, Beer-Lambert mixing, sensor noise
    haem = ndimage.gaussian_filter(haem, 0.7)
    eosin = ndimage.gaussian_filter(eosin, 0.7)
    # stain variation between tiles (staining batches, scanners)
    h_gain, e_gain = rng.uniform(0.85, 1.15, 2)
    od = (h_gain * haem[..., None] * _H + e_gain * eosin[..., None] * _E + 0.03
          ).astype(np.float32)
    rgb = 245.0 * np.exp(-1.6 * od) + 2.0 * rng.standard_normal(od.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mask


def write_tile(seed: int, index: int, size: int, folder: str) -> tuple[str, str]:
    """Render tile ``index`` into ``folder`` in the janowczyk layout, unless it is already there
    and intact (a damaged tile, e.g. truncated in the cache, is rendered again)."""
    stem = f"demo_{seed}_{index:03d}"
    img = Path(folder) / f"{stem}_original.tif"
    msk = Path(folder) / f"{stem}_mask.png"
    sizes = Path(folder) / f".{stem}.sizes.json"
    if not _tile_intact(img, msk, sizes):
        rgb, mask = render_tile(seed, index, size)
        tmp_img, tmp_msk = temp_name(img), temp_name(msk)
        Image.fromarray(rgb).save(tmp_img, format="TIFF", compression="tiff_lzw")
        Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_msk, format="PNG",
                                                            optimize=False)
        os.replace(tmp_msk, msk)                # mask first: an image implies its mask exists
        os.replace(tmp_img, img)
        _record_sizes(img, msk, sizes)
    return str(img), str(msk)


def _tile_intact(img: Path, msk: Path, sizes: Path) -> bool:
    """Whether a generated tile and its mask are complete: their sizes as recorded when they
    were written (a tile from before the record is decoded once, then recorded)."""
    try:
        if not (img.is_file() and msk.is_file()):
            return False
        try:
            want = json.loads(sizes.read_text())
            return [img.stat().st_size, msk.stat().st_size] == [want["image"], want["mask"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not png_complete(msk):
            return False
        read_rgb(img)
    except (OSError, ImageReadError):
        return False
    _record_sizes(img, msk, sizes)
    return True


def _record_sizes(img: Path, msk: Path, sizes: Path) -> None:
    try:
        atomic_write_text(sizes, json.dumps({"image": img.stat().st_size,
                                             "mask": msk.stat().st_size}))
    except OSError:
        pass        # without the record the tile is decoded again next time: slower, not wrong


def patches_per_tile(size: int, max_per_level: int | None, magnifications=MAGNIFICATIONS,
                     stride: int | None = None) -> int:
    """How many grid patches one tile of ``size`` gives (before patches without nuclei)."""
    total = 0
    for m in magnifications:
        side = round(size * m / 40)
        k = len(grid_positions(side, side, PATCH_SIZE, stride))
        total += k if max_per_level is None else min(k, max_per_level)
    return total


def load(path: str | None = None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, tiles: int | None = None,
         tile_size: int = DEFAULT_TILE_SIZE, max_per_level: int | None = DEFAULT_MAX_PER_LEVEL,
         magnifications=MAGNIFICATIONS, stride=None, split_seed: int = 0,
         split_fractions=(0.6, 0.2, 0.2), workers: int | None = None,
         **unknown) -> Dataset:
    """Generate (or reuse) the demo tiles and cut them into patches with the janowczyk pipeline.

    Args:
        path: must be None (embedded dataset).
        n: number of patches wanted; sizes the number of tiles (the registry then keeps a
            stratified subset of ``n``). Default: 6 tiles, about 130 patches.
        seed: seed of the tiles (tile ``i`` is the same for any number of tiles).
        cache_dir: tiles go to ``cache_dir/demo-histology/...``, patches to
            ``cache_dir/histology-patches``.
        tiles: number of 40x tiles (source images); overrides the sizing from ``n``; at least 3
            so that train, val and test are all non-empty.
        tile_size: side of a tile in 40x pixels (default 1792, the least that gives a 5x patch).
        max_per_level: at most this many patches per tile and magnification (default 4).
        magnifications, stride, split_seed, split_fractions, workers: as for ``janowczyk``.
    """
    reject_unknown("demo-histology", load, unknown)
    if path:
        raise DatasetError("demo-histology is embedded and takes no path; "
                           "use --dataset demo-histology")
    tile_size = int(tile_size)
    if tile_size < PATCH_SIZE:
        raise DatasetError(f"demo-histology: tile_size must be at least {PATCH_SIZE} px, "
                           f"got {tile_size}.")
    mpl = None if max_per_level in (None, "none", "None", 0) else int(max_per_level)
    if tiles is None:
        if n is None:
            tiles = DEFAULT_N_TILES
        else:
            per = max(1, patches_per_tile(tile_size, mpl, MAGNIFICATIONS, stride))
            tiles = max(3, math.ceil(int(n) * 1.1 / per))
    tiles = int(tiles)
    if not 1 <= tiles <= 5000:
        raise DatasetError(f"demo-histology: tiles must be between 1 and 5000, got {tiles}.")
    key = hashlib.sha256(json.dumps([GENERATOR_VERSION, int(seed), tile_size]).encode())
    folder = Path(cache_dir) / "demo-histology" / f"seed{seed}-{tile_size}-{key.hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp_files(folder)

    def tile_progress(f, msg):
        if progress:
            progress(0.5 * f, "rendering demo tiles")

    files = parallel_map(write_tile, [(int(seed), i, tile_size, str(folder)) for i in range(tiles)],
                         workers=workers, progress=tile_progress if progress else None)

    def patch_progress(f, msg):
        if progress:
            progress(0.5 + 0.5 * f, msg)

    pairs = [SourcePair(str(Path(img).resolve()), str(Path(msk).resolve()), Path(img).stem[:-9])
             for img, msk in files]
    return load_pairs(pairs, [], name="demo-histology", kind="demo-histology", seed=seed,
                      cache_dir=cache_dir, progress=patch_progress if progress else None,
                      magnifications=magnifications, stride=stride, max_per_level=mpl,
                      split_seed=split_seed, split_fractions=split_fractions, workers=workers,
                      info={"tiles": tiles, "tile_size": tile_size, "tile_dir": str(folder)})

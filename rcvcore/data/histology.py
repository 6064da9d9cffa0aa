"""The histology patch pipeline shared by ``janowczyk`` and ``demo-histology``.

From one 40x H&E image and its nuclei mask, for each simulated magnification ``m`` in
:data:`MAGNIFICATIONS`:

1. downsample the image *and* its mask by ``40 / m`` (image: Lanczos; mask: area average, so a
   nucleus keeps its mask "mass" and its area scales by ``(m / 40) ** 2``);
2. cut 224x224 patches on a grid (non-overlapping by default);
3. measure the mean nuclei area of each patch on the patch's (downsampled) mask exactly as the
   paper did: Otsu threshold, 2x2 closing, drop nuclei touching the border, keep regions >= 3 px
   (:func:`mean_nuclei_area`). A patch with no nucleus left is excluded and counted.

Patches are written as PNG files under a cache folder, one folder per source image keyed by the
source files (path, size, mtime) and every generation parameter, with a ``manifest.json`` written
last. A second call finds the manifest and reads nothing else; a changed input or parameter gets a
new key and is regenerated. Source images are processed in parallel (one process per image).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._shared import ProgressFn
from .._utils import parallel_map
from ..errors import SkippedFile
from .base import (
    DatasetError,
    Sample,
    Skipped,
    atomic_write_text,
    clean_temp_files,
    file_fingerprint,
)
from .images import ImageReadError, png_complete, read_rgb
from .splits import split_groups  # the loaders' fixed split of groups (histology sources)

MAGNIFICATIONS: tuple[int, ...] = (5, 8, 10, 15, 20, 30, 40)
"""Simulated magnifications of the paper; the source images are 40x."""

SOURCE_MAGNIFICATION = 40
PATCH_SIZE = 224
MIN_REGION_PX = 3
LABEL_ORDER: tuple[str, ...] = tuple(f"{m}x" for m in MAGNIFICATIONS)
MEASURE_NAME = "nuclei_area_px"
LABEL_NAME = "magnification"

# Bump when the pipeline's output changes, so old caches are never reused.
PIPELINE_VERSION = 1


def mag_label(m: int | float) -> str:
    """The class name of magnification ``m``: ``5x``, ``40x``..."""
    return f"{int(m)}x" if float(m).is_integer() else f"{m}x"


# --------------------------------------------------------------------------------------------
# The measure
# --------------------------------------------------------------------------------------------

def nuclei_areas(mask) -> np.ndarray:
    """Areas in pixels of the nuclei of a mask, measured as in the paper.

    Otsu threshold of the mask, closing with a 2x2 footprint, nuclei touching the border removed
    (``skimage.segmentation.clear_border``), connected regions of at least 3 pixels kept.

    Args:
        mask: ``(height, width)`` array (bool, integer or float; binary or soft, e.g. a
            downsampled mask), or an RGB(A) array / PIL image, whose channels are averaged.

    Returns:
        ``(n_nuclei,)`` float64 array of region areas (empty when there is no nucleus).
    """
    from skimage import filters, measure, morphology, segmentation

    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"mean_nuclei_area expects a 2-D mask, got shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    if arr.size == 0 or not np.isfinite(arr).all():
        return np.zeros(0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:  # constant: no contrast, nothing to threshold (all background or all nucleus)
        return np.zeros(0)
    binary = arr > filters.threshold_otsu(arr)
    binary = morphology.closing(binary, np.ones((2, 2), dtype=bool))
    binary = segmentation.clear_border(binary)
    labels = measure.label(binary, connectivity=2)
    areas = np.asarray([r.area for r in measure.regionprops(labels)], dtype=np.float64)
    return areas[areas >= MIN_REGION_PX]


def mean_nuclei_area(mask) -> float | None:
    """Mean nuclei area in pixels of a mask, or None when it holds no nucleus.

    See :func:`nuclei_areas` for the exact measure (the paper's: Otsu, 2x2 closing, clear border,
    regions >= 3 px).

    Example:
        >>> m = np.zeros((64, 64), bool); m[10:20, 10:20] = True
        >>> mean_nuclei_area(m)
        100.0
    """
    areas = nuclei_areas(mask)
    return float(areas.mean()) if areas.size else None


# --------------------------------------------------------------------------------------------
# Downsampling and cropping
# --------------------------------------------------------------------------------------------

def downsample(rgb: Image.Image, mask: np.ndarray, magnification: float,
               source_magnification: float = SOURCE_MAGNIFICATION
               ) -> tuple[Image.Image, np.ndarray]:
    """Simulate a lower magnification: shrink the RGB image and its mask by ``source / m``.

    Args:
        rgb: the source RGB image.
        mask: ``(height, width)`` float mask in [0, 1], same size as ``rgb``.
        magnification: the target magnification (<= ``source_magnification``).

    Returns:
        The RGB image resized with Lanczos, and the mask resized by area averaging (a soft mask in
        [0, 1], thresholded later by Otsu, so nuclei areas scale by ``(m / source) ** 2``).
    """
    if magnification == source_magnification:
        return rgb, mask
    scale = magnification / source_magnification
    w, h = rgb.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = rgb.resize(size, Image.Resampling.LANCZOS)
    m = Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32), mode="F")
    m = np.asarray(m.resize(size, Image.Resampling.BOX), dtype=np.float32)
    return small, np.clip(m, 0.0, 1.0)


def grid_positions(height: int, width: int, size: int = PATCH_SIZE,
                   stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of a grid of ``size`` patches, centred in the image.

    With ``stride`` = ``size`` (the default) patches do not overlap; the leftover margin is split
    evenly on both sides. An image smaller than ``size`` gives no position.
    """
    stride = size if stride is None else int(stride)
    if height < size or width < size:
        return []
    ny = (height - size) // stride + 1
    nx = (width - size) // stride + 1
    oy = (height - size - (ny - 1) * stride) // 2
    ox = (width - size - (nx - 1) * stride) // 2
    return [(oy + i * stride, ox + j * stride) for i in range(ny) for j in range(nx)]


# --------------------------------------------------------------------------------------------
# One source image -> patches
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchParams:
    """Generation parameters; every field is part of the cache key.

    Attributes:
        magnifications: the simulated magnifications (source is 40x).
        patch_size: side of the square patches in pixels.
        stride: grid step in pixels of the downsampled image (None: ``patch_size``, no overlap).
        max_per_level: keep at most this many patches per source image and magnification, drawn
            at random (seeded by ``seed`` and the source id); None keeps them all.
        seed: seed of that draw.
        source_magnification: magnification of the source images (40 for the paper's data; 20
            for ``demo-he``); no magnification above it is made (that would be upsampling).
    """

    magnifications: tuple[int, ...] = MAGNIFICATIONS
    patch_size: int = PATCH_SIZE
    stride: int | None = None
    max_per_level: int | None = None
    seed: int = 0
    source_magnification: float = SOURCE_MAGNIFICATION


@dataclass(frozen=True)
class SourcePair:
    """One 40x source image, its nuclei mask, its id, and the group of its patches.

    ``group`` (default: ``source_id``) decides the split: e.g. the patient, so that two images
    of one patient never straddle train and test.
    """

    image: str
    mask: str
    source_id: str
    group: str | None = None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a nuclei mask as a ``(height, width)`` float32 array in [0, 1].

    Any non-zero value counts as nucleus in a 0/1 or 0/255 mask; a mask with intermediate grey
    levels is scaled by its maximum and thresholded later by Otsu.
    """
    arr = np.asarray(read_rgb(path).convert("L"), dtype=np.float32)
    hi = float(arr.max()) if arr.size else 0.0
    return arr / hi if hi > 0 else arr


def _key(pair: SourcePair, params: PatchParams) -> str:
    h = hashlib.sha256()
    h.update(file_fingerprint([os.path.abspath(pair.image), os.path.abspath(pair.mask)]).encode())
    d = asdict(params)
    if d["source_magnification"] == SOURCE_MAGNIFICATION:
        del d["source_magnification"]   # keys of 40x sources as before the field existed
    h.update(json.dumps([pair.source_id, d, PIPELINE_VERSION]).encode())
    return h.hexdigest()[:24]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def process_source(pair: SourcePair, params: PatchParams, out_root: str) -> dict:
    """Turn one source image into patches under ``out_root``, or reuse them if already there.

    Runs in a worker process; returns plain data (no warnings are raised here, the caller warns).

    Returns:
        ``{"patches": [[file, magnification_label, area], ...], "no_nuclei": int,
        "skipped": [[path, reason], ...], "cached": bool}``; file names are relative to the
        source's folder, whose path is under ``"dir"``.
    """
    try:
        return _process_source(pair, params, out_root)
    except OSError as e:
        if Path(out_root) in Path(getattr(e, "filename", "") or "/").parents:
            raise  # the cache cannot be written: the caller reports it once
        return {"dir": "", "patches": [], "no_nuclei": 0, "cached": False,
                "skipped": [[pair.image, f"failed ({e.strerror or type(e).__name__})"]]}
    except Exception as e:  # one bad source must not sink the whole dataset
        # the type only: a message could quote the file
        return {"dir": "", "patches": [], "no_nuclei": 0, "cached": False,
                "skipped": [[pair.image, f"failed ({type(e).__name__} while cutting patches)"]]}


# Long by design: one worker process per source image (cache check, mask, measure, patches,
# manifest); it runs in a pool and returns one plain dict.
def _process_source(pair: SourcePair, params: PatchParams, out_root: str) -> dict:
    folder = Path(out_root) / f"{_safe(pair.source_id)}-{_key(pair, params)}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            # every patch complete: one truncated in the cache (a full disk, a killed copy) has
            # the whole source cut again rather than the dataset silently shrinking
            if all(png_complete(folder / f) for f, _, _ in data["patches"]):
                data.update(dir=str(folder), cached=True)
                return data
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a broken manifest is regenerated below
    result = {"dir": str(folder), "patches": [], "no_nuclei": 0, "skipped": [], "cached": False}
    try:
        rgb = read_rgb(pair.image)
    except ImageReadError as e:
        result["skipped"].append([pair.image, e.reason])
        return result
    try:
        mask = read_mask(pair.mask)
    except ImageReadError as e:
        result["skipped"].append([pair.mask, f"nuclei mask: {e.reason}"])
        return result
    if mask.shape != (rgb.size[1], rgb.size[0]):
        result["skipped"].append([pair.mask, (
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {Path(pair.image).name} is "
            f"{rgb.size[0]}x{rgb.size[1]}; the mask must match its image pixel for pixel")])
        return result
    if mask.max() <= 0:
        result["skipped"].append([pair.mask, "nuclei mask is empty (no nucleus marked)"])
        return result

    size = params.patch_size
    src = params.source_magnification
    if min(rgb.size) * max(params.magnifications) / src < size:
        result["skipped"].append([pair.image, (
            f"image is {rgb.size[0]}x{rgb.size[1]}, too small for one {size}x{size} patch at "
            f"{mag_label(max(params.magnifications))}")])
        return result
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp_files(folder)
    rng = np.random.default_rng([params.seed, int(hashlib.sha256(pair.source_id.encode())
                                                   .hexdigest()[:8], 16)])
    for m in params.magnifications:
        small, small_mask = downsample(rgb, mask, m, src)
        positions = grid_positions(small_mask.shape[0], small_mask.shape[1], size, params.stride)
        if params.max_per_level is not None and len(positions) > params.max_per_level:
            idx = np.sort(rng.choice(len(positions), params.max_per_level, replace=False))
            positions = [positions[i] for i in idx]
        label = mag_label(m)
        for y, x in positions:
            area = mean_nuclei_area(small_mask[y:y + size, x:x + size])
            if area is None:
                result["no_nuclei"] += 1
                continue
            name = f"{label}_y{y}_x{x}.png"
            small.crop((x, y, x + size, y + size)).save(folder / name, compress_level=1)
            result["patches"].append([name, label, area])
    atomic_write_text(manifest, json.dumps({k: result[k]
                                             for k in ("patches", "no_nuclei", "skipped")}))
    return result


# --------------------------------------------------------------------------------------------
# Many sources -> a list of samples
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchSet:
    """The output of :func:`generate_patches`."""

    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...]
    n_no_nuclei: int
    n_sources: int
    n_cached: int


def generate_patches(pairs: Sequence[SourcePair], cache_dir: Path, params: PatchParams, *,
                     split_seed: int = 0, split_fractions=(0.6, 0.2, 0.2),
                     workers: int | None = None, progress: ProgressFn | None = None) -> PatchSet:
    """Run the patch pipeline on every source pair (cached, in parallel) and label the patches.

    Unusable sources (unreadable image or mask, size mismatch, empty mask) are skipped, warned
    about by name and returned in ``skipped``; patches without nuclei are counted in
    ``n_no_nuclei`` and listed in ``skipped`` by source and magnification.
    """
    root = Path(cache_dir) / "histology-patches"
    try:
        root.mkdir(parents=True, exist_ok=True)
        results = parallel_map(process_source, [(p, params, str(root)) for p in pairs],
                               workers=workers, progress=progress, message="histology patches")
    except OSError as e:
        raise DatasetError(f"Cannot write histology patches under {root} ({e.strerror or e}). "
                           "Point --cache-dir (or $RCV_CACHE_DIR) at a writable folder with "
                           "free space.") from None
    skipped: list[Skipped] = []
    usable = []
    n_no = 0
    for pair, res in zip(pairs, results):
        for path, reason in res["skipped"]:
            warnings.warn(f"skipped {path}: {reason}", SkippedFile, stacklevel=3)
            skipped.append(Skipped(str(path), reason))
        if res["no_nuclei"]:
            n_no += res["no_nuclei"]
            skipped.append(Skipped(pair.image, f"{res['no_nuclei']} patch(es) without any "
                                               "nucleus after thresholding were excluded"))
        if res["patches"]:
            usable.append((pair, res))
    splits = split_groups([p.group or p.source_id for p, _ in usable], split_seed,
                          tuple(split_fractions))
    samples = []
    order = {lab: i for i, lab in enumerate(LABEL_ORDER)}
    for pair, res in usable:
        rows = sorted(res["patches"], key=lambda r: (order.get(r[1], 99), r[0]))
        for name, label, area in rows:
            samples.append(Sample(path=str(Path(res["dir"], name).resolve()), measure=float(area),
                                  label=label, group=pair.group or pair.source_id,
                                  split=splits[pair.group or pair.source_id]))
    return PatchSet(tuple(samples), tuple(skipped), n_no, len(pairs),
                    sum(bool(r.get("cached")) for r in results))

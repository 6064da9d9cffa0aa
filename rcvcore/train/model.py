"""The network of a run: the pruned model with its head, and the input transform."""
from __future__ import annotations

from ..models import Backbone, Preprocess, get_arch, preprocess_for
from ..prune import PrunedNet, build_pruned
from ..runs.config import TrainConfig
from .data import Task

#: ``--protocol paper``'s input: pixel values 0-255 as they are (normalising with mean 0 and std
#: 1/255 undoes the transform's division by 255).
RAW255 = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))


def train_transform(arch, image_size: int | None = None, input_scale: str = "weights"
                    ) -> Preprocess:
    """The network input of the run: the image resized (shorter side) to ``image_size`` and
    centre-cropped to a square, normalised as the weights expect (``input_scale="weights"``) or
    left at 0-255 (``"raw255"``, the paper's protocol). 224-px patches are fed as they are to
    224-px networks (no 256-resize-then-crop, which would cut off the patch border)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    p = preprocess_for(arch)
    size = int(image_size or arch.input_size)
    mean, std = RAW255 if input_scale == "raw255" else (p.mean, p.std)
    return Preprocess(size, size, mean, std, p.interpolation)


def run_transform(config: TrainConfig) -> Preprocess:
    """The input transform of a run (its architecture, image size and protocol)."""
    return train_transform(config.arch, config.image_size, config.protocol_spec.input)


def build_run_model(config: TrainConfig, task: Task, weights: str | None = None,
                    backbone: Backbone | None = None) -> PrunedNet:
    """The pruned model of a run (fresh head); ``weights`` overrides ``config.weights``, and an
    already resolved ``backbone`` both."""
    return build_pruned(backbone or config.arch, weights or config.weights, config.cut,
                        task.n_outputs,
                        seed=config.seed, target_mean=task.target_mean,
                        target_std=task.target_std, token_pool=config.token_pool)

"""The network of a run: the pruned model with its head, and the input transform."""
from __future__ import annotations

from ..models import Preprocess, get_arch, preprocess_for
from ..prune import PrunedNet, build_pruned
from .config import TrainConfig
from .data import Task


def train_transform(arch, image_size: int | None = None) -> Preprocess:
    """The network input of the run: the weights' normalisation, the image resized (shorter side)
    to ``image_size`` and centre-cropped to a square. 224-px patches are fed as they are to
    224-px networks (no 256-resize-then-crop, which would cut off the patch border)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    p = preprocess_for(arch)
    size = int(image_size or arch.input_size)
    return Preprocess(size, size, p.mean, p.std, p.interpolation)


def build_run_model(config: TrainConfig, task: Task, weights: str | None = None) -> PrunedNet:
    """The pruned model of a run (fresh head); ``weights`` overrides ``config.weights``."""
    return build_pruned(config.arch, weights or config.weights, config.cut, task.n_outputs,
                        seed=config.seed, target_mean=task.target_mean,
                        target_std=task.target_std)

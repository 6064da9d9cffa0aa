"""What a network is to rcvcore: its probe layers (paper names -> graph nodes) and its input.

``layer`` is always the probe name users see (``mixed8``, ``add_15``, ``block3.1``); an
:class:`ArchSpec` maps it to the FX graph node. ``pre_softmax`` is the logits node; ``softmax`` is
computed from the logits by the extractor (it is not a graph node).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .._shared import closest
from ..errors import UserError

SOFTMAX = "softmax"
PRE_SOFTMAX = "pre_softmax"
HEAD_LAYERS = (PRE_SOFTMAX, SOFTMAX)


@dataclass(frozen=True)
class Preprocess:
    """Input preprocessing of a network's weights: resize the shorter side, centre crop,
    scale to [0, 1], normalise with ``mean``/``std``."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @property
    def fingerprint(self) -> str:
        return f"resize{self.resize}-crop{self.crop}-{self.interpolation}-m{self.mean}-s{self.std}"

    @classmethod
    def from_timm_cfg(cls, cfg: dict) -> Preprocess:
        """timm's pretrained config (``input_size``, ``crop_pct``, ``interpolation``, ``mean``,
        ``std``) as timm's own eval transform applies it: resize to ``floor(size / crop_pct)``,
        then centre-crop ``size``."""
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        interp = str(cfg.get("interpolation") or "bilinear")
        if interp not in ("bilinear", "bicubic", "nearest"):
            interp = "bilinear"
        return cls(int(math.floor(size / crop_pct)), size,
                   tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
                   tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))), interp)

    def __call__(self, img):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        img = F.resize(img, [self.resize], interpolation=mode, antialias=True)
        img = F.center_crop(img, [self.crop])
        t = F.pil_to_tensor(img).float().div_(255.0)
        return F.normalize(t, list(self.mean), list(self.std))


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to build it and where it is probed.

    Attributes:
        name: the name users give (``resnet50``, ``efficientnet_lite0``, ``timm:resnet50.a1_in1k``).
        source: ``torchvision`` or ``timm`` (which library builds the module and traces it).
        builder: the library's model name (``resnet50``, ``tf_efficientnet_lite0``).
        layers: ordered ``(layer, node)`` pairs of the probe layers, shallow to deep, ending with
            ``pre_softmax`` and ``softmax``.
        extra_layers: stem layers probed only with ``--layers all``.
        paper_cut: the layer the paper cut at, when the paper studied this network.
        full_node: the node of the last feature map (what the classifier pools): ``--cut none``.
        preprocess: the weights' preprocessing (input size, crop, interpolation, mean, std).
        weights_enum, weights_member, build_kwargs: torchvision's weights enum and builder kwargs.
        packaged_weights: name of ImageNet weights that ship inside an installed package
            (``imagenet`` then needs no download), or ``""``.
        layouts: ``(layer, layout)`` of the probe layers whose output is not a CNN map
            (:mod:`rcvcore.models.pooling`: ``nhwc``, ``tokens``); others are ``nchw``, and
            ``pre_softmax`` / ``softmax`` are ``vector``.
        prefix_tokens: class and register tokens before the patch tokens (``tokens`` layers).
        class_token: whether the first prefix token is a class token (``--token-pool cls``).
        norms: module names of the transformer's final norm on the tokens and of its norm on
            the pooled vector (``""`` when absent): what a model pruned at a block applies.
    """

    name: str
    source: str
    builder: str
    layers: tuple[tuple[str, str], ...]
    preprocess: Preprocess
    full_node: str
    extra_layers: tuple[tuple[str, str], ...] = ()
    paper_cut: str | None = None
    description: str = ""
    weights_enum: str = ""
    weights_member: str = "DEFAULT"
    build_kwargs: tuple[tuple[str, object], ...] = ()
    packaged_weights: str = ""
    layouts: tuple[tuple[str, str], ...] = ()
    prefix_tokens: int = 0
    class_token: bool = False
    norms: tuple[str, str] = ("", "")

    def layout(self, layer: str) -> str:
        """Layout of ``layer``'s output (:data:`rcvcore.models.pooling.LAYOUTS`)."""
        if layer in HEAD_LAYERS:
            return "vector"
        return dict(self.layouts).get(layer, "nchw")

    @property
    def has_tokens(self) -> bool:
        return any(lay == "tokens" for _, lay in self.layouts)

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    @property
    def all_layers(self) -> list[tuple[str, str]]:
        return list(self.extra_layers) + list(self.layers)

    @property
    def input_size(self) -> int:
        return self.preprocess.crop

    def node(self, layer: str) -> str:
        """Graph node of probe layer ``layer`` (``softmax`` maps to the logits node)."""
        table = dict(self.all_layers)
        if layer not in table:
            raise UserError(
                f"{self.name} has no probe layer {layer!r}.{closest(layer, table)} "
                f"Run `python -m rcvcore layers {self.name}` for the full list.")
        return table[layer]

    def depth(self, layer: str) -> float:
        """Normalised depth in [0, 1] of ``layer`` among the probe layers (for overlaying nets)."""
        names = [n for n, _ in self.all_layers]
        i = names.index(layer)
        return i / max(len(names) - 1, 1)

    def resolve_layers(self, spec: str | list[str] | None) -> list[str]:
        """``paper`` (default) | ``all`` | comma-separated names -> ordered list of layers."""
        if spec is None or spec == "paper":
            return self.layer_names
        if spec == "all":
            return [n for n, _ in self.all_layers]
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise UserError("--layers is empty; use 'paper', 'all' or names such as "
                            f"{','.join(self.layer_names[:2])}")
        for n in names:
            self.node(n)  # raises with the closest names
        order = [n for n, _ in self.all_layers]
        return sorted(dict.fromkeys(names), key=order.index)

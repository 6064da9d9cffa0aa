"""Registry of architectures, their probe layers (paper names) and weight resolution.

``layer`` is always the probe name users see (``mixed8``, ``add_15``); :class:`ArchSpec` maps it to
the torchvision FX graph node. ``pre_softmax`` is the logits node; ``softmax`` is computed from the
logits by the extractor (it is not a graph node).
"""
from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

from .data.base import closest
from .errors import UserError, WeightsUnavailable

SOFTMAX = "softmax"
PRE_SOFTMAX = "pre_softmax"


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the registry.

    Attributes:
        name: registry name (``resnet50``), as in ``torchvision.models``.
        weights_enum: torchvision weights enum class name (``ResNet50_Weights``).
        layers: ordered ``(layer, node)`` pairs of the probe layers, shallow to deep, ending with
            ``pre_softmax`` and ``softmax``.
        extra_layers: stem layers probed only with ``--layers all``.
        paper_cut: the layer the paper cut at, when the paper studied this network.
        build_kwargs: keyword arguments of the torchvision builder.
    """

    name: str
    weights_enum: str
    layers: tuple[tuple[str, str], ...]
    extra_layers: tuple[tuple[str, str], ...] = ()
    paper_cut: str | None = None
    build_kwargs: tuple[tuple[str, object], ...] = ()
    description: str = ""
    weights_member: str = "DEFAULT"

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    @property
    def all_layers(self) -> list[tuple[str, str]]:
        return list(self.extra_layers) + list(self.layers)

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

    @property
    def weights(self):
        return getattr(getattr(torchvision.models, self.weights_enum), self.weights_member)

    @property
    def input_size(self) -> int:
        return int(self.weights.transforms().crop_size[0])

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


def _resnet_adds(blocks: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    out, k = [], 1
    for stage, count in enumerate(blocks, start=1):
        for b in range(count):
            out.append((f"add_{k}", f"layer{stage}.{b}.add"))
            k += 1
    return tuple(out)


def _blocks(prefix: str, name: str, nodes: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{name}{i}", f"{prefix}{n}") for i, n in enumerate(nodes, start=1))


_HEAD = ((PRE_SOFTMAX, "fc"), (SOFTMAX, "fc"))


def _head(node: str) -> tuple[tuple[str, str], ...]:
    return ((PRE_SOFTMAX, node), (SOFTMAX, node))


ARCHS: dict[str, ArchSpec] = {}


def _register(spec: ArchSpec) -> None:
    ARCHS[spec.name] = spec


_register(ArchSpec(
    "inception_v3", "Inception_V3_Weights",
    layers=tuple((f"mixed{i}", n) for i, n in enumerate(
        ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"])) + _HEAD,
    extra_layers=(("conv2d_2b", "Conv2d_2b_3x3"), ("maxpool1", "maxpool1"),
                  ("conv2d_4a", "Conv2d_4a_3x3"), ("maxpool2", "maxpool2")),
    paper_cut="mixed8",
    # as torchvision builds it for ImageNet weights; the auxiliary head is dropped after loading
    build_kwargs=(("aux_logits", True), ("transform_input", True), ("init_weights", True)),
    description="Inception V3 at 299 px, probed at Keras' mixed0..mixed10 (the paper's).",
))
_register(ArchSpec(
    "resnet50", "ResNet50_Weights", layers=_resnet_adds((3, 4, 6, 3)) + _HEAD,
    extra_layers=(("stem", "maxpool"),), paper_cut="add_15",
    # V1: the classic ImageNet recipe, as the Keras weights the paper used (V2 is a newer recipe)
    weights_member="IMAGENET1K_V1",
    description="ResNet50 at 224 px, probed at Keras' add_1..add_16 residual sums (the paper's).",
))
_register(ArchSpec(
    "resnet18", "ResNet18_Weights", layers=_resnet_adds((2, 2, 2, 2)) + _HEAD,
    extra_layers=(("stem", "maxpool"),),
    description="ResNet18 at 224 px, probed at its 8 residual sums.",
))
_register(ArchSpec(
    "vgg16", "VGG16_Weights",
    layers=_blocks("features.", "pool", ["4", "9", "16", "23", "30"])
    + (("fc1", "classifier.1"), ("fc2", "classifier.4")) + _head("classifier.6"),
    description="VGG16 at 224 px, probed after each max-pool and fully connected layer.",
))
_register(ArchSpec(
    "densenet121", "DenseNet121_Weights",
    layers=(("denseblock1", "features.denseblock1"), ("transition1", "features.transition1"),
            ("denseblock2", "features.denseblock2"), ("transition2", "features.transition2"),
            ("denseblock3", "features.denseblock3"), ("transition3", "features.transition3"),
            ("denseblock4", "features.denseblock4"), ("features", "relu"))
    + _head("classifier"),
    description="DenseNet121 at 224 px, probed after each dense block and transition.",
))
_register(ArchSpec(
    "efficientnet_b0", "EfficientNet_B0_Weights",
    layers=_blocks("features.", "stage", [str(i) for i in range(9)]) + _head("classifier.1"),
    description="EfficientNet-B0 at 224 px, probed after its stem, 7 MBConv stages and head conv.",
))
_register(ArchSpec(
    "mobilenet_v3_large", "MobileNet_V3_Large_Weights",
    layers=_blocks("features.", "block", [str(i) for i in range(17)]) + _head("classifier.3"),
    description="MobileNetV3-Large at 224 px, probed after each of its 17 feature blocks.",
))
_register(ArchSpec(
    "convnext_tiny", "ConvNeXt_Tiny_Weights",
    layers=tuple((f"stage{s}_block{b + 1}", f"features.{2 * s - 1}.{b}")
                 for s, n in ((1, 3), (2, 3), (3, 9), (4, 3)) for b in range(n))
    + _head("classifier.2"),
    extra_layers=(("stem", "features.0"),),
    description="ConvNeXt-Tiny at 224 px, probed after each of its 18 blocks.",
))


def get_arch(name: str) -> ArchSpec:
    """Registry entry of ``name``; unknown names raise with the closest valid ones."""
    if name in ARCHS:
        return ARCHS[name]
    raise UserError(f"Unknown architecture {name!r}.{closest(name, ARCHS)} "
                    f"Valid choices: {', '.join(ARCHS)}. Run `python -m rcvcore models`.")


# --------------------------------------------------------------------------------------------
# weights


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from, and a fingerprint for cache keys."""

    kind: str            # "imagenet" | "random" | "checkpoint"
    fingerprint: str
    source: str          # human-readable: enum member, seed, or file path


def expected_weights_file(arch: ArchSpec) -> Path:
    """The file torchvision reads the ImageNet weights of ``arch`` from (``$TORCH_HOME``)."""
    url = arch.weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _build_bare(arch: ArchSpec, seed: int) -> nn.Module:
    builder = getattr(torchvision.models, arch.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(weights=None, **dict(arch.build_kwargs))


def _strip_aux(arch: ArchSpec, model: nn.Module) -> nn.Module:
    # Inception's auxiliary classifier only runs in train mode; drop it so train and eval graphs
    # match for FX and nothing unused is kept.
    if arch.name == "inception_v3":
        model.AuxLogits = None
        model.aux_logits = False
    return model


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path) -> str:
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_state_dict_file(path) -> dict:
    """Read a checkpoint as a state dict (``weights_only=True``).

    Accepts a plain state dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers, and keys
    prefixed by DDP's ``module.``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Checkpoint {str(p)!r} not found. --weights takes 'imagenet', 'random' "
                        "or the path of a state-dict file (.pt/.pth).")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"Cannot read checkpoint {str(p)!r} as a PyTorch state dict "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Save it with "
                        "torch.save(model.state_dict(), path).") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"Checkpoint {str(p)!r} does not hold a state dict (a mapping of names "
                        "to tensors).")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_checked(arch: ArchSpec, model: nn.Module, state: dict, source: str) -> None:
    if arch.name == "inception_v3" and not any(k.startswith("AuxLogits.") for k in state):
        model.AuxLogits = None  # a checkpoint saved without the auxiliary head is fine
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same keys, other shapes (e.g. a head for other classes)
        detail = " ".join(str(e).split())[:400]
        raise UserError(f"Checkpoint {source!r} does not fit {arch.name}: {detail}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise UserError(f"Checkpoint {source!r} does not fit {arch.name}: " + "; ".join(parts)
                        + f". Save a {arch.name} state dict (torchvision layout).")


def imagenet_fingerprint(arch: ArchSpec) -> str:
    """Cache fingerprint of torchvision's ImageNet weights: the enum member and the file name,
    which carries the first digits of the file's SHA-256."""
    return f"{arch.weights_enum}.{arch.weights.name}:{os.path.basename(arch.weights.url)}"


def build_model(arch: ArchSpec | str, weights: str = "imagenet", seed: int = 0
                ) -> tuple[nn.Module, WeightsInfo]:
    """Build ``arch`` in eval mode with ``weights``.

    Args:
        arch: registry entry or name.
        weights: ``"imagenet"`` (torchvision's weights and downloader, cached in
            ``$TORCH_HOME/hub/checkpoints``), ``"random"`` (seeded random initialisation, the
            control) or the path of a state-dict file.
        seed: seed of the random initialisation (``random``; also the head of checkpoints).

    Raises:
        WeightsUnavailable: ImageNet weights are not cached and cannot be downloaded.
        UserError: a checkpoint that cannot be read or does not fit the architecture.
    """
    arch = get_arch(arch) if isinstance(arch, str) else arch
    model = _build_bare(arch, seed)
    if weights == "random":
        info = WeightsInfo("random", f"random-seed{seed}", f"random init (seed {seed})")
    elif weights == "imagenet":
        state = imagenet_state_dict(arch)
        _load_checked(arch, model, state, str(expected_weights_file(arch)))
        info = WeightsInfo("imagenet", imagenet_fingerprint(arch), f"{arch.weights}")
    else:
        p = Path(weights).expanduser()
        if not p.exists():
            raise UserError(f"--weights {weights!r}: not 'imagenet' or 'random', and no such "
                            "file. Give a path to a state-dict checkpoint (.pt/.pth).")
        state = load_state_dict_file(p)
        _load_checked(arch, model, state, str(p))
        info = WeightsInfo("checkpoint", "sha256:" + file_digest(p)[:32], str(p.resolve()))
    model = _strip_aux(arch, model)
    model.eval()
    return model, info


def imagenet_state_dict(arch: ArchSpec) -> dict:
    """ImageNet state dict through torchvision's downloader, with a clear offline message.

    ``RCV_NO_DOWNLOAD=1`` forbids the download attempt (tests, air-gapped machines).
    """
    target = expected_weights_file(arch)
    if not target.is_file() and os.environ.get("RCV_NO_DOWNLOAD") == "1":
        raise WeightsUnavailable(_offline_message(arch, target, "downloads are disabled "
                                                  "(RCV_NO_DOWNLOAD=1)"))
    try:
        return arch.weights.get_state_dict(progress=False, check_hash=False)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
        raise WeightsUnavailable(_offline_message(arch, target, f"download failed: {e}")) from None
    except RuntimeError as e:  # a corrupt cached file
        raise WeightsUnavailable(f"The cached ImageNet weights {target} cannot be read ({e}). "
                                 "Delete the file and retry, or pass --weights PATH.") from None


def _offline_message(arch: ArchSpec, target: Path, why: str) -> str:
    return (f"ImageNet weights for {arch.name} are not available ({why}). torchvision expects "
            f"the file {target} (from {arch.weights.url}). Copy it there (set TORCH_HOME to use "
            f"another folder), or pass --weights PATH to a state-dict file, or --weights random "
            f"for the random-weights control.")


def check_weights(arch: ArchSpec | str, weights: str) -> None:
    """Fail fast, before any data is generated or read, on weights that cannot be had."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    if weights == "imagenet":
        target = expected_weights_file(arch)
        if not target.is_file() and os.environ.get("RCV_NO_DOWNLOAD") == "1":
            raise WeightsUnavailable(_offline_message(arch, target, "downloads are disabled "
                                                      "(RCV_NO_DOWNLOAD=1)"))
    elif weights != "random" and not Path(weights).expanduser().is_file():
        raise UserError(f"--weights {weights!r}: not 'imagenet' or 'random', and no such "
                        "file. Give a path to a state-dict checkpoint (.pt/.pth).")


def imagenet_weights_available(arch: ArchSpec | str) -> bool:
    arch = get_arch(arch) if isinstance(arch, str) else arch
    return expected_weights_file(arch).is_file()


# --------------------------------------------------------------------------------------------
# preprocessing


@dataclass(frozen=True)
class Preprocess:
    """ImageNet preprocessing of the chosen weights: resize, centre crop, normalise."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @property
    def fingerprint(self) -> str:
        return f"resize{self.resize}-crop{self.crop}-{self.interpolation}-m{self.mean}-s{self.std}"

    def __call__(self, img):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        img = F.resize(img, [self.resize], interpolation=mode, antialias=True)
        img = F.center_crop(img, [self.crop])
        t = F.pil_to_tensor(img).float().div_(255.0)
        return F.normalize(t, list(self.mean), list(self.std))


def preprocess_for(arch: ArchSpec | str) -> Preprocess:
    """The preprocessing that belongs to ``arch``'s ImageNet weights (used for every weights kind,
    so that the random-weights control sees the very same inputs)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    t = arch.weights.transforms()
    return Preprocess(int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std),
                      t.interpolation.value)


@functools.lru_cache(maxsize=None)
def channels(arch_name: str) -> dict[str, int]:
    """Channel count of every probe layer, from one forward pass of a random-weights model."""
    from .extract import FeatureExtractor

    arch = get_arch(arch_name)
    model, _ = build_model(arch, "random")
    ex = FeatureExtractor(model, arch, [n for n, _ in arch.all_layers], device="cpu")
    with torch.no_grad():
        out = ex(torch.zeros(1, 3, arch.input_size, arch.input_size))
    return {k: int(v.shape[1]) for k, v in out.items()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

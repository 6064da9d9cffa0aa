"""One forward pass returns every requested layer, pooled on the device (global average pooling
of CNN maps, the mean over H and W of NHWC maps, the named token pooling of transformer tokens:
:mod:`rcvcore.models.pooling`).

Batches are streamed: only the pooled ``(n_images, n_channels)`` arrays are kept, so peak memory
does not grow with the number of images beyond those arrays.
"""
from __future__ import annotations

import copy
import functools
import os
import warnings

import numpy as np
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from ._shared import Extraction
from .models import SOFTMAX, ArchSpec, get_arch, is_timm_model, resolve_backbone
from .models.pooling import check_token_pool, pool


def trunk(model: nn.Module, nodes: dict[str, str]) -> nn.Module:
    """FX-cut ``model`` so it returns ``{name: output of node}`` and computes nothing after the
    deepest requested node. ``model`` must be in eval mode; it is not modified.

    timm models are traced with timm's own ``create_feature_extractor`` (its leaf modules make
    TF "same" padding and other data-dependent code traceable); torchvision's otherwise."""
    if is_timm_model(model):
        from timm.models import create_feature_extractor as timm_extractor  # optional, heavy

        return timm_extractor(model, return_nodes=dict(nodes))
    with warnings.catch_warnings():
        # train/eval graphs are identical once Inception's auxiliary head is dropped
        warnings.filterwarnings("ignore", message=".*subsequence of those obtained in train.*")
        return create_feature_extractor(model, return_nodes=dict(nodes))


def _no_inplace_after(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make every in-place op that consumes a probed node out-of-place, at that call site only.

    ResNet's ReLU after the residual sum runs in place and would overwrite the returned tensor:
    ``add_k`` must be the sum *before* that ReLU. Patching only the consuming call sites (not
    every activation of the network) keeps the extra memory traffic to one tensor per probe.
    """
    output = next(n for n in gm.graph.nodes if n.op == "output")
    probed = set(output.args[0].values())           # the returned nodes
    changed = False
    for node in gm.graph.nodes:
        if not node.args or node.args[0] not in probed:
            continue
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if getattr(mod, "inplace", False) is True:
                clone = copy.copy(mod)
                clone.inplace = False
                name = node.target.replace(".", "_") + "_outofplace_" + node.name
                gm.add_submodule(name, clone)
                node.target = name
                changed = True
        elif node.op == "call_function" and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
            changed = True
        elif node.op == "call_method" and str(node.target).endswith("_") and \
                not str(node.target).startswith("__"):
            node.target = str(node.target)[:-1]          # x.relu_() -> x.relu()
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


class FeatureExtractor(nn.Module):
    """Pooled activations of several probe layers of ``arch`` in one forward pass.

    Args:
        model: a model built by :meth:`rcvcore.models.Backbone.build` (eval mode). It is
            deep-copied, so the caller's (possibly cached, shared) model is never modified.
        arch: its registry entry.
        layers: probe layer names (``mixed8``, ``add_15``, ``pre_softmax``, ``softmax``).
        device: where to run.
        channels_last: use the channels_last memory format (faster on CPU and CUDA convs).
        amp: autocast to float16 on CUDA (default: on for CUDA only; bf16 is very slow on CPU).
        token_pool: ``mean`` (of the patch tokens) or ``cls`` (the class token) for the token
            outputs of a transformer; ignored by other layouts.
    """

    def __init__(self, model: nn.Module, arch: ArchSpec, layers: list[str], device="cpu",
                 channels_last: bool = True, amp: bool | None = None, token_pool: str = "mean"):
        super().__init__()
        self.arch = arch
        self.layers = list(layers)
        if arch.has_tokens:
            check_token_pool(token_pool, arch=arch.name, class_token=arch.class_token)
        self.token_pool = token_pool
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        nodes = {arch.node(layer): arch.node(layer) for layer in self.layers}
        model = copy.deepcopy(model).eval()
        self.body = _no_inplace_after(trunk(model, nodes)).to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.body = self.body.to(memory_format=torch.channels_last)
        self.amp = (self.device.type == "cuda") if amp is None else amp

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (batch, 3, H, W) -> ``{layer: (batch, n_channels) float32}``."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.body(x)
        pooled = {}
        for layer in self.layers:
            t = out[self.arch.node(layer)].float()
            if layer == SOFTMAX:
                t = torch.softmax(t, dim=1)
            pooled[layer] = pool(t, self.arch.layout(layer), layer=layer,
                                 token_pool=self.token_pool,
                                 prefix_tokens=self.arch.prefix_tokens)
        return pooled


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from .data.images import ImageReadError, read_rgb

        try:
            return self.transform(read_rgb(self.paths[i])), i, ""
        except ImageReadError as e:
            return None, i, e.reason
        except Exception as e:  # a transform failure must not abort the scan either
            return None, i, f"{type(e).__name__}: {e}"


def _collate(batch):
    ok = [(x, i) for x, i, err in batch if x is not None]
    failed = [(i, err) for x, i, err in batch if x is None]
    xs = torch.stack([x for x, _ in ok]) if ok else None
    return xs, [i for _, i in ok], failed


def default_workers(device: torch.device) -> int:
    n = os.cpu_count() or 1
    if device.type == "cpu" and n <= 2:
        return 0  # decoding in a worker competes with the forward pass for the same 2 cores
    return min(8, max(1, n // 2))


def extract(extractor: FeatureExtractor, paths: list[str], transform, batch_size: int = 16,
            workers: int | None = None, progress=None) -> Extraction:
    """Stream ``paths`` through ``extractor``; unreadable files are reported, not fatal.

    Returns:
        An :class:`~rcvcore._cache.Extraction` (the record the activation cache stores): every
        layer of ``extractor`` for the readable images, and the unreadable ones with reasons.
    """
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, transform), batch_size=batch_size, shuffle=False,
        num_workers=default_workers(extractor.device) if workers is None else workers,
        collate_fn=_collate, pin_memory=extractor.device.type == "cuda")
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in extractor.layers}
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    done = 0
    for xs, idx, bad in loader:
        failed.extend(bad)
        if xs is not None:
            for layer, t in extractor(xs).items():
                chunks[layer].append(t.cpu().numpy())
            ok.extend(idx)
        done += len(idx) + len(bad)
        if progress:
            progress(done / max(len(paths), 1), f"extracted {done}/{len(paths)} images")
    feats = {layer: (np.concatenate(c) if c else np.zeros((0, 0), np.float32))
             for layer, c in chunks.items()}
    return Extraction(feats, np.asarray(ok, dtype=int), tuple(failed))


def probe_channels(arch: ArchSpec | str) -> dict[str, int]:
    """Channel count of every probe layer of ``arch``, from one forward pass of a random-weights
    model (channels do not depend on the weights' values)."""
    return _channels(get_arch(arch))


@functools.cache
def _channels(spec: ArchSpec) -> dict[str, int]:
    model = resolve_backbone(spec, "random").build()
    ex = FeatureExtractor(model, spec, [n for n, _ in spec.all_layers], device="cpu",
                          channels_last=False)
    with torch.no_grad():
        out = ex(torch.zeros(1, 3, spec.input_size, spec.input_size))
    return {k: int(v.shape[1]) for k, v in out.items()}

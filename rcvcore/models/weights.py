"""Checkpoint files given as ``--weights PATH``: reading them safely and fitting them to a model."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .spec import ArchSpec


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path) -> str:
    """SHA-256 of a file (memoised on its path, size and mtime)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_state_dict_file(path) -> dict:
    """Read a checkpoint as a state dict: a ``.safetensors`` file, or a torch file read with
    ``weights_only=True`` (no code runs while loading either).

    Accepts a plain state dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers, and keys
    prefixed by DDP's ``module.``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Checkpoint {str(p)!r} not found. --weights takes 'imagenet', 'random' "
                        "or the path of a state-dict file (.pt/.pth/.bin/.safetensors).")
    if p.stat().st_size == 0:
        raise UserError(f"Checkpoint {str(p)!r} is empty (0 bytes). Save it again with "
                        "torch.save(model.state_dict(), path).")
    if p.suffix == ".safetensors":
        return _safetensors(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Unsupported global" in str(e) or "This file can still be loaded" in str(e):
            raise UserError(
                f"Checkpoint {str(p)!r} holds Python objects other than tensors, and rcvcore "
                "refuses to unpickle them: loading such a file can run arbitrary code. Save "
                "only the weights: torch.save(model.state_dict(), path).") from None
        raise UserError(f"Checkpoint {str(p)!r} cannot be read as a PyTorch state dict "
                        f"({type(e).__name__}: the file is truncated, damaged or not a "
                        "checkpoint). Save it with torch.save(model.state_dict(), path).") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"Checkpoint {str(p)!r} does not hold a state dict (a non-empty mapping "
                        "of names to tensors).")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _safetensors(p: Path) -> dict:
    from safetensors.torch import load_file

    try:
        obj = load_file(str(p), device="cpu")
    except Exception as e:
        raise UserError(f"Checkpoint {str(p)!r} cannot be read as safetensors "
                        f"({type(e).__name__}: truncated, damaged or another format). Save it "
                        "with safetensors.torch.save_file(model.state_dict(), path).") from None
    if not obj:
        raise UserError(f"Checkpoint {str(p)!r} holds no tensors.")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checked(spec: ArchSpec, model: nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or misshapen tensor is an error."""
    if spec.source == "torchvision" and spec.builder == "inception_v3" and \
            not any(k.startswith("AuxLogits.") for k in state):
        model.AuxLogits = None  # a checkpoint saved without the auxiliary head is fine
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same keys, other shapes (e.g. a head for other classes)
        detail = " ".join(str(e).split())[:400]
        raise UserError(f"Checkpoint {source!r} does not fit {spec.name}: {detail}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        head = {n.split(".")[0] for name, n in spec.layers if name == "pre_softmax"}
        if missing and not unexpected and spec.source == "timm" and head and \
                all(k.split(".")[0] in head for k in missing):
            parts.append("the file has no classifier (a feature extractor, as foundation "
                         "models ship): build the architecture without one, e.g. "
                         f"{spec.name.split('[')[0]}[num_classes=0]")
        raise UserError(f"Checkpoint {source!r} does not fit {spec.name}: " + "; ".join(parts)
                        + f". Save a {spec.name} state dict ({spec.source} layout).")

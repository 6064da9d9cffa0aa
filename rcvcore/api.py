"""Discovery functions of the public API: which networks rcvcore knows, and their probe layers."""
from __future__ import annotations

from .models import ARCHS, get_arch


def list_models() -> list[str]:
    """Names of the registered architectures (``resnet50``, ``inception_v3`` ...)."""
    return list(ARCHS)


def list_layers(arch: str, *, all_layers: bool = False) -> list[str]:
    """The probe layers of ``arch`` with their paper names, shallow to deep.

    Args:
        arch: a name of :func:`list_models`.
        all_layers: also the stem layers probed only with ``--layers all``.

    Raises:
        UserError: an unknown architecture (the message lists the closest names).
    """
    spec = get_arch(arch)
    return [n for n, _ in spec.all_layers] if all_layers else list(spec.layer_names)

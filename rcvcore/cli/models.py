"""``models`` and ``layers ARCH``: what can be scanned and where it is probed."""
from __future__ import annotations

from ..models import ARCHS, channels, get_arch, imagenet_weights_available


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the architectures of the registry")
    p.set_defaults(func=_models)
    p = sub.add_parser("layers", help="list the probe layers of an architecture")
    p.add_argument("arch", help="architecture name (see `models`)")
    p.set_defaults(func=_layers)


def _models(args) -> int:
    print(f"{'arch':<20} {'input':>5}  {'layers':>6}  {'paper cut':<9}  {'imagenet weights':<16}  "
          "description")
    for a in ARCHS.values():
        cached = "cached" if imagenet_weights_available(a) else "not cached"
        print(f"{a.name:<20} {a.input_size:>5}  {len(a.layers):>6}  {a.paper_cut or '-':<9}  "
              f"{cached:<16}  {a.description}")
    return 0


def _layers(args) -> int:
    arch = get_arch(args.arch)
    ch = channels(arch.name)
    print(f"{'layer':<16} {'graph node':<28} {'channels':>8}  {'depth':>5}")
    for name, node in arch.all_layers:
        note = "  (only with --layers all)" if (name, node) in arch.extra_layers else ""
        note += "  <- paper's cut" if name == arch.paper_cut else ""
        node_shown = f"softmax({node})" if name == "softmax" else node
        print(f"{name:<16} {node_shown:<28} {ch[name]:>8}  {arch.depth(name):>5.2f}{note}")
    return 0

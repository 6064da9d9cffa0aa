"""``models`` and ``layers ARCH``: what can be scanned and where it is probed."""
from __future__ import annotations

import fnmatch


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the architectures of the registry (and timm's)")
    p.add_argument("--timm", metavar="PATTERN", nargs="?", const="*", default=None,
                   help="list timm's pretrained names matching PATTERN (e.g. 'resnet50*', "
                        "'vit_*'); scan any of them as --arch timm:NAME")
    p.set_defaults(func=_models)
    p = sub.add_parser("layers", help="list the probe layers of an architecture")
    p.add_argument("arch", help="architecture name (see `models`) or timm:NAME")
    p.set_defaults(func=_layers)


def _models(args) -> int:
    from ..models import ARCHS, weights_available  # torch: not for --help

    if args.timm is not None:
        import timm  # only this listing needs timm's catalogue

        names = [n for n in timm.list_pretrained() if fnmatch.fnmatch(n, args.timm)]
        for n in names:
            print(f"timm:{n}")
        print(f"# {len(names)} timm pretrained models match {args.timm!r}; probe layers of one: "
              "`python -m rcvcore layers timm:NAME`")
        return 0
    print(f"{'arch':<20} {'input':>5}  {'layers':>6}  {'paper cut':<9}  {'imagenet weights':<16}  "
          "description")
    for a in ARCHS.values():
        ok, _ = weights_available(a)
        state = ("packaged" if a.packaged_weights and ok else "cached" if ok else "not cached")
        print(f"{a.name:<20} {a.input_size:>5}  {len(a.layers):>6}  {a.paper_cut or '-':<9}  "
              f"{state:<16}  {a.description}")
    print("# timm's CNNs, vision transformers (ViT, DeiT, BEiT, EVA, DINOv2) and Swin models "
          "also work as --arch timm:NAME; list them with `python -m rcvcore "
          "models --timm 'PATTERN'`. The paper's own weights: timm:inception_v3.tf_in1k "
          "(Keras' TF-slim InceptionV3).")
    return 0


def _layers(args) -> int:
    from .._extract import probe_channels
    from ..models import get_arch

    arch = get_arch(args.arch)
    ch = probe_channels(arch)
    print(f"{'layer':<16} {'graph node':<28} {'channels':>8}  {'depth':>5}")
    for name, node in arch.all_layers:
        note = "  (only with --layers all)" if (name, node) in arch.extra_layers else ""
        note += "  <- paper's cut" if name == arch.paper_cut else ""
        node_shown = f"softmax({node})" if name == "softmax" else node
        print(f"{name:<16} {node_shown:<28} {ch[name]:>8}  {arch.depth(name):>5.2f}{note}")
    return 0

"""Vision transformers: one-pass extraction cost of every block, and the token pooling's cost.

Usage: .venv/bin/python bench/bench_vit.py [--images 8] [--rounds 3] [--arch timm:NAME ...]
       [--device cpu|cuda]

For each architecture (default ViT-B/16 and Swin-T at 224 px, random weights: cost does not
depend on the weights' values), interleaved so background load hits both sides alike, each one's
best round:
1. a plain forward to the logits vs. every probe layer pooled in the same pass (the scan's
   extractor; goal: <= 1.1x plain, as for the CNNs);
2. ViTs: the extractor with ``--token-pool cls`` vs ``mean`` (the patch-token mean's overhead).
Prints ratios measured in this one run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_scan import _interleaved  # noqa: E402  (one interleaving helper for the benches)

from rcvcore._extract import FeatureExtractor  # noqa: E402
from rcvcore.models import get_arch, resolve_backbone  # noqa: E402


def bench(name: str, n: int, rounds: int, device: str) -> None:
    torch.set_grad_enabled(False)
    spec = get_arch(name)
    model = resolve_backbone(spec, "random").build().to(device)
    s = spec.input_size
    x = torch.randn(n, 3, s, s, device=device)
    amp = device == "cuda"
    layers = spec.layer_names
    mean = FeatureExtractor(model, spec, layers, device=device, channels_last=False, amp=amp)

    def plain():
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    def run(ex):
        def f():
            ex(x)
            if device == "cuda":
                torch.cuda.synchronize()
        return f

    t_plain, t_all = _interleaved(plain, run(mean), rounds)
    print(f"{name} @ {s} px, {n} images, {device}: plain forward {t_plain:.3f} s, all "
          f"{len(layers)} probe layers pooled in one pass {t_all:.3f} s -> ratio "
          f"{t_all / t_plain:.3f}x ({n / t_all:.1f} img/s)")
    if spec.has_tokens and spec.class_token:
        cls = FeatureExtractor(model, spec, layers, device=device, channels_last=False, amp=amp,
                               token_pool="cls")
        t_cls, t_mean = _interleaved(run(cls), run(mean), rounds)
        print(f"  token pooling: mean of patch tokens {t_mean:.3f} s vs class token "
              f"{t_cls:.3f} s -> ratio {t_mean / t_cls:.3f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arch", nargs="+", default=["timm:vit_base_patch16_224",
                                                 "timm:swin_tiny_patch4_window7_224"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in args.arch:
        bench(name, args.images, args.rounds, args.device)


if __name__ == "__main__":
    main()

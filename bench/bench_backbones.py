"""Networks beyond torchvision: one-pass extraction cost, and the cold demo scan, per backbone.

Usage: .venv/bin/python bench/bench_backbones.py [--images 16] [--rounds 3] [--demo]

1. For efficientnet_lite0 (timm, packaged ImageNet weights) and timm:resnet50: a plain forward to
   the logits vs. every probe layer + GAP in one pass (the scan's extractor), interleaved so
   background load hits both alike; each one's best round (goal: all layers <= 1.1x plain).
2. ``--demo``: the README's cold demo scan (demo-scale, 160 crops, both controls, no cache) with
   efficientnet_lite0 (ImageNet) vs. resnet50 (random weights: the old offline default), as
   subprocesses of the CLI, and their ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_scan import _interleaved  # noqa: E402  (one interleaving helper for the benches)

from rcvcore._extract import FeatureExtractor, trunk  # noqa: E402
from rcvcore.models import get_arch, resolve_backbone  # noqa: E402


def bench_forward(n: int, rounds: int) -> None:
    torch.set_grad_enabled(False)
    for name in ("efficientnet_lite0", "timm:resnet50"):
        spec = get_arch(name)
        model = resolve_backbone(spec, "random").build()
        s = spec.input_size
        x = torch.randn(n, 3, s, s)
        xc = x.contiguous(memory_format=torch.channels_last)
        plain = trunk(model, {spec.node("pre_softmax"): "o"}).to(memory_format=torch.channels_last)
        ex = FeatureExtractor(model, spec, spec.layer_names, channels_last=True)
        t_plain, t_all = _interleaved(lambda: plain(xc), lambda: ex(x), rounds)
        print(f"forward {name}: {n} images @{s}px, {len(spec.layer_names)} layers | plain "
              f"{t_plain:.2f} s ({n / t_plain:.1f} img/s) | all layers one pass {t_all:.2f} s "
              f"({t_all / t_plain:.2f}x plain)", flush=True)


def bench_demo() -> None:
    env = dict(os.environ, RCV_NO_DOWNLOAD="1", HF_HUB_OFFLINE="1")
    times = {}
    with tempfile.TemporaryDirectory() as d:
        for arch, weights in (("efficientnet_lite0", "imagenet"), ("resnet50", "random")):
            cmd = [sys.executable, "-m", "rcvcore", "scan", "--arch", arch, "--weights", weights,
                   "--dataset", "demo-scale", "--no-cache", "--quiet", "--cache-dir", d]
            subprocess.run(cmd[:4] + ["--arch", arch, "--weights", weights, "--dataset",
                                      "demo-scale", "--layers", "pre_softmax", "--n", "16",
                                      "--repeats", "1", "--controls", "none", "--quiet",
                                      "--cache-dir", d], env=env, capture_output=True)  # data
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            times[arch] = time.perf_counter() - t
            assert r.returncode == 0, r.stderr[-800:]
            print(f"demo scan {arch} ({weights}), 160 crops, both controls, cold: "
                  f"{times[arch]:.1f} s", flush=True)
    print(f"efficientnet_lite0 / resnet50 cold demo scan: "
          f"{times['efficientnet_lite0'] / times['resnet50']:.2f}x", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--demo", action="store_true")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    bench_forward(a.images, a.rounds)
    if a.demo:
        bench_demo()

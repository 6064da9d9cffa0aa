"""Training throughput (images/s) of full vs pruned models, and data-loader throughput.

Usage: .venv/bin/python bench/bench_train.py [--batch 8] [--steps 2] [--rounds 3]
       [--archs resnet50,inception_v3] [--device auto] [--json FILE]

For each architecture, the full model (``--cut none``: trunk + GAP + head) and the model pruned at
the paper's cut are trained on random inputs, alternating ``--rounds`` rounds of ``--steps``
timed steps (after 2 warm-up steps; median per model),
exactly as the training loop does (train mode, Adam, MSE, channels_last; float16 autocast on CUDA
only). The loader is timed on ``demo-histology`` patches (224 px PNGs), read and transformed to the
network input by the run's own dataset class, with the loop's default worker count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rcvcore._extract import default_workers  # noqa: E402
from rcvcore._shared import resolve_device  # noqa: E402
from rcvcore.demo import DEMO_ARCH, DEMO_CUT  # noqa: E402
from rcvcore.models import get_arch  # noqa: E402
from rcvcore.prune import build_pruned, cut_summary  # noqa: E402
from rcvcore.train import ImageSet, train_transform  # noqa: E402


class _Trainer:
    """One model trained as the loop does, on a fixed random batch."""

    def __init__(self, arch, cut: str, batch: int, device, channels_last: bool = True):
        a = get_arch(arch)
        self.device, self.batch, self.cl = device, batch, channels_last
        self.model = build_pruned(a, "random", cut).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.x = torch.randn(batch, 3, a.input_size, a.input_size, device=device).contiguous(
            memory_format=fmt)
        self.y = torch.randn(batch, device=device)

    def step(self):
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.model(self.x)
        loss = torch.nn.functional.mse_loss(out.squeeze(-1).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def timed(self, steps: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.batch * steps / (time.perf_counter() - t0)


def train_throughputs(arch: str, cuts, batch: int, steps: int, rounds: int, device,
                      channels_last: bool = True) -> dict[str, float]:
    """Median images/s per cut; the models alternate round by round, so a machine shared with
    other work slows them alike and the comparison stays fair."""
    import statistics

    trainers = {c: _Trainer(arch, c, batch, device, channels_last) for c in cuts}
    for t in trainers.values():
        t.step()
        t.step()
    res = {c: [] for c in cuts}
    for _ in range(rounds):
        for c, t in trainers.items():
            res[c].append(t.timed(steps))
    return {c: statistics.median(v) for c, v in res.items()}


def loader_throughput(arch: str, batch: int, device, n: int = 96) -> tuple[float, int]:
    from rcvcore.data import load_dataset

    cache = Path(tempfile.gettempdir()) / "rcv-bench-cache"
    ds = load_dataset("demo-histology", n=n, seed=0, cache_dir=cache)
    images = ImageSet(ds.paths, list(ds.measures), train_transform(arch))
    workers = default_workers(device)
    loader = torch.utils.data.DataLoader(images, batch_size=batch, shuffle=True,
                                         num_workers=workers)
    for _ in loader:  # first pass: file-system cache warm, as in every epoch after the first
        pass
    t0 = time.perf_counter()
    count = sum(len(x) for x, _ in loader)
    return count / (time.perf_counter() - t0), workers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--archs", default="resnet50,inception_v3",
                    help="e.g. efficientnet_lite0 (cut at the demo's cut, no paper cut)")
    ap.add_argument("--cut", help="the pruned model's cut (default: the paper's, or the demo's "
                                  f"{DEMO_CUT} for efficientnet_lite0)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {device}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}")
    for arch in args.archs.split(","):
        a = get_arch(arch)
        loader, workers = loader_throughput(arch, args.batch, device)
        cut = args.cut or a.paper_cut or (DEMO_CUT if arch == DEMO_ARCH else None)
        if cut is None:
            ap.error(f"{arch} has no paper cut: give --cut")
        cuts = ("none", cut)
        per = train_throughputs(arch, cuts, args.batch, args.steps, args.rounds, device,
                                not args.no_channels_last)
        for cut in cuts:
            s = cut_summary(a, "random", cut)
            ips = per[cut]
            rows.append({"arch": arch, "cut": cut, "train_images_per_s": ips,
                         "params": s.pruned_params, "gflops": s.pruned_flops / 1e9,
                         "loader_images_per_s": loader, "workers": workers})
            print(f"{arch:13s} cut {cut:7s} params {s.pruned_params / 1e6:6.2f} M  "
                  f"{s.pruned_flops / 1e9:6.2f} GFLOPs  train {ips:6.2f} img/s", flush=True)
        fastest = max(per.values())
        print(f"{arch:13s} loader {loader:7.1f} img/s ({workers} workers) = "
              f"{loader / fastest:.0f}x the fastest training throughput; pruned/full speed-up "
              f"{per[cut] / per['none']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

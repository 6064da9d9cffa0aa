"""Peak memory of predicting K large uploads (issue 25.3): it must not grow with K.

Usage: .venv/bin/python bench/bench_predict_memory.py [--side 10000] [--ks 1 4 8 16]

Each upload is the issue's case: a single-colour ``side`` x ``side`` PNG (0.3 MiB at 10,000 px,
300 MB once decoded to RGB). For each K a fresh process loads a tiny trained run (resnet18 cut at
add_4, 32 px input, trained here once), records its peak resident memory (VmHWM), predicts K
copies with :func:`rcvcore.predict.predict_images` (as the Predict page does, thumbnails on), and
records the peak again; the figure is the increase.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, sys
from PIL import Image
from rcvcore.predict import load_run_model, predict_images

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
run = load_run_model(sys.argv[1], "cpu")
data = open(sys.argv[2], "rb").read()
k = int(sys.argv[3])
before = hwm()
preds = predict_images(run, [(f"u{i}.png", data) for i in range(k)], thumbnail=160)
assert all(p.ok for p in preds), [p.error for p in preds]
print(json.dumps({"k": k, "before_mb": before, "after_mb": hwm()}))
"""


def big_png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 200).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def tiny_run(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    from _train_fixtures import dataset

    from rcvcore.train import TrainConfig, train

    cfg = TrainConfig(arch="resnet18", weights="random", cut="add_4", dataset="unused",
                      epochs=1, batch_size=8, lr=1e-3, image_size=32, log_every=5)
    train(cfg, root / "run", dataset=dataset(root / "data", n=24))
    return root / "run"


def peak_increase_mb(run_dir: Path, png: Path, k: int) -> float:
    """Peak resident memory added by predicting ``k`` copies of ``png`` (MB, fresh process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(png), str(k)],
                         capture_output=True, text=True, env=env, check=True, timeout=900)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return rec["after_mb"] - rec["before_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10_000)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = tiny_run(Path(tmp))
        png = Path(tmp) / "big.png"
        png.write_bytes(big_png(args.side))
        print(f"upload: {args.side}x{args.side} PNG, {png.stat().st_size / 2**20:.2f} MiB, "
              f"{3 * args.side ** 2 / 2**20:.0f} MiB as RGB")
        for k in args.ks:
            print(f"K={k:3d}: peak +{peak_increase_mb(run_dir, png, k):7.0f} MB")


if __name__ == "__main__":
    main()

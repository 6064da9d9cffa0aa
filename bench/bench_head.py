"""The head's closed-form start vs fine-tuning: seconds of a head-only fit from cached features,
as a ratio to one fine-tuning epoch, on the demo's network and data, measured in one run.

Usage: .venv/bin/python bench/bench_head.py [--dataset demo-he] [--arch efficientnet_lite0]
       [--cut block3.2] [--image-size 224] [--json FILE]

Three real runs of ``rcvcore.train`` on the same splits, one after the other:
1. one epoch of fine-tuning every layer (recommended protocol, random head): ``epoch_time_s``;
2. a head-only run with ``--head-init rcv --epochs 0``: the forward pass of the trunk over
   train/val/test plus the fit (the line says ``0/3 hit`` when the feature cache was empty; an
   earlier run of this bench leaves it warm: ``--clear-features`` empties it first);
3. the same run again: the features come from the cache, so this is the fit alone.
It prints each wall time, the ratio of (3) to (1), and the test metrics of all three.
``demo-he`` needs its source (see README); ``--dataset demo-histology`` runs offline.
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

from rcvcore.data.base import default_cache_dir  # noqa: E402
from rcvcore.demo import DEMO_ARCH, DEMO_CUT, DEMO_DATASET  # noqa: E402
from rcvcore.runs import read_run  # noqa: E402
from rcvcore.train import TrainConfig, train  # noqa: E402
from rcvcore.train.head import FEATURES_PREFIX, head_store  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=DEMO_DATASET)
    ap.add_argument("--arch", default=DEMO_ARCH)
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--cut", default=DEMO_CUT)
    ap.add_argument("--target", default="nuclei-area")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--n", type=int)
    ap.add_argument("--clear-features", action="store_true",
                    help="drop every cached head feature first (rcvcore cache, head-features:)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if args.clear_features:
        with head_store(default_cache_dir()) as store:
            print(f"# dropped {store.clear(FEATURES_PREFIX)} cached head features")
    work = Path(tempfile.mkdtemp(prefix="rcv-bench-head-"))
    base = TrainConfig(arch=args.arch, weights=args.weights, cut=args.cut, dataset=args.dataset,
                       target=args.target, image_size=args.image_size, n=args.n,
                       device="cpu", log_every=10 ** 6, dataset_cache_dir=None)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; {args.arch} cut at "
          f"{args.cut} on {args.dataset} at {args.image_size} px", flush=True)
    runs = {
        "fine-tune 1 epoch": TrainConfig(**{**base.to_dict(), "epochs": 1,
                                            "head_init": "random"}),
        "head-only fit, cold": TrainConfig(**{**base.to_dict(), "epochs": 0,
                                              "trainable": "head", "head_init": "rcv",
                                              "dataset_cache_dir": None}),
    }
    out = {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        res = train(cfg, work / name.replace(" ", "_").replace(",", ""), handle_signals=False)
        out[name] = {"wall_s": time.perf_counter() - t0, "result": res.result}
    # run 2 wrote the features into the cache; run 3 reads them back
    cfg = runs["head-only fit, cold"]
    t0 = time.perf_counter()
    res = train(cfg, work / "head_warm", handle_signals=False)
    out["head-only fit, cached features"] = {"wall_s": time.perf_counter() - t0,
                                             "result": res.result}
    epoch = read_run(work / "fine-tune_1_epoch").epochs[0]
    epoch_s = float(epoch["epoch_time_s"])
    warm = out["head-only fit, cached features"]["result"]["head_init"]
    for name, r in out.items():
        t = r["result"]["test"]
        h = r["result"].get("head_init") or {}
        print(f"{name:32s} wall {r['wall_s']:7.2f} s  features {h.get('features_s', '-')} s "
              f"({h.get('feature_cache', '-')})  fit {h.get('fit_s', '-')} s  test MAE "
              f"{t.get('mae', float('nan')):.2f}  QWK {t.get('kappa_quadratic') or 0:.3f}",
              flush=True)
    fit_s = float(warm["fit_s"]) + float(warm["features_s"])
    print(f"one fine-tuning epoch ({epoch['images_per_s']:.1f} img/s over "
          f"{out['fine-tune 1 epoch']['result']['n_train']} training images): {epoch_s:.1f} s; "
          f"head-only fit from cached features (read + fit): {fit_s:.2f} s = "
          f"{fit_s / epoch_s:.3f}x one epoch", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {k: {"wall_s": v["wall_s"], "test": v["result"]["test"],
                 "head_init": v["result"].get("head_init")} for k, v in out.items()}
            | {"epoch_s": epoch_s, "fit_from_cache_s": fit_s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does the training domain flag what the demo model never saw? (issue 23.4)

Trains the Predict page's demo model (efficientnet_lite0, ImageNet, cut at DEMO_CUT, classifying
the magnification of demo-he patches at 8x, 10x, 15x, 20x; ``--epochs`` of fine-tuning, default
the demo's own), then predicts:

- its held-out test patches (in the training distribution: the share flagged is the false alarm
  rate; the threshold is the 99th percentile of leave-one-out training distances);
- the same patches "at 30x and 40x": their centre 1/1.5 and 1/2 upsampled to the patch size,
  which is how a 20x source shows a higher magnification (the issue's user did the same);
- the same patches with their colours inverted (no H&E stain looks like that).

Prints, per set, the patches flagged, the median feature distance over the threshold, and what
the model answered. Needs the demo-he source offline (the cached .svs) and ImageNet weights of
efficientnet_lite0 (the pinned pip package).

    python bench/bench_domain.py [--epochs 1] [--run-dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from rcvcore.demo import demo_model_config, held_out_patches
from rcvcore.domain import read_domain
from rcvcore.predict import load_run_model, predict_images, record_domain
from rcvcore.train import train


def zoom(img: Image.Image, factor: float) -> Image.Image:
    """The centre 1/factor of ``img`` upsampled back to its size (a higher magnification)."""
    w, h = img.size
    cw, ch = round(w / factor), round(h / factor)
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    return img.crop(box).resize((w, h), Image.BICUBIC)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args()
    run = Path(args.run_dir or tempfile.mkdtemp()) / "demo"
    over = {} if args.epochs is None else {"epochs": args.epochs}
    t0 = time.time()
    if not (run / "result.json").is_file():
        train(demo_model_config(device="cpu", **over), run)
    print(f"demo model: {run} ({time.time() - t0:.0f} s)")
    dom = record_domain(run, device="cpu")     # recomputed from the training split
    assert dom == read_domain(run)
    print(f"domain: classes {dom.classes}, {dom.n_train} training patches, threshold "
          f"{dom.distance_threshold:.3f}, min probability {dom.min_probability:.3f}, ends "
          + ", ".join(f"{e} vs {n} < {t:.2f}" for e, n, t in dom.edges))
    held = held_out_patches(run)
    imgs = [Image.open(h.path).convert("RGB") for h in held]
    model = load_run_model(run, "cpu")
    twenty = [i for i, h in zip(imgs, held) if h.label == "20x"]
    sets = {"held-out (8x-20x)": imgs,
            "40x from 20x patches": [zoom(i, 2.0) for i in twenty],
            "30x from 20x patches": [zoom(i, 1.5) for i in twenty],
            "all zoomed 1.5x": [zoom(i, 1.5) for i in imgs],
            "all zoomed 2x": [zoom(i, 2.0) for i in imgs],
            "colours inverted": [ImageOps.invert(i) for i in imgs]}
    print(f"{'set':<20} {'n':>4} {'flagged':>8} {'by dist':>8} {'by end':>7} {'dist/thr':>9} "
          f"{'p max':>6}  answers")
    for name, images in sets.items():
        preds = predict_images(model, [(f"{k}.png", np.asarray(i)) for k, i in enumerate(images)])
        flagged = np.mean([p.out_of_range for p in preds])
        by_dist = np.mean([any("feature space" in r for r in p.range_reasons) for p in preds])
        by_end = np.mean([any("beyond the training range of" in r for r in p.range_reasons)
                          for p in preds])
        ratio = np.median([p.feature_distance / dom.distance_threshold for p in preds])
        pmax = np.median([max(p.probabilities.values()) for p in preds])
        answers = Counter(p.magnification for p in preds)
        print(f"{name:<20} {len(preds):>4} {flagged:>8.0%} {by_dist:>8.0%} {by_end:>7.0%} "
              f"{ratio:>9.2f} {pmax:>6.2f}  "
              + ", ".join(f"{c} {n}" for c, n in sorted(answers.items())))
    right = np.mean([p.magnification == h.label for p, h in zip(
        predict_images(model, [(f"{k}.png", np.asarray(i)) for k, i in enumerate(imgs)]), held)])
    print(f"held-out accuracy {right:.2f}")


if __name__ == "__main__":
    main()

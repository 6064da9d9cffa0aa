"""Checking one slide (issue 26): seconds per slide, tiles/s, and peak memory against slide size.

Usage: .venv/bin/python bench/bench_slides.py [--run demo-slides/mpp-model] [--tiles 64]
       [--sides 2048 8192 24576]

The run is the demo's resolution model (``python -m rcvcore demo slides``: EfficientNet-Lite0
cut at block3.2, 64-px tiles). For each side a pyramidal TIFF of ``side`` x ``side`` px at
0.499 µm/px is written tile by tile (the CMU region repeated; never held whole in memory), then a
fresh process checks it with ``--tiles`` level-0 tiles (+ half as many at a second level) and
reports the time of the check alone and its peak resident memory (VmHWM). A check that read level
0 whole would need ``3 * side**2`` bytes (1.8 GB at 24,576 px); the figure must stay flat.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
from rcvcore.predict import load_run_model
from rcvcore.slidecheck import check_slide

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
run = load_run_model(sys.argv[1], "cpu")
check_slide(run, sys.argv[2], n_tiles=4)             # warm-up (first convolutions)
before = hwm()
t = time.perf_counter()
c = check_slide(run, sys.argv[2], n_tiles=int(sys.argv[3]))
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "tiles": c.n_tiles, "verdict": c.verdict, "mpp": c.mpp,
                  "before_mb": before, "peak_mb": hwm()}))
"""


def write_big_slide(path: Path, side: int, mpp: float = 0.499, tile: int = 256) -> None:
    """A ``side`` px pyramidal TIFF whose levels repeat the CMU region, written tile by tile."""
    import tifffile

    from rcvcore.data.base import default_cache_dir
    from rcvcore.data.demo_he import locate_source
    from rcvcore.data.images import read_rgb

    src = np.asarray(read_rgb(locate_source(None, default_cache_dir())[0]))
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level, s = 0, side
        while s >= 512:
            base = src if level == 0 else np.asarray(Image.fromarray(src).resize(
                (src.shape[1] >> level, src.shape[0] >> level), Image.Resampling.BOX))
            bh, bw = base.shape[:2]

            def tiles(s=s, base=base, bh=bh, bw=bw):
                for y in range(0, s, tile):
                    for x in range(0, s, tile):
                        ys = (np.arange(y, y + tile) % bh)[:, None]
                        xs = (np.arange(x, x + tile) % bw)[None, :]
                        yield np.ascontiguousarray(base[ys, xs])

            per_cm = 1e4 / (mpp * 2 ** level)
            tw.write(tiles(), shape=(s, s, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="zlib", metadata=None,
                     subfiletype=0 if level == 0 else 1, resolution=(per_cm, per_cm),
                     resolutionunit="CENTIMETER")
            level, s = level + 1, s // 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "demo-slides" / "mpp-model"))
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--sides", type=int, nargs="+", default=[2048, 8192, 24576])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for side in args.sides:
            path = Path(d) / f"slide{side}.tif"
            write_big_slide(path, side)
            out = subprocess.run([sys.executable, "-c", CHILD, args.run, str(path),
                                  str(args.tiles)], capture_output=True, text=True, cwd=ROOT,
                                 env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
            if out.returncode:
                sys.exit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(side=side, file_mb=path.stat().st_size / 2 ** 20,
                     level0_mb=3 * side * side / 2 ** 20)
            rows.append(r)
            print(f"{side:>6} px ({r['file_mb']:7.1f} MB file, level 0 {r['level0_mb']:7.0f} MB "
                  f"decoded): {r['seconds']:5.1f} s for {r['tiles']} level-0 tiles "
                  f"(+{args.tiles // 2} at a second level), {r['tiles'] / r['seconds']:5.1f} "
                  f"tiles/s, peak RSS {r['peak_mb']:6.0f} MB ({r['verdict']}, "
                  f"{r['mpp']:.3g} µm/px)", flush=True)
    peaks = [r["peak_mb"] for r in rows]
    print(f"peak RSS largest / smallest slide: {peaks[-1] / peaks[0]:.3f} "
          f"(level 0 decoded: {rows[-1]['level0_mb'] / rows[0]['level0_mb']:.0f}x)")


if __name__ == "__main__":
    main()

"""Time the histology patch pipeline per 1,000 patches, cold (empty cache) and warm (cached).

Usage: .venv/bin/python bench/bench_patches.py [--tiles 8] [--tile-size 2000] [--workers N]

1. ``janowczyk``: source images of the published size (2000x2000 at 40x, 131 patches each at the
   7 magnifications) are rendered once by the demo generator into a temporary folder in the
   janowczyk layout (not timed), then loaded with an empty cache (cold: read, downsample, crop,
   measure, write PNGs) and again (warm: manifests only).
2. ``demo-histology`` with its defaults, end to end (cold includes rendering the tiles).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcvcore._utils import parallel_map  # noqa: E402
from rcvcore.data import load_dataset  # noqa: E402
from rcvcore.data.demo_histology import write_tile  # noqa: E402


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """Run ``fn``; return its result, wall seconds and CPU seconds (this process + workers)."""
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    return out, time.perf_counter() - t0, _cpu() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--tile-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    workers = args.workers or os.cpu_count()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "janowczyk"
        src.mkdir()
        parallel_map(write_tile, [(1, i, args.tile_size, str(src)) for i in range(args.tiles)],
                     workers=workers)
        for f in src.iterdir():   # janowczyk names: <id>_original.tif / <id>_mask.png
            f.rename(f.with_name(f.name.replace("demo_1_", "bench_")))
        cache = Path(tmp) / "cache"
        spec = f"janowczyk:{src}"
        ds, cold, cold_cpu = timed(lambda: load_dataset(spec, cache_dir=cache, workers=workers))
        _, warm, _ = timed(lambda: load_dataset(spec, cache_dir=cache, workers=workers))
        rows["janowczyk"] = (len(ds), cold, warm, cold_cpu)
        cache2 = Path(tmp) / "cache-demo"
        ds, cold, cold_cpu = timed(lambda: load_dataset("demo-histology", cache_dir=cache2,
                                                        workers=workers))
        _, warm, _ = timed(lambda: load_dataset("demo-histology", cache_dir=cache2,
                                                workers=workers))
        rows["demo-histology (default, incl. rendering)"] = (len(ds), cold, warm, cold_cpu)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"workers={workers}, load avg {os.getloadavg()[0]:.1f}")
    print("| dataset | patches | cold s | warm s | cold s / 1,000 patches | "
          "warm s / 1,000 patches | cold CPU s / 1,000 patches |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    out = {}
    for name, (n, cold, warm, cpu) in rows.items():
        print(f"| {name} | {n} | {cold:.2f} | {warm:.3f} | {1000 * cold / n:.1f} | "
              f"{1000 * warm / n:.3f} | {1000 * cpu / n:.1f} |")
        out[name] = {"patches": n, "cold_s": cold, "warm_s": warm, "cold_cpu_s": cpu,
                     "cold_s_per_1000": 1000 * cold / n, "warm_s_per_1000": 1000 * warm / n}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    warnings.simplefilter("default")
    raise SystemExit(main())

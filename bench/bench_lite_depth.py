"""Where the scale peak sits in EfficientNet-Lite0/1/2 (issue 24.5): the peak of each scan on a
normalised depth axis, from the scans' JSON (``python -m rcvcore scan ... --json FILE``).

    for v in 0 1 2; do nice python -m rcvcore scan --arch efficientnet_lite$v --weights imagenet \\
        --dataset demo-scale --json lite$v.json --quiet; done
    python bench/bench_lite_depth.py lite0.json lite1.json lite2.json

Prints, per scan: the suggested cut (the peak among significant layers), its R² mean ± std and
normalised depth (the dashboard's overlay axis), the depth span of its plateau (layers not
significantly below the peak, significant ones only), and the R² at the other scans' peak
depths (nearest layer).
"""
from __future__ import annotations

import json
import sys


def summary(path: str) -> dict:
    d = json.load(open(path))
    layers = {r["name"]: r for r in d["layers"]}
    peak = layers[d["suggested_cut"]]
    plateau = d.get("plateau", {}).get("layers") or [d["suggested_cut"]]
    # the plateau's significant layers (a noisy block0.0 is "not below the peak" but not above
    # its controls either)
    depths = [layers[n]["depth"] for n in plateau if n in layers and layers[n].get("significant")]
    return {"arch": d["arch"], "peak": peak["name"], "r2": peak["r2_mean"], "std": peak["r2_std"],
            "depth": peak["depth"], "plateau": (min(depths), max(depths)), "n": len(layers),
            "curve": [(r["depth"], r["r2_mean"]) for r in d["layers"]]}


def main(paths: list[str]) -> None:
    rows = [summary(p) for p in paths]
    print(f"{'arch':20s} {'layers':>6s} {'peak':10s} {'R² mean ± std':>16s} {'depth':>6s} "
          f"{'plateau depths (significant)':>29s}")
    for r in rows:
        print(f"{r['arch']:20s} {r['n']:6d} {r['peak']:10s} {r['r2']:8.3f} ± {r['std']:.3f} "
              f"{r['depth']:6.2f} {r['plateau'][0]:21.2f}-{r['plateau'][1]:.2f}")
    print("R² of each network at every network's peak depth (nearest layer):")
    for r in rows:
        at = []
        for o in rows:
            d, r2 = min(r["curve"], key=lambda c: abs(c[0] - o["depth"]))
            at.append(f"{o['arch'][-5:]}@{o['depth']:.2f}: {r2:.3f} (d {d:.2f})")
        print(f"  {r['arch']:20s} " + "; ".join(at))


if __name__ == "__main__":
    main(sys.argv[1:])

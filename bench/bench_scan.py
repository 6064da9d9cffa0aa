"""Scan benchmarks (issue 2). Every figure is a ratio measured within this one run.

    python bench/bench_scan.py [--only forward,cache,fit,scan,memory] [--images 32]

forward: all paper layers in one pass vs a plain forward pass, and vs one truncated model per
         layer (the reference approach), for resnet50 and inception_v3 (random weights: speed
         does not depend on the values).
cache:   a repeated scan (warm cache) vs the first (cold), demo-scale, resnet50.
Every ratio is printed for wall-clock and for the process's CPU time (on shared cores the CPU
time measures our work, the wall clock also the neighbours').

fit:     score_targets for 16 ResNet50-wide layers x 10 repeats x (true + shuffled + random
         weights) on 1,000 images vs a loop of scikit-learn LinearRegression / RidgeCV on the same
         splits, with the largest R² difference; and the same fit with the significance tests
         (200 permutations of the measure on the shared factorisations, the paired test against
         random weights, Benjamini-Hochberg), timed alternately with the plain fit.
scan:    the product's scan (demo-scale = make demo-scan, and demo-he, scored with groups) with
         tests, plateau and an exclusion vs without them, cached activations, alternating
         (issue 22's 1.5x budget).
memory:  peak RSS of extracting 200 vs 2,000 images (separate processes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best(fn, reps=3):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _interleaved(fa, fb, rounds=5):
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        for f, ts in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    return min(ta), min(tb)


def bench_forward(n_images: int) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    from rcvcore._extract import FeatureExtractor
    from rcvcore.models import build_model, get_arch

    torch.set_grad_enabled(False)
    for name in ("resnet50", "inception_v3"):
        arch = get_arch(name)
        model, _ = build_model(arch, "random")
        s = arch.input_size
        x = torch.randn(n_images, 3, s, s)
        plain = create_feature_extractor(model, {arch.node("pre_softmax"): "o"}).eval()
        plain = plain.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        layers = arch.layer_names
        ex = FeatureExtractor(model, arch, layers, channels_last=True)
        # alternate the two so background load hits both alike; keep each one's best round
        t_plain, t_all = _interleaved(lambda: plain(xc), lambda: ex(x), rounds=5)
        probe = [l for l in layers if l != "softmax"]
        # reference: one truncated model per layer, each run over the images
        truncs = [FeatureExtractor(model, arch, [l], channels_last=True) for l in probe]
        t_ref = _best(lambda: [t(x) for t in truncs], reps=1)
        print(f"forward {name}: {n_images} images @{s}px, {len(layers)} layers | plain "
              f"{t_plain:.2f} s | all layers one pass {t_all:.2f} s ({t_all / t_plain:.2f}x plain)"
              f" | one truncated model per layer {t_ref:.2f} s ({t_ref / t_all:.1f}x slower)",
              flush=True)


def bench_cache(n_images: int) -> None:
    from rcvcore.scan import ScanConfig, run_scan

    with tempfile.TemporaryDirectory() as d:
        cfg = ScanConfig(arch="resnet50", weights="random", dataset="demo-scale", n=n_images,
                         repeats=10, controls=("shuffled",), cache_dir=d)
        from rcvcore.data import load_dataset

        load_dataset("demo-scale", n=n_images, cache_dir=Path(d) / "datasets")  # not timed
        t = time.perf_counter()
        run_scan(cfg)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = run_scan(cfg)
        t_warm = time.perf_counter() - t
    assert warm.cache["misses"] == 0
    print(f"cache resnet50 demo-scale n={n_images}: cold {t_cold:.2f} s, warm {t_warm:.2f} s "
          f"-> {t_cold / t_warm:.1f}x faster", flush=True)


def _features(n: int, widths, seed=0):
    # activation-like features: non-negative, low-rank structure plus noise, correlated with y
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 2, n)
    latent = np.c_[y, rng.normal(size=(n, 20))]
    feats = {}
    for i, p in enumerate(widths):
        W = rng.normal(size=(latent.shape[1], p))
        feats[f"add_{i + 1}"] = np.maximum(latent @ W + rng.normal(size=(n, p)) * 2, 0).astype(
            np.float32)
    return feats, y


def bench_fit(n: int = 1000, permutations: int = 200, rounds: int = 2,
              models=("ols", "ridge"), sklearn: bool = True) -> None:
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.metrics import r2_score

    from rcvcore.rcv import RELATIVE_ALPHAS, make_splits, score_targets, shuffled_targets

    widths = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    feats, y = _features(n, widths)
    rand_feats, _ = _features(n, widths, seed=1)
    splits = make_splits(n, repeats=10, seed=0)
    ysh = shuffled_targets(y, repeats=10, seed=0)
    from rcvcore.rcv import corrected_paired_t, layer_tests, permutation_pvalue, permutation_targets

    null = permutation_targets(y, permutations=permutations, seed=0)
    ratio = np.mean([len(s.test) for s in splits]) / np.mean([len(s.train) for s in splits])
    for model in models:
        def plain():
            return (score_targets(feats, {"true": y, "shuffled": ysh}, splits, model=model),
                    score_targets(rand_feats, {"y": y}, splits, model=model))

        def with_tests():
            o = score_targets(feats, {"true": y, "shuffled": ysh}, splits, model=model,
                              null=null, null_target="true")
            rw = score_targets(rand_feats, {"y": y}, splits, model=model)
            p_sh = {l: permutation_pvalue(s.null_observed, s.null) for l, s in o["true"].items()}
            p_rw = {l: corrected_paired_t(s.r2, rw["y"][l].r2, ratio)[1]
                    for l, s in o["true"].items()}
            return o, rw, layer_tests(list(feats), p_sh, p_rw)

        t_plain, t_tests, c_plain, c_tests = [], [], [], []
        for _ in range(rounds):   # alternate, so background load hits both alike
            t, c = time.perf_counter(), time.process_time()
            ours, ours_rw = plain()
            t_plain.append(time.perf_counter() - t)
            c_plain.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            o2, _, sig = with_tests()
            t_tests.append(time.perf_counter() - t)
            c_tests.append(time.process_time() - c)
        t_ours, t_sig = min(t_plain), min(t_tests)
        same = all(np.allclose(o2["true"][l].r2, ours["true"][l].r2, rtol=1e-9, atol=1e-12)
                   for l in feats)
        tested_is_shown = all(o2["true"][l].null_observed == o2["true"][l].mean for l in feats)
        n_sig = sum(bool(v["significant"]) for v in sig.values())
        print(f"fit {model}: tests/plain ratio {t_sig / t_ours:.2f}x wall, "
              f"{min(c_tests) / min(c_plain):.2f}x CPU (plain {t_ours:.1f} s / "
              f"{min(c_plain):.1f} s CPU, with {permutations} permutations on the reported "
              f"statistic {t_sig:.1f} s / {min(c_tests):.1f} s CPU; tested statistic == "
              f"reported mean R² for every layer: {tested_is_shown})", flush=True)
        if model == "ridge":
            _grouped_ratio(feats, rand_feats, y, permutations, rounds)
        if not sklearn:
            continue
        t = time.perf_counter()
        worst = 0.0
        for layer in feats:
            for F, target, ref in ((feats, y, ours["true"]), (feats, ysh, ours["shuffled"]),
                                   (rand_feats, y, ours_rw["y"])):
                X = F[layer].astype(np.float64)
                for s in splits:
                    yy = target if target.ndim == 1 else target[s.repeat]
                    if model == "ols":
                        est = LinearRegression()
                    else:
                        Xc = X[s.train] - X[s.train].mean(axis=0)
                        scale = (Xc ** 2).sum() / len(Xc)
                        est = RidgeCV(alphas=np.asarray(RELATIVE_ALPHAS) * scale)
                    est.fit(X[s.train], yy[s.train])
                    r2 = r2_score(yy[s.test], est.predict(X[s.test]))
                    worst = max(worst, abs(r2 - ref[layer].r2[s.repeat]) / max(1.0, abs(r2)))
        t_sk = time.perf_counter() - t
        print(f"fit {model}: {n} images, 16 layers x 10 repeats x 3 (true, shuffled, random "
              f"weights) | ours {t_ours:.1f} s | with significance tests ({permutations} "
              f"permutations) {t_sig:.1f} s ({t_sig / t_ours:.2f}x; R² unchanged: {same}; "
              f"{n_sig}/16 layers significant) | scikit-learn loop {t_sk:.1f} s -> "
              f"{t_sk / t_ours:.1f}x faster, {t_sk / t_sig:.1f}x with the tests | max R² "
              f"difference {worst:.1e}", flush=True)


def _grouped_ratio(feats, rand_feats, y, permutations: int, rounds: int) -> None:
    """The same ratio with groups of 5 images (leave-one-group-out penalties, the demo's case):
    true + shuffled + random weights, as the line above and as every scan fits them; and, as
    this line measured before 2026-12-05, without the random-weights pass (a smaller
    denominator: the tests' extra time over the true and shuffled fits alone)."""
    from rcvcore.rcv import make_splits, permutation_targets, score_targets, shuffled_targets

    g = np.arange(len(y)) // 5
    splits = make_splits(len(y), groups=g, repeats=10, seed=0)
    ysh = shuffled_targets(y, groups=g, repeats=10, seed=0)
    null = permutation_targets(y, groups=g, permutations=permutations, seed=0)
    t = {key: [] for key in ("plain", "tests", "rw")}
    c = {key: [] for key in t}

    def timed(key, fn):
        w, p = time.perf_counter(), time.process_time()
        fn()
        t[key].append(time.perf_counter() - w)
        c[key].append(time.process_time() - p)

    for _ in range(rounds):     # alternate, so background load hits all alike
        timed("plain", lambda: score_targets(feats, {"true": y, "shuffled": ysh}, splits))
        timed("tests", lambda: score_targets(feats, {"true": y, "shuffled": ysh}, splits,
                                             null=null, null_target="true"))
        timed("rw", lambda: score_targets(rand_feats, {"y": y}, splits))
    w = {key: min(v) for key, v in t.items()}
    p = {key: min(v) for key, v in c.items()}
    print(f"fit ridge, groups of 5 (leave-one-group-out penalties), true + shuffled + random "
          f"weights: tests/plain ratio {(w['tests'] + w['rw']) / (w['plain'] + w['rw']):.2f}x "
          f"wall, {(p['tests'] + p['rw']) / (p['plain'] + p['rw']):.2f}x CPU (plain "
          f"{w['plain'] + w['rw']:.1f} s / {p['plain'] + p['rw']:.1f} s CPU, with {permutations} "
          f"permutations {w['tests'] + w['rw']:.1f} s / {p['tests'] + p['rw']:.1f} s CPU); "
          f"without the random-weights pass: {w['tests'] / w['plain']:.2f}x wall, "
          f"{p['tests'] / p['plain']:.2f}x CPU (plain {w['plain']:.1f} s / {p['plain']:.1f} s "
          f"CPU, with the tests {w['tests']:.1f} s / {p['tests']:.1f} s CPU)", flush=True)


def bench_scan(rounds: int = 2, permutations: int = 200, cache_dir: str | None = None,
               datasets=("demo-scale", "demo-he")) -> None:
    """The product's scan (efficientnet_lite0, ImageNet weights, both controls; ``demo-scale``
    is ``make demo-scan``, scored per photograph; ``demo-he`` is scored with groups, the
    leave-one-group-out case) with the tests (``permutations`` shuffled measures on the
    reported statistic, the paired test against random weights, BH), the plateau and an
    exclusion (one photograph's crops / one source image's patches left out) vs the same scan
    without them (``--permutations 0``, nothing excluded), activations cached, saved results
    cleared before every call (the fit is timed, not the result cache), alternating."""
    for name in datasets:
        _bench_scan_one(name, rounds, permutations, cache_dir)


def _bench_scan_one(name: str, rounds: int, permutations: int, cache_dir: str | None) -> None:
    import dataclasses

    from rcvcore._cache import ActivationCache
    from rcvcore.data import load_dataset
    from rcvcore.scan import RESULT_PREFIX, ScanConfig, run_scan

    with tempfile.TemporaryDirectory() as tmp:
        d = cache_dir or tmp
        plain = ScanConfig(arch="efficientnet_lite0", weights="imagenet", dataset=name,
                           permutations=0, cache_dir=d)
        # loaded as the scan loads it (its cache folder, its seed), so the paths match
        ds = load_dataset(name, cache_dir=d, seed=plain.seed)
        unit = ds.groups if ds.groups is not None else ds.labels   # source image / photograph
        held = (str(unit[0]),)
        how = ("exclude_groups" if ds.groups is not None else "exclude")
        if how == "exclude":
            held = tuple(p for p, u in zip(ds.paths, unit) if u == unit[0])
        full = dataclasses.replace(plain, permutations=permutations, **{how: held})

        def timed(cfg):
            store = ActivationCache(Path(d) / "activations")
            store.store.clear(RESULT_PREFIX)
            store.close()
            t, c = time.perf_counter(), time.process_time()
            res = run_scan(cfg)
            res.to_json()                        # the plateau and peak frequency go in the JSON
            return (time.perf_counter() - t, time.process_time() - c), res

        timed(plain)                             # extraction (not timed), warms the cache
        t_plain, t_full = [], []
        for _ in range(rounds):
            t_plain.append(timed(plain)[0])
            t, res = timed(full)
            t_full.append(t)
        (w_p, c_p), (w_f, c_f) = (np.min(t_plain, axis=0), np.min(t_full, axis=0))
    n_sig = sum(bool(v["significant"]) for v in res.significance().values())
    left = int(res.scoring.get("excluded", 0))
    print(f"scan {name} (efficientnet_lite0, {res.n_images} images scored, "
          f"{'groups' if ds.groups is not None else 'per class'}, {len(res.layers)} layers, "
          f"{plain.repeats} repeats, both controls, cached activations): "
          f"tests+plateau+exclusion/plain ratio {w_f / w_p:.2f}x wall, {c_f / c_p:.2f}x CPU "
          f"(plain {w_p:.1f} s / {c_p:.1f} s CPU, with {permutations} permutations, plateau "
          f"and {left} images excluded {w_f:.1f} s / {c_f:.1f} s CPU; {n_sig} layers "
          f"significant)", flush=True)


_MEM_CHILD = """
import resource, sys, json, torch
sys.path.insert(0, {root!r})
from rcvcore.data import load_dataset
from rcvcore._extract import FeatureExtractor, extract
from rcvcore.models import build_model, get_arch, preprocess_for
arch = get_arch("resnet18")
ds = load_dataset("demo-scale", n={n}, cache_dir={cache!r})
model, _ = build_model(arch, "random")
ex = FeatureExtractor(model, arch, arch.layer_names)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = extract(ex, ds.paths, preprocess_for(arch), batch_size=16)
print(json.dumps({{"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "before_kb": before, "n": len(out.ok)}}))
"""


def bench_memory() -> None:
    with tempfile.TemporaryDirectory() as d:
        peaks = {}
        for n in (200, 2000):
            code = _MEM_CHILD.format(root=str(ROOT), n=n, cache=d)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True)
            peaks[n] = json.loads(r.stdout.strip().splitlines()[-1])["peak_kb"] / 1024
    print(f"memory resnet18 extraction, all layers: peak RSS 200 images {peaks[200]:.0f} MiB, "
          f"2,000 images {peaks[2000]:.0f} MiB -> {peaks[2000] / peaks[200]:.2f}x", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="forward,cache,fit,scan,memory")
    ap.add_argument("--images", type=int, default=16, help="images per forward timing")
    ap.add_argument("--cache-images", type=int, default=160)
    ap.add_argument("--permutations", type=int, default=200, help="for the fit benchmark")
    ap.add_argument("--fit-models", default="ols,ridge", help="for the fit benchmark")
    ap.add_argument("--rounds", type=int, default=2, help="fit: alternating rounds")
    ap.add_argument("--scan-cache-dir", default=None,
                    help="scan: a cache root kept between runs (default: a temporary one)")
    ap.add_argument("--no-sklearn", action="store_true",
                    help="fit: only the ratio with/without tests, not the scikit-learn loop")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus", flush=True)
    parts = a.only.split(",")
    if "fit" in parts:
        bench_fit(permutations=a.permutations, rounds=a.rounds,
                  models=tuple(a.fit_models.split(",")), sklearn=not a.no_sklearn)
    if "scan" in parts:
        bench_scan(a.rounds, a.permutations, a.scan_cache_dir)
    if "cache" in parts:
        bench_cache(a.cache_images)
    if "forward" in parts:
        bench_forward(a.images)
    if "memory" in parts:
        bench_memory()

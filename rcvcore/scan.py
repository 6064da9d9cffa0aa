"""The scale scan: dataset -> pooled activations (cached) -> held-out R² per layer + controls."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import ActivationCache, ActivationKey, CachedActivations, Store
from .data import Dataset, load_dataset
from .data.base import closest, default_cache_dir, fingerprint
from .dist import Dist, barrier, broadcast, gather, init_distributed
from .errors import UserError
from .extract import Extraction, FeatureExtractor, extract, resolve_device
from .models import PRE_SOFTMAX, SOFTMAX, ArchSpec, Backbone, get_arch, resolve_backbone
from .rcv import MODELS, LayerScore, check_measure, make_splits, score_targets, shuffled_targets

CONTROLS = ("shuffled", "random-weights")
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ScanConfig:
    """Everything that defines a scan (the CLI flags and dashboard widgets map onto it)."""

    arch: str = "resnet50"
    weights: str = "imagenet"
    dataset: str = "demo-scale"
    layers: str = "paper"                 # "paper" | "all" | "L1,L2,..."
    n: int | None = None
    repeats: int = 10
    model: str = "ridge"                  # "ridge" | "ols"
    controls: tuple[str, ...] = CONTROLS
    device: str = "auto"
    batch_size: int = 16
    seed: int = 0
    cache_dir: str | None = None
    use_cache: bool = True
    per_class: bool = True
    grouped: bool = True                  # False leaks groups across train/test: comparison only
    test_size: float = 0.3
    dataset_options: dict = field(default_factory=dict)  # loader options (--opt KEY=VALUE)

    def validate(self) -> ScanConfig:
        """Return a normalised copy or raise :class:`UserError` naming the bad parameter."""
        get_arch(self.arch)
        if self.model not in MODELS:
            raise UserError(f"--model {self.model!r}: choose one of {', '.join(MODELS)}.")
        controls = tuple(c for c in self.controls if c != "none")
        for c in controls:
            if c not in CONTROLS:
                raise UserError(f"--controls: unknown control {c!r}.{closest(c, CONTROLS)} "
                                f"Choose from {','.join(CONTROLS)} or none.")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, got {self.repeats}.")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not 0.05 <= self.test_size <= 0.8:
            raise UserError(f"test_size must be between 0.05 and 0.8, got {self.test_size}.")
        from .data.options import check_options

        return dataclasses.replace(self, controls=controls,
                                   dataset_options=check_options(self.dataset_options))


@dataclass(frozen=True)
class ScanResult:
    """R² per layer for the true network, and the controls, with timing and cache counts."""

    config: ScanConfig
    dataset: str
    measure_name: str
    n_images: int
    skipped: tuple[dict, ...]                     # {"path", "reason"}
    layers: tuple[LayerScore, ...]
    controls: dict[str, tuple[LayerScore, ...]]   # "shuffled" / "random_weights"
    depth: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int | str] = field(default_factory=dict)
    weights_source: str = ""

    def suggest_cut(self) -> tuple[str, str]:
        """Suggested prune point and the rule that chose it.

        Rule: among the probe layers (logits and softmax excluded), find the peak of mean R²;
        then walk deeper while R² stays within one standard deviation (over repeats) of the peak;
        suggest the last layer reached, i.e. the last layer before R² falls from its peak.
        """
        cands = [s for s in self.layers if s.layer not in (PRE_SOFTMAX, SOFTMAX)
                 and np.isfinite(s.mean)]
        if not cands:
            raise UserError("No scored layer to suggest a cut from.")
        i = int(np.argmax([s.mean for s in cands]))
        peak = cands[i]
        floor = peak.mean - peak.std
        while i + 1 < len(cands) and cands[i + 1].mean >= floor:
            i += 1
        rule = (f"R² peaks at {peak.layer} ({peak.mean:.3f} ± {peak.std:.3f}); {cands[i].layer} "
                "is the last layer before the mean R² falls more than one standard deviation "
                "below that peak (logits and softmax excluded).")
        return cands[i].layer, rule

    def to_json(self) -> dict:
        def rows(scores):
            return [dict(s.to_json(), depth=self.depth.get(s.layer)) for s in scores]

        return {
            "arch": self.config.arch, "weights": self.config.weights, "dataset": self.dataset,
            "n_images": self.n_images, "skipped": [s["path"] for s in self.skipped],
            "skipped_reasons": list(self.skipped),
            "measure": self.measure_name,
            "layers": rows(self.layers),
            "controls": {"shuffled": rows(self.controls.get("shuffled", ())),
                         "random_weights": rows(self.controls.get("random_weights", ()))},
            "timing": dict(self.timing), "cache": dict(self.cache),
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self.config).items()},
            "weights_source": self.weights_source,
        }

    @classmethod
    def from_json(cls, d: dict) -> ScanResult:
        cfg = dict(d.get("config") or {})
        cfg.setdefault("arch", d["arch"])
        cfg.setdefault("weights", d["weights"])
        cfg.setdefault("dataset", d["dataset"])
        if "controls" in cfg:
            cfg["controls"] = tuple(cfg["controls"])
        config = ScanConfig(**{k: v for k, v in cfg.items()
                               if k in {f.name for f in dataclasses.fields(ScanConfig)}})

        def scores(rows):
            return tuple(LayerScore.from_json(r) for r in rows)

        return cls(config, d["dataset"], d.get("measure", ""), d["n_images"],
                   tuple(d.get("skipped_reasons") or [{"path": p, "reason": ""}
                                                     for p in d.get("skipped", [])]),
                   scores(d["layers"]),
                   {k: scores(v) for k, v in d.get("controls", {}).items() if v},
                   {r["name"]: r.get("depth") for r in d["layers"]},
                   d.get("timing", {}), d.get("cache", {}), d.get("weights_source", ""))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["kind", "layer", "depth", "n_features", "r2_mean", "r2_std",
                    "r2_logmeanexp", "r2_repeats"])
        groups = [("true", self.layers)] + [(k, v) for k, v in self.controls.items()]
        for kind, scores in groups:
            for s in scores:
                w.writerow([kind, s.layer, f"{self.depth.get(s.layer, float('nan')):.4f}",
                            s.n_features, f"{s.mean:.6f}", f"{s.std:.6f}",
                            f"{s.logmeanexp:.6f}", ";".join(f"{v:.6f}" for v in s.r2)])
        return buf.getvalue()


#: Bump when a change to the scoring (splits, estimators, controls) changes results.
SCORING_VERSION = 1


def result_key(config: ScanConfig, arch: ArchSpec, layers: list[str], ds: Dataset,
               runs: list[tuple[str, Backbone]], images_fp: str | None = None) -> str:
    """Cache key of a whole scan result: every input of the activations (architecture, weights
    fingerprints, layers, preprocessing, dataset content fingerprint) and of the scoring
    (repeats, model, controls, seed, grouping, per-class, test size), plus the versions.
    ``images_fp``: ``fingerprint(ds)`` when the caller already has it."""
    from . import __version__

    payload = {
        "arch": arch.name, "layers": list(layers), "pooling": "gap",
        "preprocessing": arch.preprocess.fingerprint, "images": images_fp or fingerprint(ds),
        "weights": [[name, bb.fingerprint] for name, bb in runs],
        "repeats": config.repeats, "model": config.model, "controls": list(config.controls),
        "seed": config.seed, "per_class": config.per_class, "grouped": config.grouped,
        "test_size": config.test_size, "dataset": ds.name, "measure": ds.measure_name,
        "dataset_options": {k: repr(v) for k, v in sorted(config.dataset_options.items())},
        "rcvcore": __version__, "scoring": SCORING_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return RESULT_PREFIX + hashlib.sha256(blob).hexdigest()


#: Key prefix of saved scan results in the cache's store (``cache --clear results``).
RESULT_PREFIX = "scan:"


def saved_result(store, key: str) -> ScanResult | None:
    """The scan result saved under ``key`` in ``store`` (a :class:`rcvcore.cache.Store`), or
    None; an entry that does not load is dropped (and recomputed)."""
    value = store.get_json(key)
    if value is None:
        return None
    try:
        return ScanResult.from_json(value)
    except Exception:  # an old or damaged result: recompute it
        store.delete(key)
        return None


def activations(backbone: Backbone, layers: list[str], ds: Dataset, *,
                device: str = "auto", batch_size: int = 16,
                cache: ActivationCache | None = None, progress: Progress | None = None,
                images_fp: str | None = None, dist: Dist | None = None
                ) -> tuple[CachedActivations | None, dict[str, np.ndarray], float]:
    """Pooled activations of ``layers`` of ``backbone`` for every image of ``ds``; cached layers
    are not recomputed, and all missing layers come from ONE forward pass.

    Under torchrun (``dist`` enabled) rank 0 decides from its cache which layers are missing,
    every rank extracts its shard of the images (every ``world``-th image), and rank 0 gathers
    the pooled activations back in image order; the other ranks get ``(None, {}, seconds)``.

    Returns:
        (ok/failed record, {layer: (n_ok, C)}, seconds spent extracting).
    """
    pre = backbone.preprocess
    images_fp = images_fp or fingerprint(ds)

    def key(layer):
        return ActivationKey(backbone.arch, backbone.fingerprint, layer, "gap", pre.fingerprint,
                             images_fp)

    feats: dict[str, np.ndarray] = {}
    record = None
    missing = []
    for layer in layers:
        entry = cache.get(key(layer), len(ds)) if cache is not None else None
        if entry is None:
            missing.append(layer)
        else:
            feats[layer] = entry.features
            record = entry
    sharded = dist is not None and dist.enabled
    if sharded:
        missing = broadcast(dist, missing)   # cache hits are rank 0's, decided before extraction
    seconds = 0.0
    if missing:
        t0 = time.perf_counter()
        dev = resolve_device(device)
        ex = FeatureExtractor(backbone.build(), backbone.spec, missing, device=dev)
        if sharded:
            out = _extract_sharded(ex, ds, pre, batch_size, progress, dist)
            if out is None:
                return None, {}, time.perf_counter() - t0
        else:
            out = extract(ex, ds.paths, pre, batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - t0
        record = CachedActivations(np.zeros((0, 0)), out.ok, out.failed)
        for layer in missing:
            feats[layer] = out.features[layer]
            if cache is not None:
                cache.put(key(layer), CachedActivations(out.features[layer], out.ok, out.failed))
    elif progress:
        progress(1.0, "all layers from cache")
    return record, feats, seconds


def _extract_sharded(ex: FeatureExtractor, ds: Dataset, pre, batch_size: int, progress,
                     d: Dist) -> Extraction | None:
    """This rank's shard (images ``rank, rank + world, ...``) through ``ex``; rank 0 gets every
    rank's pooled activations back in image order, the other ranks ``None``."""
    idx = np.arange(d.rank, len(ds), d.world)
    out = extract(ex, [ds.paths[i] for i in idx], pre, batch_size=batch_size,
                  progress=progress if d.main else None)
    parts = gather(d, (idx[out.ok], out.features, [(int(idx[i]), r) for i, r in out.failed]))
    if parts is None:
        return None
    ok = np.concatenate([p[0] for p in parts]).astype(int)
    order = np.argsort(ok, kind="stable")
    feats = {layer: np.concatenate([p[1][layer] for p in parts if len(p[0])])[order]
             if len(ok) else np.zeros((0, 0), np.float32) for layer in ex.layers}
    failed = tuple(sorted(f for p in parts for f in p[2]))
    return Extraction(feats, ok[order], failed)


def run_scan(config: ScanConfig, progress: Progress | None = None) -> ScanResult | None:
    """Run a scan end to end (see the module docstring); ``progress(fraction, message)``.

    Launched by ``torchrun``, the images are sharded over the processes (one device each) and
    rank 0 alone fits, caches and returns the result; the other ranks return ``None``.
    """
    config = config.validate()
    arch = get_arch(config.arch)
    layers = arch.resolve_layers(config.layers)
    backbone = resolve_backbone(arch, config.weights, config.seed)  # fails fast when missing
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    d, dev = init_distributed(config.device)
    if not d.main:
        progress = None

    def stage(lo, hi):
        if progress is None:
            return None
        return lambda f, msg: progress(lo + (hi - lo) * f, msg)

    if not d.main:
        barrier(d)           # rank 0 generates demo data into the cache first
    with warnings.catch_warnings():
        if not d.main:
            warnings.simplefilter("ignore")   # rank 0 reports skipped files once
        ds = load_dataset(config.dataset, n=config.n, seed=config.seed, cache_dir=root,
                          progress=stage(0.0, 0.05), **config.dataset_options)
    if d.main:
        barrier(d)
    labels = ds.labels if config.per_class else None
    groups = ds.groups if config.grouped else None
    # fail before any extraction on an unusable measure or too few images
    check_measure(ds.measures, labels)
    make_splits(len(ds), labels=labels, groups=groups, repeats=1, seed=config.seed,
                test_size=config.test_size)

    runs = [("true", backbone)]
    if "random-weights" in config.controls:
        # scanning random weights already, the control is another random initialisation
        # (seed + 1): the same seed would only repeat the main curve
        runs.append(("random_weights", resolve_backbone(
            arch, "random", config.seed + 1 if config.weights == "random" else config.seed)))
    cache = ActivationCache(root / "activations") if config.use_cache and d.main else None
    images_fp = fingerprint(ds)   # stats every file: once per scan
    rkey = None
    devices = gather(d, str(dev))
    if config.use_cache:
        rkey = result_key(config, arch, layers, ds, runs, images_fp)
        saved = saved_result(cache.store, rkey) if cache is not None else None
        if broadcast(d, saved is not None) and not d.main:
            return None
        if saved is not None:
            cache.close()
            listed = {s.path for s in ds.skipped}   # the loader warned about these already
            for s in saved.skipped:
                if s["path"] not in listed:
                    warnings.warn(f"skipped {s['path']}: {s['reason']}", stacklevel=2)
            if progress:
                progress(1.0, "result from cache")
            return dataclasses.replace(
                saved, config=config, timing={"extract_s": 0.0, "fit_s": 0.0,
                                              "world_size": d.world, "devices": devices},
                cache={"hits": len(layers) * len(runs), "misses": 0, "result": "hit"})
    try:
        feats, records, timing_extract, source = {}, {}, 0.0, backbone.source
        span = 0.85 / len(runs)
        for k, (name, bb) in enumerate(runs):
            rec, f, secs = activations(
                bb, layers, ds, device=dev,
                batch_size=config.batch_size, cache=cache, images_fp=images_fp,
                progress=stage(0.05 + k * span, 0.05 + (k + 1) * span), dist=d)
            feats[name], records[name] = f, rec
            timing_extract += secs
        hits, misses = (cache.hits, cache.misses) if cache else (0, len(layers) * len(runs))
    finally:
        if cache is not None:
            cache.close()
    if not d.main:
        return None

    failed = dict(records["true"].failed)
    for f in failed:
        warnings.warn(f"skipped {ds.samples[f].path}: {failed[f]}", stacklevel=2)
    ok = records["true"].ok
    y = ds.measures[ok]
    lab = labels[ok] if labels is not None else None
    grp = groups[ok] if groups is not None else None
    check_measure(y, lab)

    t0 = time.perf_counter()
    splits = make_splits(len(y), labels=lab, groups=grp, repeats=config.repeats,
                         seed=config.seed, test_size=config.test_size)
    targets = {"true": y}
    if "shuffled" in config.controls:
        targets["shuffled"] = shuffled_targets(y, labels=lab, repeats=config.repeats,
                                               seed=config.seed)
    scores = score_targets(feats["true"], targets, splits, model=config.model,
                           progress=stage(0.9, 0.97))
    controls = {}
    if "shuffled" in scores:
        controls["shuffled"] = tuple(scores["shuffled"][l] for l in layers)
    if "random_weights" in feats:
        rw = feats["random_weights"]
        # the same images: align rows in case the random pass failed on other files (it cannot
        # in practice, reading is independent of weights)
        rw_ok = records["random_weights"].ok
        if not np.array_equal(rw_ok, ok):
            pos = {int(i): j for j, i in enumerate(rw_ok)}
            rw = {l: v[[pos[int(i)] for i in ok]] for l, v in rw.items()}
        rw_scores = score_targets(rw, {"y": y}, splits, model=config.model)["y"]
        controls["random_weights"] = tuple(rw_scores[l] for l in layers)
    fit_s = time.perf_counter() - t0
    if progress:
        progress(1.0, "done")
    skipped = tuple({"path": s.path, "reason": s.reason} for s in ds.skipped) + tuple(
        {"path": ds.samples[i].path, "reason": r} for i, r in records["true"].failed)
    result = ScanResult(config, ds.name, ds.measure_name, int(len(ok)), skipped,
                        tuple(scores["true"][l] for l in layers), controls,
                        {l: arch.depth(l) for l in layers},
                        {"extract_s": round(timing_extract, 3), "fit_s": round(fit_s, 3),
                         "world_size": d.world, "devices": devices},
                        {"hits": int(hits), "misses": int(misses),
                         "result": "miss" if rkey else "off"}, source)
    if rkey is not None:
        with Store(root / "activations") as store:
            store.put_json(rkey, result.to_json())
    return result

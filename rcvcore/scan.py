"""The scale scan: dataset -> pooled activations (cached) -> held-out R² per layer + controls."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plateau as plateaus
from ._cache import ActivationCache, ActivationKey, Store
from ._dist import Dist, barrier, broadcast, gather, init_distributed
from ._extract import FeatureExtractor, extract
from ._shared import (  # noqa: F401 (CONTROLS, CUT_RULES re-exported)
    CONTROLS,
    CUT_RULES,
    Extraction,
    ProgressFn,
    closest,
    resolve_device,
)
from .data import Dataset, load_dataset
from .data.base import default_cache_dir, fingerprint
from .data.boxes import visible_box_fraction
from .errors import Notice, SkippedFile, UserError
from .exclusion import keep_rows
from .models import PRE_SOFTMAX, SOFTMAX, ArchSpec, Backbone, get_arch, resolve_backbone
from .models.pooling import check_token_pool, pooling_name
from .prune import is_full
from .rcv import (
    CORRECTION,
    MODELS,
    PAIRED_TEST,
    PERMUTATION_TEST,
    LayerScore,
    check_measure,
    corrected_paired_t,
    layer_tests,
    make_splits,
    permutation_pvalue,
    permutation_targets,
    score_targets,
    shuffled_targets,
)

LOGITS = (PRE_SOFTMAX, SOFTMAX)


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
    # None: the dataset's default (pooled when its classes are a proxy of the measure, e.g.
    # magnifications in histology; per class otherwise)
    per_class: bool | None = None
    grouped: bool = True                  # False leaks groups across train/test: comparison only
    test_size: float = 0.3
    dataset_options: dict = field(default_factory=dict)  # loader options (--opt KEY=VALUE)
    permutations: int = 200               # permutation test vs shuffled measures (0: none)
    alpha: float = 0.05                   # significance level, after Benjamini-Hochberg
    cut_rule: str = "peak"                # see CUT_RULES
    # image paths left out of every fit, test and choice (e.g. a comparison's test split:
    # rcvcore.exclusion); still extracted, so the activation cache is shared
    exclude: tuple[str, ...] = ()
    # groups (sources, slides, patients) left out the same way: a comparison whose replicates
    # regenerate the dataset per split seed (demo-he's patches) shares groups, not file paths
    exclude_groups: tuple[str, ...] = ()
    # how a transformer's tokens are pooled: "mean" of the patch tokens or "cls" (the class
    # token); CNN and NHWC maps are always averaged over space (rcvcore.models.pooling)
    token_pool: str = "mean"

    def __hash__(self) -> int:
        # frozen, but dataset_options is a dict: hash the JSON form (equal configs, equal hash)
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=repr))

    def validate(self) -> ScanConfig:
        """Return a normalised copy or raise :class:`UserError` naming the bad parameter."""
        spec = get_arch(self.arch)
        check_token_pool(self.token_pool, arch=spec.name,
                         class_token=spec.class_token or not spec.has_tokens)
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
        if not 0 <= int(self.permutations) <= 100_000:
            raise UserError(f"--permutations must be between 0 (no permutation test) and "
                            f"100000, got {self.permutations}.")
        if not 0 < float(self.alpha) < 1:
            raise UserError(f"--alpha must be a significance level in (0, 1), e.g. 0.05; got "
                            f"{self.alpha}.")
        if self.cut_rule not in CUT_RULES:
            raise UserError(f"--cut-rule {self.cut_rule!r}:{closest(self.cut_rule, CUT_RULES)} "
                            f"choose {' or '.join(CUT_RULES)}.")
        from .data.options import check_options

        return dataclasses.replace(self, controls=controls,
                                   dataset_options=check_options(self.dataset_options),
                                   exclude=tuple(sorted({str(p) for p in self.exclude})),
                                   exclude_groups=tuple(sorted({str(g) for g in
                                                                self.exclude_groups})))


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    """R² per layer for the true network, and the controls, with timing and cache counts.

    Built by keyword only (fifteen fields: a positional call would silently shift them).
    """

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
    # layer -> raw test results: "p_shuffled" (permutation test), "statistic" (its observed
    # statistic), "p_random_weights" and "t_random_weights" (paired test); None: not run
    tests: dict[str, dict] = field(default_factory=dict)
    # how the tests were run: "permutations", "permutation_scheme", "test_train_ratio"
    test_info: dict = field(default_factory=dict)
    # how the R² was scored: "per_class", "grouped", "reason" (why per class or pooled)
    scoring: dict = field(default_factory=dict)

    def _tests_run(self) -> tuple[bool, bool]:
        """(permutation test vs shuffled run, paired test vs random weights run)."""
        def ran(key):
            return any(t.get(key) is not None for t in self.tests.values())
        return ran("p_shuffled"), ran("p_random_weights")

    def significance(self) -> dict[str, dict]:
        """Per layer, at ``config.alpha``: each test's raw and Benjamini-Hochberg adjusted
        p-value (each test corrected over all scored layers), and ``significant``: above every
        control that was tested (None when no test was run)."""
        run_sh, run_rw = self._tests_run()
        names = [s.layer for s in self.layers]
        p_sh = {l: self.tests.get(l, {}).get("p_shuffled") for l in names} if run_sh else None
        p_rw = ({l: self.tests.get(l, {}).get("p_random_weights") for l in names}
                if run_rw else None)
        def clean(d):
            return None if d is None else {k: (np.nan if v is None else v) for k, v in d.items()}

        return layer_tests(names, clean(p_sh), clean(p_rw), float(self.config.alpha))

    def full_layers(self) -> set[str]:
        """The scored layers where the network cut is the full network (nothing pruned);
        empty for an architecture this install does not know."""
        try:
            arch = get_arch(self.config.arch)
            return {s.layer for s in self.layers
                    if s.layer not in LOGITS and is_full(arch, s.layer)}
        except UserError:
            return set()

    def suggest_cut(self) -> tuple[str | None, str]:
        """Suggested prune point (None when no layer qualifies) and the reason, in words.

        Rule ``peak`` (default, the paper's): among the probe layers (logits and softmax
        excluded) with a positive mean R² that is significantly above both controls (permutation
        test against shuffled measures, paired test against random weights, Benjamini-Hochberg
        at ``config.alpha``), the one with the highest mean R². Rule ``within-std``: from that
        peak, walk deeper while the next layer is also significant and its mean R² stays within
        one standard deviation (over repeats) of the peak; suggest the last layer reached.
        A test that was not run (its control switched off) is said so and does not filter.
        """
        # a cut at the last feature map prunes nothing (efficientnet_lite0's head): not a cut
        full = self.full_layers()
        cands = [s for s in self.layers if s.layer not in LOGITS and s.layer not in full
                 and np.isfinite(s.mean)]
        if not cands:
            return None, "No scored feature layer (only logits and softmax): no cut to suggest."
        run_sh, run_rw = self._tests_run()
        sig = self.significance()
        ran = [w for w, r in (("a permutation test against shuffled measures", run_sh),
                              ("a paired test against random weights", run_rw)) if r]
        missing = [w for w, r in (("the shuffled-measure permutation test (shuffled control or "
                                   "--permutations 0)", run_sh),
                                  ("the random-weights paired test (random-weights control "
                                   "off)", run_rw)) if not r]
        not_run = (f" Not run: {' and '.join(missing)}; the cut rests only on what was run."
                   if missing else "")
        alpha = float(self.config.alpha)

        def ok(s):
            return s.mean > 0 and (sig[s.layer]["significant"] is not False)

        good = [s for s in cands if ok(s)]
        tested = " and ".join(ran) if ran else "no significance test"
        if not good:
            why = (f"no layer (logits and softmax excluded) has a mean R² above 0 that is "
                   f"significantly above its controls ({tested}, Benjamini-Hochberg at "
                   f"alpha={alpha:g})" if ran else
                   "no layer (logits and softmax excluded) has a mean R² above 0")
            return None, f"No suggested cut: {why}.{not_run}"
        peak = max(good, key=lambda s: s.mean)
        chosen = peak
        if self.config.cut_rule == "earliest-plateau":
            plat = self.plateau()
            by_name = {s.layer: s for s in cands}
            chosen = by_name[plateaus.earliest_on_plateau(list(by_name), plat["layers"],
                                                          lambda name: ok(by_name[name]))]
            return chosen.layer, _plateau_reason(peak, chosen, plat, len(good)) + not_run
        if self.config.cut_rule == "within-std":
            i = cands.index(peak)
            floor = peak.mean - peak.std
            while i + 1 < len(cands) and ok(cands[i + 1]) and cands[i + 1].mean >= floor:
                i += 1
            chosen = cands[i]
        basis = (f"significantly above its controls ({tested}, Benjamini-Hochberg at "
                 f"alpha={alpha:g})" if ran else "with a positive mean R² (untested)")
        if chosen is peak:
            reason = (f"Rule peak: {peak.layer} has the highest mean R² ({peak.mean:.3f} ± "
                      f"{peak.std:.3f}) among the {len(good)} layer(s) {basis}; logits and "
                      "softmax excluded.")
        else:
            reason = (f"Rule within-std: R² peaks at {peak.layer} ({peak.mean:.3f} ± "
                      f"{peak.std:.3f}) among the {len(good)} layer(s) {basis}; "
                      f"{chosen.layer} is the last layer after it still within one std of that "
                      "peak (logits and softmax excluded).")
        return chosen.layer, reason + not_run

    def plateau(self) -> dict | None:
        """The layers (logits and softmax excluded) not significantly below the peak (the
        highest mean R² among the layers significantly above the controls, or among all when
        none is), over the same repeats (:func:`rcvcore.plateau.plateau`); None: no layer."""
        cands = [s for s in self.layers if s.layer not in LOGITS and np.isfinite(s.mean)]
        if not cands:
            return None
        sig = self.significance()
        good = [s for s in cands if s.mean > 0 and sig[s.layer]["significant"] is not False]
        peak = max(good or cands, key=lambda s: s.mean)
        ts = float(self.config.test_size)
        ratio = float(self.test_info.get("test_train_ratio") or ts / (1 - ts))
        return plateaus.plateau(cands, peak.layer, ratio, float(self.config.alpha))

    def peak_frequency(self) -> dict[str, float]:
        """How often each layer (logits and softmax excluded) has the highest R² over the
        repeats (:func:`rcvcore.plateau.peak_frequency`)."""
        return plateaus.peak_frequency([s for s in self.layers if s.layer not in LOGITS])

    def to_json(self) -> dict:
        sig = self.significance()
        run_sh, run_rw = self._tests_run()
        info = dict(self.test_info)

        def layer_sig(name):
            t, s = self.tests.get(name, {}), sig.get(name, {})
            out = {"alpha": float(self.config.alpha), "correction": CORRECTION,
                   "n_layers": len(self.layers), "significant": s.get("significant")}
            if run_sh:
                out["vs_shuffled"] = dict(s.get("shuffled", {}), test=PERMUTATION_TEST,
                                          permutations=info.get("permutations"),
                                          statistic=t.get("statistic"))
            if run_rw:
                out["vs_random_weights"] = dict(s.get("random_weights", {}), test=PAIRED_TEST,
                                                t=t.get("t_random_weights"))
            return out

        def rows(scores, main=False):
            out = []
            for s in scores:
                row = dict(s.to_json(), depth=self.depth.get(s.layer))
                if main:
                    row["significance"] = layer_sig(s.layer)
                    row["significant"] = row["significance"]["significant"]
                out.append(row)
            return out

        cut, reason = self.suggest_cut()
        return {
            "arch": self.config.arch, "weights": self.config.weights, "dataset": self.dataset,
            "n_images": self.n_images, "skipped": [s["path"] for s in self.skipped],
            "skipped_reasons": list(self.skipped),
            "measure": self.measure_name,
            "layers": rows(self.layers, main=True),
            "controls": {"shuffled": rows(self.controls.get("shuffled", ())),
                         "random_weights": rows(self.controls.get("random_weights", ()))},
            "timing": dict(self.timing), "cache": dict(self.cache),
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self.config).items()},
            "weights_source": self.weights_source,
            "suggested_cut": cut, "suggested_cut_rule": self.config.cut_rule,
            "suggested_cut_reason": reason,
            "significance": {
                "alpha": float(self.config.alpha), "correction": CORRECTION,
                "vs_shuffled": ({"test": PERMUTATION_TEST, **info} if run_sh else None),
                "vs_random_weights": ({"test": PAIRED_TEST,
                                       "test_train_ratio": info.get("test_train_ratio")}
                                      if run_rw else None),
                "not_run": [k for k, r in (("vs_shuffled", run_sh),
                                           ("vs_random_weights", run_rw)) if not r],
                # held by a test's entry when one ran; the plateau needs it either way
                **({} if run_sh or run_rw or "test_train_ratio" not in info
                   else {"test_train_ratio": info["test_train_ratio"]})},
            "scoring": dict(self.scoring),
            "plateau": self.plateau(), "peak_frequency": self.peak_frequency(),
        }

    @classmethod
    def from_json(cls, d: dict) -> ScanResult:
        cfg = dict(d.get("config") or {})
        cfg.setdefault("arch", d["arch"])
        cfg.setdefault("weights", d["weights"])
        cfg.setdefault("dataset", d["dataset"])
        for key in ("controls", "exclude", "exclude_groups"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        config = ScanConfig(**{k: v for k, v in cfg.items()
                               if k in {f.name for f in dataclasses.fields(ScanConfig)}})

        def scores(rows):
            return tuple(LayerScore.from_json(r) for r in rows)

        tests = {}
        for r in d["layers"]:
            s = r.get("significance") or {}
            sh, rw = s.get("vs_shuffled") or {}, s.get("vs_random_weights") or {}
            tests[r["name"]] = {"p_shuffled": sh.get("p"), "statistic": sh.get("statistic"),
                                "p_random_weights": rw.get("p"), "t_random_weights": rw.get("t")}
        sig = d.get("significance") or {}
        info = {k: v for k, v in (sig.get("vs_shuffled") or {}).items() if k != "test"}
        for where in (sig.get("vs_random_weights") or {}, sig):
            if where.get("test_train_ratio") is not None:
                info["test_train_ratio"] = where["test_train_ratio"]
        return cls(
            config=config, dataset=d["dataset"], measure_name=d.get("measure", ""),
            n_images=d["n_images"],
            skipped=tuple(d.get("skipped_reasons") or [{"path": p, "reason": ""}
                                                       for p in d.get("skipped", [])]),
            layers=scores(d["layers"]),
            controls={k: scores(v) for k, v in d.get("controls", {}).items() if v},
            depth={r["name"]: r.get("depth") for r in d["layers"]},
            timing=d.get("timing", {}), cache=d.get("cache", {}),
            weights_source=d.get("weights_source", ""), tests=tests, test_info=info,
            scoring=dict(d.get("scoring") or {}))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["kind", "layer", "depth", "n_features", "r2_mean", "r2_std",
                    "r2_logmeanexp", "r2_repeats", "p_shuffled_bh", "p_random_weights_bh",
                    "significant", "on_plateau", "peak_frequency"])
        sig = self.significance()
        plat, freq = self.plateau(), self.peak_frequency()

        def fmt(v):
            return "" if v is None else f"{v:.6g}"

        groups = [("true", self.layers)] + [(k, v) for k, v in self.controls.items()]
        for kind, scores in groups:
            for s in scores:
                extra = ["", "", "", "", ""]
                if kind == "true":
                    t = sig.get(s.layer, {})
                    extra = [fmt(t.get("shuffled", {}).get("p_adjusted")),
                             fmt(t.get("random_weights", {}).get("p_adjusted")),
                             "" if t.get("significant") is None else str(t["significant"]).lower(),
                             "" if plat is None or s.layer not in plat["p_below"]
                             else str(s.layer in plat["layers"]).lower(),
                             fmt(freq.get(s.layer))]
                w.writerow([kind, s.layer, f"{self.depth.get(s.layer, float('nan')):.4f}",
                            s.n_features, f"{s.mean:.6f}", f"{s.std:.6f}",
                            f"{s.logmeanexp:.6f}", ";".join(f"{v:.6f}" for v in s.r2)] + extra)
        return buf.getvalue()


def _plateau_reason(peak: LayerScore, chosen: LayerScore, plat: dict, n_good: int) -> str:
    """Why rule ``earliest-plateau`` picked ``chosen`` (see :meth:`ScanResult.suggest_cut`)."""
    return (f"Rule earliest-plateau: R² peaks at {peak.layer} ({peak.mean:.3f} ± "
            f"{peak.std:.3f}) among the {n_good} layer(s) significantly above the controls; "
            f"the plateau (layers not significantly below the peak: corrected paired t over the "
            f"same {plat['repeats']} repeats, Benjamini-Hochberg at alpha={plat['alpha']:g}) is "
            f"{', '.join(plat['layers'])}; {chosen.layer} ({chosen.mean:.3f}) is its earliest "
            "layer significantly above the controls: the most pruning without a measurable "
            "loss of scale information (logits and softmax excluded).")


#: Bump when a change to the scoring (splits, estimators, controls) changes results.
SCORING_VERSION = 4   # 2: significance tests, group-wise shuffles, min test sizes, box geometry;
#                       3: the permutation test on the reported R² (issue 22)
#                       4: permuted penalties by the float64 search (screened), batched group blocks


def result_key(config: ScanConfig, arch: ArchSpec, layers: list[str], ds: Dataset,
               runs: list[tuple[str, Backbone]], images_fp: str | None = None) -> str:
    """Cache key of a whole scan result: every input of the activations (architecture, weights
    fingerprints, layers, preprocessing, dataset content fingerprint) and of the scoring
    (repeats, model, controls, seed, grouping, per-class, test size), plus the versions.
    ``images_fp``: ``fingerprint(ds)`` when the caller already has it."""
    from . import __version__

    payload = {
        **({"exclude_groups": list(config.exclude_groups)} if config.exclude_groups else {}),
        "arch": arch.name, "layers": list(layers),
        "pooling": "/".join(sorted({pooling_name(arch.layout(n), config.token_pool)
                                    for n in layers})),
        "preprocessing": arch.preprocess.fingerprint, "images": images_fp or fingerprint(ds),
        "weights": [[name, bb.fingerprint] for name, bb in runs],
        "repeats": config.repeats, "model": config.model, "controls": list(config.controls),
        "seed": config.seed, "per_class": config.per_class, "grouped": config.grouped,
        "test_size": config.test_size, "dataset": ds.name, "measure": ds.measure_name,
        "dataset_options": {k: repr(v) for k, v in sorted(config.dataset_options.items())},
        "permutations": config.permutations,   # the p-values depend on it (alpha, cut rule not)
        "exclude": (hashlib.sha256("\n".join(config.exclude).encode()).hexdigest()
                    if config.exclude else None),
        "rcvcore": __version__, "scoring": SCORING_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return RESULT_PREFIX + hashlib.sha256(blob).hexdigest()


#: Key prefix of saved scan results in the cache's store (``cache --clear results``).
RESULT_PREFIX = "scan:"


def saved_result(store, key: str) -> ScanResult | None:
    """The scan result saved under ``key`` in ``store`` (a :class:`rcvcore._cache.Store`), or
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
                cache: ActivationCache | None = None, progress: ProgressFn | None = None,
                images_fp: str | None = None, dist: Dist | None = None,
                token_pool: str = "mean") -> tuple[Extraction | None, float]:
    """Pooled activations of ``layers`` of ``backbone`` for every image of ``ds``; cached layers
    are not recomputed, and all missing layers come from ONE forward pass.

    Under torchrun (``dist`` enabled) rank 0 decides from its cache which layers are missing,
    every rank extracts its shard of the images (every ``world``-th image), and rank 0 gathers
    the pooled activations back in image order; the other ranks get ``(None, seconds)``.
    ``token_pool`` pools a transformer's tokens (:mod:`rcvcore.models.pooling`).

    Returns:
        (every layer of ``layers`` with its ok / failed record, seconds spent extracting).
    """
    pre = backbone.preprocess
    images_fp = images_fp or fingerprint(ds)

    def key(layer):
        return ActivationKey(backbone.arch, backbone.fingerprint, layer,
                             pooling_name(backbone.spec.layout(layer), token_pool),
                             pre.fingerprint, images_fp)

    hit: Extraction | None = None
    missing = []
    for layer in layers:
        entry = cache.get(key(layer), len(ds)) if cache is not None else None
        if entry is not None and (hit is None or hit.same_images(entry)):
            hit = entry if hit is None else hit.merged(entry)
        else:
            missing.append(layer)   # not cached, or cached for other readable images: redo
    sharded = dist is not None and dist.enabled
    if sharded:
        missing = broadcast(dist, missing)   # cache hits are rank 0's, decided before extraction
    seconds = 0.0
    if not missing:
        if progress:
            progress(1.0, "all layers from cache")
        return hit, seconds
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ex = FeatureExtractor(backbone.build(), backbone.spec, missing, device=dev,
                          token_pool=token_pool)
    if sharded:
        out = _extract_sharded(ex, ds, pre, batch_size, progress, dist)
        if out is None:
            return None, time.perf_counter() - t0
    else:
        out = extract(ex, ds.paths, pre, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    if cache is not None:
        for layer in missing:
            cache.put(key(layer), out)
    if hit is not None and not hit.same_images(out):
        # an image read in the cached pass fails now (or the reverse): the cached rows would
        # not align with the fresh ones, so every layer is redone in one pass (here alone:
        # under torchrun only rank 0 has a cache, and it gets here after the gather)
        out, more = activations(backbone, layers, ds, device=device, batch_size=batch_size,
                                images_fp=images_fp, token_pool=token_pool)
        if cache is not None:
            for layer in layers:
                cache.put(key(layer), out)
        return out, seconds + more
    return (out if hit is None else hit.merged(out)), seconds


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


def scoring_mode(config: ScanConfig, ds: Dataset) -> tuple[bool, str]:
    """Whether to fit per class, and why: ``config.per_class`` when given, else the dataset's
    default (pooled when its classes are a proxy of the measure, e.g. magnifications)."""
    if ds.labels is None:
        return False, "pooled: the dataset has no classes"
    if config.per_class is True:
        return True, f"per class ({ds.label_name or 'class'}), as asked"
    if config.per_class is False:
        return False, "pooled, as asked (--no-per-class)"
    if getattr(ds, "pooled_by_default", False):
        return False, (f"pooled by default: the classes ({ds.label_name or 'class'}) of "
                       f"{ds.kind} are a proxy of the measure, so a fit within one class would "
                       "remove the signal being measured (--per-class to force)")
    return True, f"per class ({ds.label_name or 'class'}), the dataset's default"


def seen_measures(ds: Dataset, pre) -> tuple[np.ndarray, str, dict[int, str]]:
    """The measure of each sample as the network sees it.

    For box datasets whose loader recorded the boxes and image sizes (``info["box_geometry"]``,
    ``info["box_measure"] == "visible"``): the largest box's area visible after the weights'
    resize and centre crop (``pre``) divided by the crop's area; samples whose boxes the crop
    hides entirely are returned in the third value (index -> reason) to be left out. Otherwise
    the loader's measure as it is.
    """
    geo = ds.info.get("box_geometry") if isinstance(ds.info, dict) else None
    if not geo or ds.info.get("box_measure", "visible") != "visible":
        return ds.measures, ds.measure_name, {}
    y = ds.measures.copy()
    unseen = {}
    for i, s in enumerate(ds.samples):
        g = geo.get((s.path, s.label))
        if g is None:
            continue
        w, h, boxes = g
        frac = visible_box_fraction(boxes, w, h, resize=pre.resize, crop=pre.crop)
        if not frac:
            unseen[i] = (f"its box lies outside the network's {pre.crop} px centre crop "
                         f"(after resizing to {pre.resize} px)")
        else:
            y[i] = frac
    return y, f"visible_{ds.measure_name}", unseen


def run_scan(config: ScanConfig, progress: ProgressFn | None = None) -> ScanResult | None:
    """Run a scan end to end (see the module docstring); ``progress(fraction, message)``.

    Launched by ``torchrun``, the images are sharded over the processes (one device each) and
    rank 0 alone fits, caches and returns the result; the other ranks return ``None``. The
    processes meet in three phases only: loading the dataset, looking up a saved result, and
    extracting the activations.
    """
    plan = _resolve(config)
    d, dev = init_distributed(plan.config.device)
    progress = progress if d.main else None
    ds = _load(plan, d, _stage(progress, 0.0, 0.05))
    scoring = _scoring(plan, ds)
    images_fp = fingerprint(ds)   # stats every file: once per scan
    devices = gather(d, str(dev))
    rkey = result_key(plan.config, plan.arch, plan.layers, ds, plan.runs,
                      images_fp) if plan.config.use_cache else None
    cache = ActivationCache(plan.root / "activations") if plan.config.use_cache and d.main \
        else None
    try:
        hit, saved = _lookup_result(cache, rkey, d)
        if hit:
            return _replay(saved, plan, ds, d, devices, progress) if d.main else None
        acts, extract_s = _extract(plan, ds, cache, images_fp, dev, d, progress)
        counts = (cache.hits, cache.misses) if cache else (0, len(plan.layers) * len(plan.runs))
    finally:
        if cache is not None:
            cache.close()
    if not d.main:
        return None
    sample = _sample(plan, ds, scoring, acts["true"])
    t0 = time.perf_counter()
    scores = _score(plan, sample, acts, _stage(progress, 0.9, 0.97, "fitting"))
    tests, test_info = _significance(plan, sample, scores)
    fit_s = time.perf_counter() - t0
    if progress:
        progress(1.0, "done")
    result = _assemble(plan, ds, scoring, sample, scores, tests, test_info, acts["true"],
                       timing={"extract_s": round(extract_s, 3), "fit_s": round(fit_s, 3),
                               "world_size": d.world, "devices": devices},
                       cache={"hits": int(counts[0]), "misses": int(counts[1]),
                              "result": "miss" if rkey else "off"})
    if rkey is not None:
        with Store(plan.root / "activations") as store:
            store.put_json(rkey, result.to_json())
    return result


# --------------------------------------------------------------------------------------------
# the phases of run_scan, in order


@dataclass(frozen=True)
class _Plan:
    """What a scan runs, resolved once: the validated config, the architecture and its probe
    layers, the networks to extract from (``("true", backbone)`` and the random-weights
    control), and the cache root."""

    config: ScanConfig
    arch: ArchSpec
    layers: list[str]
    runs: list[tuple[str, Backbone]]
    root: Path

    @property
    def backbone(self) -> Backbone:
        return self.runs[0][1]


@dataclass(frozen=True)
class _Scoring:
    """How the R² is scored: per class or pooled (and why), grouped splits or not."""

    per_class: bool
    reason: str
    labels: np.ndarray | None      # of every sample of the dataset, None when pooled
    groups: np.ndarray | None      # of every sample, None when ungrouped


@dataclass(frozen=True)
class _Sample:
    """The images a scan scores: readable, and (for box measures) with a box the crop shows."""

    ok: np.ndarray                 # dataset indices, in the order of the feature rows
    y: np.ndarray                  # the measure of each
    labels: np.ndarray | None
    groups: np.ndarray | None
    measure_name: str
    unseen: dict[int, str]         # index -> why its box is hidden by the crop
    n_excluded: int = 0            # images left out by ``config.exclude``


@dataclass(frozen=True)
class _Scores:
    """R² per layer of the true network and of each control, on the same splits."""

    true: dict                     # layer -> LayerScore (with its permutation null)
    controls: dict[str, tuple[LayerScore, ...]]
    random_weights: dict | None    # layer -> LayerScore of the random-weights control
    permuted: bool                 # whether a permutation null was scored
    test_train_ratio: float


#: the name of each extraction pass in progress messages (a count restarting at 0 says why)
PASS_NAMES = {"true": "network", "random_weights": "random-weights control"}


def _stage(progress: ProgressFn | None, lo: float, hi: float,
           what: str | None = None) -> ProgressFn | None:
    """``progress`` mapped onto the share ``[lo, hi]`` of the whole scan; its messages start
    with ``what`` (the pass: ``pass 1/2 (network)``, ``fitting``) when given."""
    if progress is None:
        return None
    if what is None:
        return lambda f, msg: progress(lo + (hi - lo) * f, msg)
    return lambda f, msg: progress(lo + (hi - lo) * f, f"{what}: {msg}")


def _resolve(config: ScanConfig) -> _Plan:
    """Validate ``config`` and resolve the networks (fails fast on missing weights)."""
    config = config.validate()
    arch = get_arch(config.arch)
    layers = arch.resolve_layers(config.layers)
    runs = [("true", resolve_backbone(arch, config.weights, config.seed))]
    if "random-weights" in config.controls:
        # scanning random weights already, the control is another random initialisation
        # (seed + 1): the same seed would only repeat the main curve
        runs.append(("random_weights", resolve_backbone(
            arch, "random", config.seed + 1 if config.weights == "random" else config.seed)))
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    return _Plan(config, arch, layers, runs, root)


def _load(plan: _Plan, d: Dist, progress: ProgressFn | None) -> Dataset:
    """The dataset; under torchrun rank 0 loads (and generates demo data into the cache)
    first, then the others read it."""
    config = plan.config
    if not d.main:
        barrier(d)
    with warnings.catch_warnings():
        if not d.main:
            warnings.simplefilter("ignore")   # rank 0 reports skipped files once
        ds = load_dataset(config.dataset, n=config.n, seed=config.seed, cache_dir=plan.root,
                          progress=progress, **config.dataset_options)
    if d.main:
        barrier(d)
    return ds


def _scoring(plan: _Plan, ds: Dataset) -> _Scoring:
    """Per class or pooled, grouped or not; fails before any extraction on an unusable
    measure or too few images."""
    config = plan.config
    per_class, reason = scoring_mode(config, ds)
    labels = ds.labels if per_class else None
    groups = ds.groups if config.grouped else None
    check_measure(ds.measures, labels)
    make_splits(len(ds), labels=labels, groups=groups, repeats=config.repeats, seed=config.seed,
                test_size=config.test_size)
    return _Scoring(per_class, reason, labels, groups)


def _lookup_result(cache: ActivationCache | None, rkey: str | None,
                   d: Dist) -> tuple[bool, ScanResult | None]:
    """Whether rank 0 has this scan's result saved (every rank learns it), and the result."""
    if rkey is None:
        return False, None
    saved = saved_result(cache.store, rkey) if cache is not None else None
    return bool(broadcast(d, saved is not None)), saved


def _replay(saved: ScanResult, plan: _Plan, ds: Dataset, d: Dist, devices: list,
            progress: ProgressFn | None) -> ScanResult:
    """A saved result as this scan's: its skipped files said again, this run's config, timing
    and cache counts."""
    listed = {s.path for s in ds.skipped}   # the loader warned about these already
    for s in saved.skipped:
        if s["path"] not in listed:
            warnings.warn(f"skipped {s['path']}: {s['reason']}", SkippedFile, stacklevel=3)
    if progress:
        progress(1.0, "result from cache")
    return dataclasses.replace(
        saved, config=plan.config,
        timing={"extract_s": 0.0, "fit_s": 0.0, "world_size": d.world, "devices": devices},
        cache={"hits": len(plan.layers) * len(plan.runs), "misses": 0, "result": "hit"})


def _extract(plan: _Plan, ds: Dataset, cache: ActivationCache | None, images_fp: str, dev,
             d: Dist, progress: ProgressFn | None) -> tuple[dict[str, Extraction | None], float]:
    """The pooled activations of every network of the plan (``None`` on ranks > 0), and the
    seconds spent extracting them."""
    acts: dict[str, Extraction | None] = {}
    seconds, span = 0.0, 0.85 / len(plan.runs)
    for k, (name, bb) in enumerate(plan.runs):
        acts[name], secs = activations(
            bb, plan.layers, ds, device=dev, batch_size=plan.config.batch_size, cache=cache,
            images_fp=images_fp, progress=_stage(
                progress, 0.05 + k * span, 0.05 + (k + 1) * span,
                f"pass {k + 1}/{len(plan.runs)} ({PASS_NAMES.get(name, name)})"), dist=d,
            token_pool=plan.config.token_pool)
        seconds += secs
    return acts, seconds


def _sample(plan: _Plan, ds: Dataset, scoring: _Scoring, true: Extraction) -> _Sample:
    """The images to score: the readable ones, minus those whose box the crop hides (each
    left out with a warning) and those ``config.exclude`` names; the measure as the network
    sees it."""
    for i, why in true.failed:
        warnings.warn(f"skipped {ds.samples[i].path}: {why}", SkippedFile, stacklevel=3)
    measures, measure_name, unseen = seen_measures(ds, plan.backbone.preprocess)
    ok = np.asarray(true.ok)
    if unseen:
        for i in (int(i) for i in ok if int(i) in unseen):
            warnings.warn(f"skipped {ds.samples[i].path}: {unseen[i]}", SkippedFile,
                          stacklevel=3)
        ok = np.asarray([int(i) for i in ok if int(i) not in unseen], dtype=int)
    exclude, exclude_groups = plan.config.exclude, plan.config.exclude_groups
    ok, n_excluded = keep_rows(ds.paths, ok, exclude)
    if exclude and not n_excluded:
        warnings.warn(f"--exclude: none of the {len(exclude)} excluded paths is an image "
                      f"of {ds.name}; nothing was left out.", Notice, stacklevel=3)
    if exclude_groups:
        n_before = len(ok)
        ok, _ = keep_rows(ds.groups if ds.groups is not None else ds.paths, ok, exclude_groups)
        n_excluded += n_before - len(ok)
        if n_before == len(ok):
            warnings.warn(f"exclude_groups: none of the {len(exclude_groups)} excluded groups "
                          f"is a group of {ds.name}; nothing was left out.", Notice,
                          stacklevel=3)
    ok = np.asarray(ok, dtype=int)
    labels = scoring.labels[ok] if scoring.labels is not None else None
    groups = scoring.groups[ok] if scoring.groups is not None else None
    check_measure(measures[ok], labels)
    return _Sample(ok, measures[ok], labels, groups, measure_name, unseen, n_excluded)


def _rows(ext: Extraction, ok: np.ndarray) -> dict[str, np.ndarray]:
    """The features of ``ext`` for the images ``ok``, in that order (a file can fail in one
    pass only, and images whose box the crop hides are left out of the sample)."""
    if np.array_equal(ext.ok, ok):
        return ext.features
    pos = {int(i): j for j, i in enumerate(ext.ok)}
    return {layer: v[[pos[int(i)] for i in ok]] for layer, v in ext.features.items()}


def _score(plan: _Plan, sample: _Sample, acts: dict[str, Extraction],
           progress: ProgressFn | None) -> _Scores:
    """R² per layer on the same repeated splits: the true network on the measure (and its
    shuffled control and permutation null), the random-weights network on the measure."""
    config, y = plan.config, sample.y
    splits = make_splits(len(y), labels=sample.labels, groups=sample.groups,
                         repeats=config.repeats, seed=config.seed, test_size=config.test_size)
    targets, null = {"true": y}, None
    if "shuffled" in config.controls:
        targets["shuffled"] = shuffled_targets(y, labels=sample.labels, groups=sample.groups,
                                               repeats=config.repeats, seed=config.seed)
        if config.permutations:
            null = permutation_targets(y, labels=sample.labels, groups=sample.groups,
                                       permutations=config.permutations, seed=config.seed)
    scores = score_targets(_rows(acts["true"], sample.ok), targets, splits, model=config.model,
                           progress=progress, null=null, null_target="true")
    controls, rw = {}, None
    if "shuffled" in scores:
        controls["shuffled"] = tuple(scores["shuffled"][l] for l in plan.layers)
    if "random_weights" in acts:
        rw = score_targets(_rows(acts["random_weights"], sample.ok), {"y": y}, splits,
                           model=config.model)["y"]
        controls["random_weights"] = tuple(rw[l] for l in plan.layers)
    ratio = float(np.mean([len(s.test) for s in splits]) / np.mean([len(s.train) for s in splits]))
    return _Scores(scores["true"], controls, rw, null is not None, ratio)


def _significance(plan: _Plan, sample: _Sample, scores: _Scores) -> tuple[dict, dict]:
    """Per layer: the permutation test against shuffled measures and the corrected paired test
    against random weights (raw p-values; :meth:`ScanResult.significance` adjusts them), and
    how they were run."""
    def finite(v):
        return None if not np.isfinite(v) else v

    tests = {}
    for l in plan.layers:
        t = scores.true[l]
        entry = {"p_shuffled": None, "statistic": None, "p_random_weights": None,
                 "t_random_weights": None}
        if scores.permuted:
            entry["statistic"] = t.null_observed
            entry["p_shuffled"] = finite(permutation_pvalue(t.null_observed, t.null))
        if scores.random_weights is not None:
            tt, p = corrected_paired_t(t.r2, scores.random_weights[l].r2,
                                       scores.test_train_ratio)
            entry["t_random_weights"], entry["p_random_weights"] = finite(tt), finite(p)
        tests[l] = entry
    info = {"test_train_ratio": round(scores.test_train_ratio, 6)}
    if scores.permuted:
        info.update({
            "permutations": int(plan.config.permutations),
            "permutation_scheme": ("whole groups of equal size exchanged, images shuffled within "
                                   "groups" if sample.groups is not None else "images shuffled")
                                  + (", within class" if sample.labels is not None else ""),
            "statistic": "mean over repeats of held-out R² (the reported R²), penalty chosen "
                         "on the training split (OLS: none), the same for the measure and "
                         "every permutation"})
    return tests, info


def _assemble(plan: _Plan, ds: Dataset, scoring: _Scoring, sample: _Sample, scores: _Scores,
              tests: dict, test_info: dict, true: Extraction, *, timing: dict,
              cache: dict) -> ScanResult:
    """The :class:`ScanResult` of a computed scan."""
    read = {int(j) for j in true.ok}
    skipped = (tuple({"path": s.path, "reason": s.reason} for s in ds.skipped)
               + tuple({"path": ds.samples[i].path, "reason": r} for i, r in true.failed)
               + tuple({"path": ds.samples[i].path, "reason": sample.unseen[i]}
                       for i in sorted(sample.unseen) if i in read))
    return ScanResult(
        config=plan.config, dataset=ds.name, measure_name=sample.measure_name,
        n_images=int(len(sample.ok)), skipped=skipped,
        layers=tuple(scores.true[l] for l in plan.layers), controls=scores.controls,
        depth={l: plan.arch.depth(l) for l in plan.layers}, timing=timing, cache=cache,
        weights_source=plan.backbone.source, tests=tests, test_info=test_info,
        scoring={"per_class": bool(sample.labels is not None),
                 "grouped": bool(sample.groups is not None), "reason": scoring.reason,
                 "excluded": sample.n_excluded})

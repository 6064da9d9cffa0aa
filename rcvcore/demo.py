"""The transfer demo on real H&E, on a fresh machine: EfficientNet-Lite0 with the ImageNet weights
of its pip package, on ``demo-he`` (real H&E patches at four magnifications, see
:mod:`rcvcore.data.demo_he`).

- :func:`demo_model_config` / :func:`launch_demo_model`: the run behind the Predict page's
  *Train the demo model* button (and ``python -m rcvcore demo model``): the network cut at
  :data:`DEMO_CUT`, a magnification head started at its closed-form fit, a few epochs.
- :func:`demo_model_cut` (``python -m rcvcore demo cut``): how :data:`DEMO_CUT` is chosen,
  with none of the demo model's test patches in the scan.
- :func:`held_out_patches`: the test-split patches of a finished run, which it never saw.
- :func:`transfer_demo` (``python -m rcvcore demo transfer``): the paper's three steps at demo
  size: scan the network on ``demo-he`` without the test patches of any replicate (both
  controls, significance), cut where the scan suggests (by the named fallback rule
  :data:`FALLBACK_RULE` when nothing is significant, said so), compare the full and the cut
  network over replicates, each on its own group split, Table 2 with paired tests over splits.

The settings (:data:`DEMO_SETTINGS`: the paper's optimisation, at demo-he's 112-px patch size)
let the comparison of 10 seeds (the paper's count) finish well within 15 minutes on a 2-core
CPU; BENCHMARKS.md records what they measured.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ._files import read_json
from ._shared import DEMO_CUT, DEMO_SETTINGS, ProgressFn  # noqa: F401 (re-exported)
from .compare import compare, comparison_test_groups, resolve_seeds
from .comparison import Comparison
from .data import load_dataset
from .errors import UserError
from .rcv import distinct_splits
from .runs.config import TrainConfig
from .runs.directory import RESULT, clear_run_dir, read_run, runs_root
from .runs.process import launch
from .scan import ScanConfig, run_scan

DEMO_ARCH = "efficientnet_lite0"
DEMO_DATASET = "demo-he"
#: DEMO_CUT (in rcvcore._shared, for a torch-free ``--help``): where the Predict page's demo
#: model is cut, as :func:`demo_model_cut` derives it (a demo-he scan of efficientnet_lite0 that
#: saw none of the model's test source images; nothing significant there, so the fallback rule
#: :data:`FALLBACK_RULE`); DEMO_SETTINGS: its training settings
DEMO_MODEL_DIR = "demo-model"
DEMO_TRANSFER_DIR = "demo-transfer"
#: the transfer demo's cut when no layer of its (test-free) scan is significant: the highest mean
#: R² of that scan, untested
FALLBACK_RULE = "untested-peak"
#: how the transfer demo chooses its cut: ``union`` (one scan without every replicate's test
#: split, one cut for all) or ``per-replicate`` (nested: one scan per replicate without only its
#: own test split, each replicate cut at its own scan's choice; Table 2 then compares the full
#: network with the whole procedure scan -> cut -> train)
CUT_CHOICES = ("union", "per-replicate")
#: the Table 2 row (and run-folder prefix) of the per-replicate cut
PER_REPLICATE_ROW = "scan-cut"


def demo_model_config(**over) -> TrainConfig:
    """The demo model's run: efficientnet_lite0 (ImageNet) cut at :data:`DEMO_CUT`, classifying
    the magnification of ``demo-he`` patches (recommended protocol: the head starts at its
    closed-form fit)."""
    base = TrainConfig(arch=DEMO_ARCH, weights="imagenet", cut=DEMO_CUT, dataset=DEMO_DATASET,
                       target="magnification", log_every=1, **DEMO_SETTINGS)
    return dataclasses.replace(base, **over) if over else base


def demo_model_dir(root=None) -> Path:
    """``<runs root>/demo-model``."""
    return runs_root(root) / DEMO_MODEL_DIR


def demo_model_next(run) -> str:
    """What training the demo model in ``run`` means now: ``done`` (leave it), ``resume`` (a
    cancelled or interrupted run with its configuration) or ``fresh`` (none yet, or a failed
    one: start afresh).

    Raises:
        UserError: it is training now.
    """
    st = read_run(run) if Path(run).is_dir() else None
    if st is None:
        return "fresh"
    if st.state == "done":
        return "done"
    if st.state == "running":
        raise UserError(f"The demo model is already training in {run}.")
    return "resume" if st.state in ("cancelled", "interrupted") and st.config else "fresh"


def launch_demo_model(root=None, *, env: dict | None = None):
    """Start the demo model's run as a run process (``python -m rcvcore train``) in
    :func:`demo_model_dir` as :func:`demo_model_next` says (returns None when it is done)."""
    run = demo_model_dir(root)
    step = demo_model_next(run)
    if step == "done":
        return None
    if step == "resume":
        return launch(None, run, resume=True, env=env)
    if run.is_dir():
        clear_run_dir(run)
    return launch(demo_model_config().validate(), run, env=env)


@dataclass(frozen=True)
class HeldOut:
    """A test-split patch of a run (never seen in its training or validation)."""

    path: str
    label: str | None
    measure: float | None


def held_out_patches(run_dir, limit: int | None = None) -> list[HeldOut]:
    """The test patches of a finished run (``result.json``), at most ``limit``, spread over the
    classes (one of each class in turn)."""
    res = read_json(Path(run_dir) / RESULT) or {}
    task = res.get("task") or {}
    classes = task.get("classes") or []
    out = []
    for p in res.get("test_predictions", []):
        label = p.get("label")
        if label is None and task.get("kind") == "classification" and classes:
            label = classes[int(p["target"])]
        measure = p.get("measure", p["target"] if task.get("kind") == "regression" else None)
        out.append(HeldOut(p["path"], label, measure))
    if limit is None or len(out) <= limit:
        return out
    by_class: dict = {}
    for h in out:
        by_class.setdefault(h.label, []).append(h)
    picked = []
    while len(picked) < limit:
        for items in by_class.values():
            if items and len(picked) < limit:
                picked.append(items.pop(0))
    return picked


def _scan_repeats(held, n_seeds: int) -> int:
    """The test-free scan's repeats: the scan's default, or fewer when the source images that
    are in no replicate's test split allow fewer distinct splits (many replicates leave few)."""
    groups = load_dataset(DEMO_DATASET).groups
    left = len(set(map(str, groups)) - set(held)) if groups is not None else 0
    if left < 3:
        raise UserError(f"demo transfer: only {left} source images of {DEMO_DATASET} are in no "
                        f"replicate's test split over {n_seeds} seeds; the scan that chooses "
                        "the cut needs at least 3. Use fewer --seeds, or give --cut.")
    return min(ScanConfig.repeats, distinct_splits(left, ScanConfig.test_size))


def choose_cut(base: TrainConfig, seeds, replicate: str = "split",
               progress: ProgressFn | None = None) -> dict:
    """The cut of ``base``'s network on demo-he chosen with no test data: scan it (all layers,
    both controls) without every patch of the source images (groups) that hold the test patches
    of any replicate ``seeds`` of ``base`` (:func:`rcvcore.compare.comparison_test_groups`,
    ``replicate`` as in :func:`rcvcore.compare.compare`), take the scan's suggested cut, or, when
    no layer of that scan is significant against its controls, the named fallback rule
    :data:`FALLBACK_RULE` (the highest mean R² of the same scan: still no test data, but
    untested), said so.

    Returns:
        ``{"cut", "how", "rule", "scan": {layer: mean R²}, "excluded", "excluded_groups",
        "scanned", "plateau"}``.
    """
    def say(frac, msg):
        if progress:
            progress(frac, msg)

    say(0.0, f"scanning {base.arch} on {DEMO_DATASET} without any test split of "
             f"{len(seeds)} replicate(s)")
    # by group: every replicate regenerates demo-he's patches under its own split seed (other
    # file paths), but from the same source images
    held = comparison_test_groups(base, seeds, replicate=replicate)
    result = run_scan(ScanConfig(arch=base.arch, weights=base.weights, dataset=DEMO_DATASET,
                                 layers="all", exclude_groups=held,
                                 repeats=_scan_repeats(held, len(seeds))),
                      progress=lambda f, m: say(f, f"scan: {m}"))
    cut, why = result.suggest_cut()
    info = {"scan": {s.layer: s.mean for s in result.layers},
            "excluded": int(result.scoring.get("excluded", 0)), "plateau": result.plateau(),
            "excluded_groups": len(held), "scanned": int(result.n_images)}
    if cut is None:
        feature = [s for s in result.layers if s.layer not in ("pre_softmax", "softmax")
                   and s.layer not in result.full_layers()]
        cut = max(feature, key=lambda s: s.mean).layer
        info["rule"] = FALLBACK_RULE
        info["how"] = (f"no layer qualifies in the scan that saw no test patch ({why}); "
                       f"fallback rule {FALLBACK_RULE}: cut at the highest mean R² of that "
                       f"scan, {cut} (no test data used, but not significant)")
    else:
        info["rule"] = result.config.cut_rule
        info["how"] = f"the scan's suggested cut (no test patch scanned): {why}"
    info["cut"] = cut
    return info


def demo_model_cut(progress: ProgressFn | None = None) -> dict:
    """How :data:`DEMO_CUT` is chosen (``python -m rcvcore demo cut``): :func:`choose_cut` for
    the demo model's run (:func:`demo_model_config`, its one split), so the Predict page's
    held-out patches were in no scan that chose the cut. tests/test_demo.py checks that the
    constant is what this derives."""
    cfg = demo_model_config()
    return choose_cut(cfg, [cfg.seed], replicate="seed", progress=progress)


def transfer_demo(root=None, *, seeds=10, cut: str | None = None, parallel: int | None = None,
                  progress: ProgressFn | None = None, cut_choice: str = "union",
                  **over) -> tuple[Comparison, dict]:
    """Scan -> cut -> compare on ``demo-he`` (see the module docstring), with no test data in
    the choice of the cut.

    Every replicate (seed) of the comparison trains on its own group split of demo-he
    (:mod:`rcvcore.evidence`); the scan leaves out every patch of the source images (groups)
    that hold any replicate's test patches
    (:func:`rcvcore.compare.comparison_test_groups`), so it saw only groups that no replicate
    is scored on. When no layer of that scan is significant against its controls, the demo says
    so and cuts by the named fallback rule :data:`FALLBACK_RULE` (the highest mean R² of the
    same scan: still no test data, but untested).

    With ``cut_choice="per-replicate"`` (nested) every replicate gets its own scan, without only
    its own test split's source images, and is cut where that scan says (same rules); Table 2's
    second row (:data:`PER_REPLICATE_ROW`) is then each replicate at its own cut: the whole
    procedure against the full network, each scan keeping far more images than the union allows.

    Args:
        root: runs root; the comparison goes to ``<root>/demo-transfer``.
        seeds: count or list of seeds (replicates).
        cut: skip the choice and cut here.
        cut_choice: one of :data:`CUT_CHOICES` (ignored with ``cut``).
        parallel: runs at a time in subprocesses (None: one after the other here).
        over: overrides of the comparison's :class:`TrainConfig` (e.g. ``epochs=1``).

    Returns:
        ``(comparison, info)``, ``info`` saying how the cut was chosen: ``{"cut", "how", "rule",
        "scan": {layer: mean R²}, "excluded", "excluded_groups", "scanned", "plateau"}``; per
        replicate, ``{"cut": "scan-cut", "how", "rule": "per-replicate", "per_seed": {seed: that
        replicate's choice as above}}``.
    """
    if cut_choice not in CUT_CHOICES:
        raise UserError(f"--cut-choice {cut_choice!r}: choose {' or '.join(CUT_CHOICES)}.")
    def say(frac, msg):
        if progress:
            progress(frac, msg)

    base = TrainConfig(**{"arch": DEMO_ARCH, "weights": "imagenet", "dataset": DEMO_DATASET,
                          "target": "nuclei-area", "log_every": 5, **DEMO_SETTINGS, **over})
    seeds = resolve_seeds(seeds, base.seed)
    cut_of = None
    if cut is None and cut_choice == "per-replicate":
        per_seed = {}
        for i, seed in enumerate(seeds):
            per_seed[seed] = choose_cut(
                base, [seed], replicate="split",
                progress=lambda f, m, i=i: say(0.2 * (i + f) / len(seeds),
                                               f"[replicate {i + 1}/{len(seeds)}] {m}"))
        cut = PER_REPLICATE_ROW
        cut_of = {cut: {s: c["cut"] for s, c in per_seed.items()}}
        fell_back = sum(1 for c in per_seed.values() if c["rule"] == FALLBACK_RULE)
        info = {"rule": "per-replicate", "per_seed": per_seed,
                "how": (f"each of {len(seeds)} replicates cut where its own scan (without only "
                        f"its test split's source images) says: "
                        + ", ".join(f"seed {s} {c['cut']}" for s, c in per_seed.items())
                        + f"; {fell_back} of {len(seeds)} by the fallback rule {FALLBACK_RULE} "
                        "(no layer significant in that scan)")}
    elif cut is None:
        info = choose_cut(base, seeds, replicate="split",
                          progress=lambda f, m: say(0.1 * f, m))
        cut = info["cut"]
        if info["rule"] == FALLBACK_RULE and len(seeds) > 1:
            info["how"] += (f"; the union of {len(seeds)} replicates' test splits left this "
                            f"scan {info['scanned']} images: --cut-choice per-replicate scans "
                            "each replicate without only its own test split")
    else:
        info = {"rule": "given", "how": "given"}
    info["cut"] = cut
    start = 0.2 if cut_of else 0.1
    comp = compare(base, ["none", cut], seeds, runs_root(root) / DEMO_TRANSFER_DIR,
                   parallel=parallel, replicate="split", cut_of=cut_of,
                   progress=lambda f, m: say(start + (1 - start) * f, m))
    return comp, info

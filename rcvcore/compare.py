"""Compare cuts over replicates: the paper's Table 2, replicated over data.

Each (cut, seed) pair is one ordinary run directory ``RUN_DIR/<cut>_seed<seed>`` (the layout of
a run group, :mod:`rcvcore.runs`). A seed is a replicate: by default (``replicate="split"``) its
own group split (split seed = seed, :func:`rcvcore.evidence.replicate_config`), shared by every
cut of that seed, so the runs pair across cuts on the same images (same head initialisation
seed, same data order) and the spread over seeds includes the data. ``replicate="seed"`` keeps
``split_seed`` for every seed (the former behaviour; its differences are not tested). Finished
runs are reused (when trained on the same split), interrupted ones resumed, so a killed
``compare`` continues where it stopped.

By default the runs train one after the other in this process; ``parallel=N`` plans them as a
run group and starts them as subprocesses, N at a time, with the dashboard's scheduler.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._shared import NONE, ProgressFn
from ._utils import callable_module
from .comparison import COMPARISON, Comparison, model_label, paired_tests, summarise  # noqa: F401
from .data import load_dataset
from .errors import UserError
from .evidence import check_cut_of, check_replicate, replicate_config, split_of
from .runs.config import TrainConfig
from .runs.directory import RESULT, read_run
from .runs.groups import group_runs, plan_group, read_comparison, run_dir_of
from .runs.scheduler import Scheduler
from .train.data import split_dataset
from .train.loop import train


def resolve_seeds(seeds, base_seed: int) -> list[int]:
    """``3`` -> three seeds from ``base_seed``; ``"1,2,3"`` / ``[1, 2, 3]`` -> those seeds."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {seeds}.")
        return [base_seed + i for i in range(seeds)]
    if isinstance(seeds, str):
        parts = [s.strip() for s in seeds.split(",") if s.strip()]
        try:
            vals = [int(s) for s in parts]
        except ValueError:
            raise UserError(f"--seeds {seeds!r}: give a count (3) or a list (1001,1002).") \
                from None
        if len(vals) == 1 and "," not in seeds:
            return resolve_seeds(vals[0], base_seed)
        return list(dict.fromkeys(vals))
    return list(dict.fromkeys(int(s) for s in seeds))


def _parse_cuts(cuts) -> list[str]:
    cuts = [c.strip() for c in cuts.split(",")] if isinstance(cuts, str) else list(cuts)
    cuts = [NONE if c == "full" else c for c in cuts if c]
    if not cuts:
        raise UserError("--cuts is empty; give e.g. none,add_15.")
    twice = sorted({c for c in cuts if cuts.count(c) > 1})
    if twice:
        raise UserError(f"--cuts {','.join(cuts)} names {', '.join(twice)} twice: a "
                        "comparison needs different models; give e.g. none,add_15.")
    return cuts


def compare(base: TrainConfig, cuts, seeds, run_dir, *, progress: ProgressFn | None = None,
            dataset=None, parallel: int | None = None, replicate: str = "split",
            cut_of: dict | None = None) -> Comparison:
    """Train every cut of ``cuts`` for every seed and summarise (``comparison.json``).

    Args:
        base: configuration shared by all runs (``cut`` and ``seed`` are replaced).
        cuts: list or comma-separated string (``none,add_15``); the first is the baseline of
            the paired tests.
        seeds: count (seeds ``base.seed``, ``base.seed + 1`` ...) or explicit list.
        run_dir: the comparison directory; each run goes to ``<cut>_seed<seed>`` inside.
        progress: optional ``progress(fraction, message)``.
        dataset: optional already loaded :class:`rcvcore.data.Dataset` (see ``train``; not with
            ``parallel``, whose runs are separate processes that load ``base.dataset``).
        parallel: train as a run group, this many runs at a time in subprocesses (None: one
            after the other in this process).
        replicate: ``"split"`` (each seed its own group split) or ``"seed"`` (one split).
        cut_of: rows whose layer is chosen per replicate, ``{row: {seed: layer}}`` (e.g. a cut
            chosen by a scan without that replicate's test split): ``row`` is then a name in
            ``cuts`` (and the runs' folder prefix), each replicate cut at its own layer.
    """
    cuts = _parse_cuts(cuts)
    seeds = resolve_seeds(seeds, base.seed)
    check_replicate(replicate)
    cut_of = check_cut_of(base, cuts, seeds, cut_of)      # and every layer of every run
    if (dataset is not None and replicate == "split" and len(seeds) > 1
            and any(smp.split for smp in dataset.samples)):
        raise UserError("compare(dataset=...) was given a dataset that fixes its split, the same "
                        "for every seed; replicates over splits need the dataset loaded per "
                        "seed: pass no dataset, or replicate='seed'.")
    root = Path(run_dir)
    if parallel is not None:
        if dataset is not None:
            raise UserError("compare(parallel=...) trains in subprocesses, which load "
                            "base.dataset; do not pass an in-memory dataset.")
        return _compare_group(base, cuts, seeds, root, int(parallel), progress, replicate,
                              cut_of)
    root.mkdir(parents=True, exist_ok=True)
    total = len(cuts) * len(seeds)
    results: dict[tuple[str, int], dict | None] = {}
    states: dict[tuple[str, int], str] = {}
    state = "done"
    k = 0
    for seed in seeds:          # seed-major: an interrupted comparison still has paired runs
        for cut in cuts:
            sub = run_dir_of(root, cut, seed)
            cfg = replicate_config(base, cut, seed, replicate, cut_of)

            def sub_progress(f, msg, k=k, cut=cut, seed=seed):
                if progress:
                    progress((k + f) / total, f"[{cut} seed {seed}] {msg}")

            st = read_run(sub)
            _check_same_split(st, cfg, sub)
            if st.state == "done" and st.result is not None:
                res = st.result
            else:
                try:
                    r = train(cfg, sub, resume=st.config is not None, progress=sub_progress,
                              dataset=dataset)
                    res = r.result
                    if r.state == "cancelled":
                        state = "cancelled"
                except UserError:
                    raise
                except Exception as e:  # a failed run is recorded; the others still count
                    res = None
                    states[(cut, seed)] = f"failed: {e}"
            results[(cut, seed)] = res
            states.setdefault((cut, seed), read_run(sub).state)
            k += 1
            if state == "cancelled":
                break
        if state == "cancelled":
            break
    comp = summarise(base, cuts, seeds, results, states, root, state, cut_of=cut_of)
    comp.save()
    return comp


def _check_same_split(st, cfg: TrainConfig, sub: Path) -> None:
    """A run found in the comparison's folder must have been trained on ``cfg``'s split and
    cut (a row cut per replicate names its folders by the row, not the layer)."""
    if st.config is None:
        return
    if st.config.get("cut") is not None and st.config.get("cut") != cfg.cut:
        raise UserError(f"{sub} was cut at {st.config.get('cut')}, this comparison cuts that "
                        f"replicate at {cfg.cut} (its scan chose another layer); compare into a "
                        "new folder, or remove that run.")
    if split_of(st.config) != split_of(cfg.to_dict()):
        was = st.config.get("split_seed"), (st.config.get("dataset_options") or {})
        raise UserError(f"{sub} was trained on another data split than this comparison's "
                        f"(split seed {was[0]}, dataset options {was[1]}); compare into a new "
                        "folder, or pass the replicate mode it was made with (--replicate "
                        "seed).")


def comparison_test_paths(base, seeds, replicate: str = "split") -> tuple[str, ...]:
    """The test images of every replicate of a comparison of ``base`` over ``seeds``, computed
    with the runs' own loading and splitting (no training)."""
    return comparison_test_sets(base, seeds, replicate)[0]


def comparison_test_groups(base, seeds, replicate: str = "split") -> tuple[str, ...]:
    """The groups (source images, slides, patients) of every replicate's test images; a dataset
    without groups names each image by its path. A dataset that is regenerated per split seed
    (demo-he's patches) has other file paths in every replicate but the same groups, so a scan
    leaves these out (``ScanConfig.exclude_groups``), not the paths."""
    return comparison_test_sets(base, seeds, replicate)[1]


def comparison_test_sets(base, seeds, replicate: str = "split"
                         ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(paths, groups)`` of the test images of every replicate (see above)."""
    paths: set[str] = set()
    groups: set[str] = set()
    for seed in seeds:
        cfg = replicate_config(base, base.cut, seed, replicate)
        ds = load_dataset(cfg.dataset, n=cfg.n, seed=cfg.split_seed,
                          cache_dir=cfg.dataset_cache_dir, **cfg.dataset_options)
        test = split_dataset(ds, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)["test"]
        named = ds.groups if ds.groups is not None else np.asarray(ds.paths)
        paths.update(ds.paths[i] for i in test)
        groups.update(str(named[i]) for i in test)
    return tuple(sorted(paths)), tuple(sorted(groups))


def _compare_group(base: TrainConfig, cuts: list[str], seeds: list[int], root: Path,
                   parallel: int, progress, replicate: str = "split",
                   cut_of: dict | None = None) -> Comparison:
    """``compare(parallel=N)``: plan the runs as a group and drive it until every run ended."""
    for seed in seeds:
        for cut in cuts:
            sub = run_dir_of(root, cut, seed)
            if sub.is_dir():
                _check_same_split(read_run(sub),
                                  replicate_config(base, cut, seed, replicate, cut_of), sub)
    plan_group(root, base, cuts, seeds, parallel, replicate=replicate, cut_of=cut_of)
    # as the sequential compare: a run that ended without finishing is resumed once
    retry = {str(d) for *_, d, st in group_runs(root)
             if st is not None and st.state in ("interrupted", "cancelled", "failed")}
    sched = Scheduler()
    try:
        state = sched.wait(root, resume=retry, progress=progress)
    except KeyboardInterrupt:   # Ctrl-C: every run checkpoints and stops (resumable)
        sched.cancel_group(root, wait=120)
        state = "cancelled"
    results, states = {}, {}
    for seed in seeds:
        for cut in cuts:
            st = read_run(run_dir_of(root, cut, seed))
            results[(cut, seed)] = st.result if st.state == "done" else None
            states[(cut, seed)] = st.state
    comp = summarise(base, cuts, seeds, results, states, root, state, cut_of=cut_of)
    comp.save()     # also when no run finished: the states say why
    return comp


__all__ = ["Comparison", "compare", "summarise", "paired_tests", "resolve_seeds",
           "read_comparison", "model_label", "COMPARISON", "RESULT"]

callable_module(__name__, compare)   # rcvcore.compare(...) is compare(...)

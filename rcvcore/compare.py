"""Compare cuts over seeds on identical splits: the paper's Table 2.

Each (cut, seed) pair is one ordinary run directory ``RUN_DIR/<cut>_seed<seed>``; splits depend on
``split_seed`` only, so every run of every cut sees the same train/val/test images and the seeds
pair the runs across cuts (same head initialisation seed, same data order). Finished runs are
reused, interrupted ones resumed, so a killed ``compare`` continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.base import ProgressFn
from .errors import UserError
from .train import RESULT, TrainConfig, read_run, train, write_json_atomic

COMPARISON = "comparison.json"
METRIC_LABELS = {"mae": "MAE (px)", "r2": "R2", "kappa": "kappa", "kappa_quadratic": "QWK",
                 "accuracy": "accuracy"}
ARCH_LABELS = {"resnet50": "ResNet50", "inception_v3": "InceptionV3", "resnet18": "ResNet18"}


@dataclass(frozen=True)
class Comparison:
    """Summary of a comparison (``comparison.json``).

    Attributes:
        rows: one per cut: ``{"cut", "label", "n", "metrics": {metric: {"mean", "std",
            "values"}}, "seeds", "states"}``; std is the sample std (ddof=1) over seeds.
        tests: one per cut after the first (the baseline): ``{"cut", "baseline",
            "metrics": {metric: {"n", "t_stat", "t_p", "wilcoxon_p"}}}``, paired by seed.
    """

    run_dir: str
    base: dict
    cuts: tuple[str, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    rows: tuple[dict, ...]
    tests: tuple[dict, ...]
    state: str = "done"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["table"] = self.table()
        return d

    def save(self) -> Path:
        """Write ``comparison.json`` into the comparison directory (atomically)."""
        path = Path(self.run_dir) / COMPARISON
        write_json_atomic(path, self.to_dict())
        return path

    def table(self) -> str:
        """Text table in the layout of the paper's Table 2: mean (std) over seeds per model."""
        heads = ["Model"] + [METRIC_LABELS.get(m, m) for m in self.metrics]
        lines = []
        for r in self.rows:
            cells = [r["label"] + ("" if r["n"] == len(self.seeds) else f" [{r['n']} runs]")]
            for m in self.metrics:
                s = r["metrics"].get(m)
                if not s or s["mean"] is None:
                    cells.append("-")
                else:
                    f = ".2f" if m == "mae" else ".3f"
                    std = "-" if s["std"] is None else format(s["std"], f)
                    cells.append(f"{format(s['mean'], f)} ({std})")
            lines.append(cells)
        for t in self.tests:
            cells = [f"paired t / Wilcoxon p, {t['cut']} vs {t['baseline']}"]
            for m in self.metrics:
                s = t["metrics"].get(m, {})
                tp, wp = s.get("t_p"), s.get("wilcoxon_p")
                cells.append("-" if tp is None and wp is None else
                             f"{_fmt_p(tp)} / {_fmt_p(wp)}")
            lines.append(cells)
        widths = [max(len(x[i]) for x in [heads] + lines) for i in range(len(heads))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa
        rule = "-" * len(fmt(heads))
        return "\n".join([fmt(heads), rule] + [fmt(x) for x in lines])


def _fmt_p(p):
    return "-" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _label(arch: str, cut: str) -> str:
    name = ARCH_LABELS.get(arch, arch)
    return name if cut in ("none", "full", "") else f"{name} pruned at {cut}"


def _stats(values: list[float]) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "values": values}


def paired_tests(a: list, b: list) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``b`` against ``a`` (pairs with a missing
    value are dropped; p is None with fewer than 2 pairs or no differences)."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    out = {"n": len(pairs), "t_stat": None, "t_p": None, "wilcoxon_p": None}
    if len(pairs) < 2:
        return out
    x, y = np.asarray(pairs, float).T
    if np.allclose(x, y):
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = stats.ttest_rel(y, x)
        out["t_stat"] = _finite(t.statistic)
        out["t_p"] = _finite(t.pvalue)
        try:
            out["wilcoxon_p"] = _finite(stats.wilcoxon(y, x).pvalue)
        except ValueError:
            pass
    return out


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


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


def compare(base: TrainConfig, cuts, seeds, run_dir, *, progress: ProgressFn | None = None,
            dataset=None) -> Comparison:
    """Train every cut of ``cuts`` for every seed and summarise (``comparison.json``).

    Args:
        base: configuration shared by all runs (``cut`` and ``seed`` are replaced).
        cuts: list or comma-separated string (``none,add_15``); the first is the baseline of
            the paired tests.
        seeds: count (seeds ``base.seed``, ``base.seed + 1`` ...) or explicit list.
        run_dir: the comparison directory; each run goes to ``<cut>_seed<seed>`` inside.
        progress: optional ``progress(fraction, message)``.
        dataset: optional already loaded :class:`rcvcore.data.Dataset` (see ``train``).
    """
    cuts = [c.strip() for c in cuts.split(",")] if isinstance(cuts, str) else list(cuts)
    cuts = [c for c in dict.fromkeys(cuts) if c]
    if not cuts:
        raise UserError("--cuts is empty; give e.g. none,add_15.")
    seeds = resolve_seeds(seeds, base.seed)
    for c in cuts:
        dataclasses.replace(base, cut=c).validate()
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    total = len(cuts) * len(seeds)
    results: dict[tuple[str, int], dict | None] = {}
    states: dict[tuple[str, int], str] = {}
    state = "done"
    k = 0
    for seed in seeds:          # seed-major: an interrupted comparison still has paired runs
        for cut in cuts:
            sub = root / f"{cut}_seed{seed}"
            cfg = dataclasses.replace(base, cut=cut, seed=seed)

            def sub_progress(f, msg, k=k, cut=cut, seed=seed):
                if progress:
                    progress((k + f) / total, f"[{cut} seed {seed}] {msg}")

            st = read_run(sub)
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
    comp = summarise(base, cuts, seeds, results, states, root, state)
    comp.save()
    return comp


def summarise(base: TrainConfig, cuts, seeds, results: dict, states: dict, root,
              state: str = "done") -> Comparison:
    """Build the :class:`Comparison` from each run's ``result.json`` contents."""
    first = next((r for r in results.values() if r), None)
    if first is not None and first["task"]["kind"] == "classification":
        metrics = ["kappa", "kappa_quadratic", "accuracy"]
    else:
        metrics = ["mae", "r2", "kappa", "kappa_quadratic", "accuracy"]
    if first is not None:
        metrics = [m for m in metrics if first["test"].get(m) is not None or m == "mae"]

    def values(cut, m):
        return [(results.get((cut, s)) or {}).get("test", {}).get(m) for s in seeds]

    rows = []
    for cut in cuts:
        rows.append({"cut": cut, "label": _label(base.arch, cut),
                     "n": sum(1 for s in seeds if results.get((cut, s))),
                     "seeds": list(seeds),
                     "states": [states.get((cut, s), "missing") for s in seeds],
                     "metrics": {m: _stats(values(cut, m)) for m in metrics}})
    tests = [{"cut": cut, "baseline": cuts[0],
              "metrics": {m: paired_tests(values(cuts[0], m), values(cut, m)) for m in metrics}}
             for cut in cuts[1:]]
    return Comparison(str(root), base.to_dict(), tuple(cuts), tuple(seeds), tuple(metrics),
                      tuple(rows), tuple(tests), state)


def read_comparison(run_dir) -> dict | None:
    """``comparison.json`` of a comparison directory, or None."""
    import json
    try:
        return json.loads((Path(run_dir) / COMPARISON).read_text())
    except (OSError, ValueError):
        return None


__all__ = ["Comparison", "compare", "summarise", "paired_tests", "resolve_seeds",
           "read_comparison", "RESULT"]

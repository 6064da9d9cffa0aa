"""The paper's Table 2 over a group of runs (``comparison.json``): pure statistics.

Rows are mean and std over replicates of each cut's test metrics (the sample std, ddof=1, under
the recommended protocol; the paper's ``np.std``, ddof=0, under ``--protocol paper``). A replicate
is a seed and, by default, its own group split (:mod:`rcvcore.evidence`); tests pair the
replicates against the first cut (the baseline) on the same split: the mean difference, its 95%
confidence interval and the Nadeau-Bengio corrected paired t-test decide the verdict
(:func:`rcvcore.evidence.paired_difference`, the one rule of the CLI, the dashboard and the
JSON); the plain paired t-test and Wilcoxon's test stay in the JSON (``t_p``, ``wilcoxon_p``)
for reference only. :data:`PAPER_TABLE2` holds the paper's published numbers, shown beside the
measured ones and always labelled as the paper's (their data and networks, not this run's).
Nothing here trains or reads a run directory (see :mod:`rcvcore.runs` and
:mod:`rcvcore.compare`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ._files import write_json
from ._shared import NONE
from .evidence import ALPHA, actual_cut, paired_difference, split_of
from .metrics import METRICS, finite_or_none, metric_names

COMPARISON = "comparison.json"
ARCH_LABELS = {"resnet50": "ResNet50", "inception_v3": "InceptionV3", "resnet18": "ResNet18",
               "efficientnet_lite0": "EfficientNet-Lite0"}
#: Graziani et al., iMIMIC 2020, Table 2: test MAE of the mean nuclei area (px) and Cohen's kappa
#: of the magnification, mean (std, np.std) over 10 seeds; 224-px patches of the Janowczyk breast
#: nuclei set at 7 simulated magnifications (5x-40x); ImageNet InceptionV3 / ResNet50, all layers
#: fine-tuned, MSE on raw areas, Adam 1e-4, batch 32, 5 epochs.
PAPER_TABLE2 = {
    "source": "Graziani et al., iMIMIC 2020, Table 2 (Janowczyk breast H&E, 7 magnifications "
              "5x-40x, 10 seeds): the paper's data and networks, not this run's",
    "rows": (
        {"label": "InceptionV3", "arch": "inception_v3", "cut": "none",
         "mae": (81.85, 11.08), "kappa": (0.435, 0.02)},
        {"label": "InceptionV3 pruned at mixed8", "arch": "inception_v3", "cut": "mixed8",
         "mae": (54.93, 4.32), "kappa": (0.571, 0.05)},
        {"label": "ResNet50", "arch": "resnet50", "cut": "none",
         "mae": (70.08, 12.49), "kappa": (0.610, 0.03)},
        {"label": "ResNet50 pruned at add_15", "arch": "resnet50", "cut": "add_15",
         "mae": (54.76, 3.10), "kappa": (0.623, 0.04)},
    ),
}


@dataclass(frozen=True)
class Comparison:
    """Summary of a comparison (``comparison.json``).

    Attributes:
        rows: one per cut: ``{"cut", "label", "n", "metrics": {metric: {"mean", "std",
            "values"}}, "seeds", "states"}``; std over seeds with ``std_ddof``.
        tests: one per cut after the first (the baseline): ``{"cut", "baseline",
            "metrics": {metric: {"n", "t_stat", "t_p", "wilcoxon_p", **paired_difference}}}``,
            paired by replicate (see :func:`rcvcore.evidence.paired_difference`).
        unit: the unit of inference (what a replicate is).
        std_ddof: 1 (sample std; recommended protocol) or 0 (``np.std``; the paper protocol).
        protocol: the runs' protocol.

    ``to_dict()`` adds ``"table"`` (the text table) and ``"paper"`` (:data:`PAPER_TABLE2`).
    """

    run_dir: str
    base: dict
    cuts: tuple[str, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    rows: tuple[dict, ...]
    tests: tuple[dict, ...]
    state: str = "done"
    std_ddof: int = 1
    protocol: str = "recommended"
    unit: str = "group split (one per replicate)"

    @property
    def target(self) -> str | None:
        """The runs' target (its measure's unit names the MAE column)."""
        return (self.base or {}).get("target")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["table"] = self.table()
        d["paper"] = {"source": PAPER_TABLE2["source"],
                      "rows": [dict(r) for r in PAPER_TABLE2["rows"]]}
        return d

    def save(self) -> Path:
        """Write ``comparison.json`` into the comparison directory (atomically)."""
        path = Path(self.run_dir) / COMPARISON
        write_json(path, self.to_dict())
        return path

    def table(self) -> str:
        """Text table in the layout of the paper's Table 2: mean (std) over seeds per model."""
        heads = ["Model"] + [_label(m, self.target) for m in self.metrics]
        lines = []
        for r in self.rows:
            cells = [r["label"] + ("" if r["n"] == len(self.seeds) else f" [{r['n']} runs]")]
            for m in self.metrics:
                s = r["metrics"].get(m)
                cells.append("-" if not s or s["mean"] is None else
                             _mean_std(m, s["mean"], s["std"], missing_std="-"))
            lines.append(cells)
        for t in self.tests:
            cells = [f"{t['cut']} - {t['baseline']}: diff [95% CI], corrected t p (n)"]
            for m in self.metrics:
                cells.append(_diff_cell(m, t["metrics"].get(m, {})))
            lines.append(cells)
        paper = []
        for r in PAPER_TABLE2["rows"]:
            cells = [f"paper: {r['label']}"]
            for m in self.metrics:
                v = r.get(m)
                cells.append("-" if v is None else _mean_std(m, *v, std_format=".2f"))
            paper.append(cells)
        widths = [max(len(x[i]) for x in [heads] + lines + paper) for i in range(len(heads))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa
        rule = "-" * len(fmt(heads))
        std = "sample std, ddof=1" if self.std_ddof == 1 else "np.std, ddof=0 (as the paper)"
        return "\n".join(
            [fmt(heads), rule] + [fmt(x) for x in lines]
            + [f"mean (std) over {len(self.seeds)} replicates, {std}; {self.protocol} protocol; "
               f"unit of inference: {self.unit}"]
            + [r["cuts_note"] for r in self.rows if r.get("cuts_note")] + ["",
               PAPER_TABLE2["source"] + ":"] + [fmt(x) for x in paper])


    def verdict(self) -> str:
        """One sentence per pruned cut against the full network (the baseline), per metric:
        significantly better, significantly worse, no significant difference or not testable
        (and why), with the mean paired difference, its 95% CI, in how many replicates the
        pruned model was better and n. Said plainly either way (one rule:
        :func:`rcvcore.evidence.paired_difference`)."""
        out = []
        base = self.rows[0] if self.rows else None
        for t in self.tests:
            row = next(r for r in self.rows if r["cut"] == t["cut"])
            parts = []
            for m in self.metrics:
                a = base["metrics"].get(m, {}).get("values") or []
                b = row["metrics"].get(m, {}).get("values") or []
                pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                s = t["metrics"].get(m, {})
                if not pairs or "verdict" not in s:
                    continue
                sign = METRICS[m].sign if m in METRICS else 1.0
                wins = sum(1 for x, y in pairs if sign * (y - x) > 0)
                how = s["verdict"] + (f" ({s['why']})" if s.get("why") else "")
                parts.append(f"{_label(m, self.target)} {how}: {_diff_cell(m, s)}, better in "
                             f"{wins}/{len(pairs)} replicates")
            if parts:
                out.append(f"{row['label']} vs {base['label']} (unit: {self.unit}): "
                           + "; ".join(parts) + ".")
        return " ".join(out)

    def view(self) -> dict:
        """Table 2 as display rows: ``{"measured", "tests", "paper", "paper_source",
        "caption", "verdict"}`` (what the dashboard shows; the text form is :meth:`table`)."""
        def cell(m, s):
            return None if not s or s.get("mean") is None else _mean_std(m, s["mean"], s["std"])

        measured = [{"Model": r["label"], "runs": r["n"],
                     **{_label(m, self.target): cell(m, r["metrics"].get(m))
                        for m in self.metrics}} for r in self.rows]
        tests = [{"Model": f"{t['cut']} - {t['baseline']}",
                  **{_label(m, self.target): f"{_diff_cell(m, v)}: {v.get('verdict', '-')}"
                     for m, v in t["metrics"].items()}} for t in self.tests]
        paper = [{"Model": f"{r['label']} (paper)",
                  **{_label(m): _mean_std(m, *r[m], std_format=".2f") for m in METRICS
                     if m in r}}
                 for r in PAPER_TABLE2["rows"]]
        std = "sample std (ddof=1)" if self.std_ddof == 1 else "np.std (ddof=0, as the paper)"
        caption = (f"Mean ({std}) over {len(self.seeds)} replicate(s) of the test metrics, "
                   f"{self.protocol} protocol; unit of inference: {self.unit}. Differences: "
                   "pruned minus full, paired by replicate, 95% CI and two-sided p of the "
                   "Nadeau-Bengio corrected paired t-test; no verdict with fewer than 3 "
                   "replicates, zero-variance differences or one shared split. kappa: Cohen's "
                   "kappa of the magnification (QWK: quadratic "
                   "weights), each predicted area mapped to the nearest training class mean."
                   + "".join(f" {r['cuts_note']}." for r in self.rows if r.get("cuts_note")))
        return {"measured": measured, "tests": tests, "paper": paper,
                "paper_source": PAPER_TABLE2["source"], "caption": caption,
                "verdict": self.verdict()}


def _mean_std(metric: str, mean: float, std: float | None, *, missing_std: str | None = None,
              std_format: str | None = None) -> str:
    """``mean (std)`` with the metric's decimals (2 for MAE in px, 3 for the scores); the std
    in ``std_format`` (default the mean's); with no std, ``missing_std`` in the brackets, or
    no brackets."""
    f = f".{_decimals(metric)}f"
    if std is None:
        return format(mean, f) + ("" if missing_std is None else f" ({missing_std})")
    return f"{format(mean, f)} ({format(std, std_format or f)})"


def _label(metric: str, target: str | None = None) -> str:
    """The metric's column title in the unit of the measure ``target`` regresses."""
    return METRICS[metric].label_for(target) if metric in METRICS else metric


def _decimals(metric: str) -> int:
    return METRICS[metric].decimals if metric in METRICS else 3


def _diff_cell(metric: str, s: dict) -> str:
    """``+1.23 [-0.40, 2.86] p=0.120 (n=5)`` or ``not testable (n=2)``."""
    if not s or s.get("mean_diff") is None:
        return "-"
    f = f".{_decimals(metric)}f"
    n = f"(n={s.get('n')})"
    if not s.get("testable"):
        return f"{s['mean_diff']:+{f}}, not testable {n}"
    lo, hi = s["ci95"]
    return f"{s['mean_diff']:+{f}} [{lo:+{f}}, {hi:+{f}}] p={_fmt_p(s['p'])} {n}"


def _fmt_p(p):
    return "-" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def model_label(arch: str, cut: str) -> str:
    """``ResNet50`` (the full network) or ``ResNet50 pruned at add_15``: Table 2's rows."""
    name = ARCH_LABELS.get(arch, arch)
    return name if cut == NONE else f"{name} pruned at {cut}"


def _stats(values: list[float], ddof: int = 1) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=ddof)) if len(v) > 1 else None,
            "values": values}


def paired_tests(a: list, b: list) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``b`` against ``a`` (pairs with a missing
    value are dropped; p is None with fewer than 2 pairs or no differences)."""
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
        out["t_stat"] = finite_or_none(t.statistic)
        out["t_p"] = finite_or_none(t.pvalue)
        try:
            out["wilcoxon_p"] = finite_or_none(stats.wilcoxon(y, x).pvalue)
        except ValueError:
            pass
    return out


def summarise(base, cuts, seeds, results: dict, states: dict, root,
              state: str = "done", cut_of: dict | None = None) -> Comparison:
    """Build the :class:`Comparison` from each run's ``result.json`` contents.

    Args:
        base: the shared configuration (a :class:`rcvcore.train.TrainConfig`).
        cuts, seeds: the runs' cuts (first = baseline) and seeds.
        results: ``{(cut, seed): result.json contents or None}``.
        states: ``{(cut, seed): run state}``.
        root: the comparison's folder (where :meth:`Comparison.save` writes).
        cut_of: rows cut at a layer chosen per replicate (:func:`rcvcore.compare.compare`):
            such a row carries ``cut_by_seed`` and says so in its label.
    """
    protocol, ddof = base.protocol, base.protocol_spec.std_ddof
    first = next((r for r in results.values() if r), None)
    kind = first["task"]["kind"] if first is not None else "regression"
    metrics = list(metric_names(kind))
    if first is not None:
        metrics = [m for m in metrics if first["test"].get(m) is not None or m == "mae"]

    def values(cut, m):
        return [(results.get((cut, s)) or {}).get("test", {}).get(m) for s in seeds]

    rows = []
    for cut in cuts:
        row = {"cut": cut, "label": model_label(base.arch, cut),
               "n": sum(1 for s in seeds if results.get((cut, s))),
               "seeds": list(seeds),
               "states": [states.get((cut, s), "missing") for s in seeds],
               "metrics": {m: _stats(values(cut, m), ddof) for m in metrics}}
        if cut in (cut_of or {}):
            by_seed = [actual_cut(cut, s, cut_of) for s in seeds]
            counts = Counter(by_seed)
            row["cut_by_seed"] = by_seed
            row["label"] = (f"{ARCH_LABELS.get(base.arch, base.arch)} pruned at each "
                            f"replicate's own cut ({len(counts)} layers)")
            row["cuts_note"] = (f"{cut}: each replicate cut at its own layer: " + ", ".join(
                f"{c} x{k}" for c, k in counts.most_common()))
        rows.append(row)
    done = [r for r in results.values() if r and r.get("n_train")]
    ratio = float(np.mean([r["n_test"] / r["n_train"] for r in done])) if done else 0.0
    splits = [split_of((results.get((cuts[0], s)) or {}).get("config")) for s in seeds]

    def test(cut, m):
        a, b = values(cuts[0], m), values(cut, m)
        lower = m in METRICS and not METRICS[m].higher_is_better
        return {**paired_tests(a, b), **paired_difference(
            a, b, test_train_ratio=ratio, splits=splits, lower_is_better=lower, alpha=ALPHA)}

    tests = [{"cut": cut, "baseline": cuts[0], "metrics": {m: test(cut, m) for m in metrics}}
             for cut in cuts[1:]]
    units = {v.get("unit") for t in tests for v in t["metrics"].values()}
    unit = units.pop() if len(units) == 1 else "group split (one per replicate)"
    return Comparison(str(root), base.to_dict(), tuple(cuts), tuple(seeds), tuple(metrics),
                      tuple(rows), tuple(tests), state, ddof, protocol, unit)

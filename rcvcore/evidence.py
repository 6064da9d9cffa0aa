"""Table 2's inference rule: replicates over data splits, one paired test, one verdict.

Every replicate of a comparison (a seed) is trained on its own group split (``replicate="split"``,
the default): its ``split_seed`` is the seed, and so is the dataset's own ``split_seed`` option
for loaders that fix a split (demo-he, BreakHis, ...). The cuts of one replicate share that split,
so the pairs are (baseline, cut) on the same split, and the spread over replicates includes the
data. ``replicate="seed"`` keeps one split for every seed (only initialisation and batch order
vary); its differences measure optimiser noise and are never called significant.

:func:`paired_difference` is the one rule the CLI, the dashboard and ``comparison.json`` share:
the mean paired difference, a 95% confidence interval and a two-sided p-value from the corrected
paired t-test of Nadeau & Bengio (2003) (the training sets of random splits overlap, so the plain
t-test overstates significance; the correction inflates the variance by ``n_test / n_train``).
No verdict of significance with fewer than :data:`MIN_REPLICATES` replicates, with differences of
zero variance, or with replicates that share one split: "not testable", with the reason.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from .data.registry import loader_options, parse_spec
from .errors import UserError

REPLICATES = ("split", "seed")
#: fewest paired replicates for a verdict of significance
MIN_REPLICATES = 3
ALPHA = 0.05
TEST = "corrected-paired-t (Nadeau-Bengio)"


def check_replicate(replicate: str) -> str:
    """``replicate`` or a :class:`UserError` naming the choices."""
    if replicate not in REPLICATES:
        raise UserError(f"--replicate {replicate!r}: choose 'split' (each seed its own group "
                        "split: replicates over data, the default) or 'seed' (one split, seeds "
                        "vary only the training order; never tested).")
    return replicate


def actual_cut(cut: str, seed: int, cut_of: dict | None = None) -> str:
    """The layer replicate ``seed`` of the comparison row ``cut`` is cut at: ``cut`` itself, or,
    for a row whose cut was chosen per replicate (``cut_of = {row: {seed: layer}}``, seeds as
    ints or strings, as JSON keeps them), that replicate's layer."""
    per_seed = (cut_of or {}).get(cut)
    if per_seed is None:
        return cut
    return str(per_seed.get(int(seed), per_seed.get(str(int(seed)), cut)))


def check_cut_of(base, cuts, seeds, cut_of: dict | None) -> dict:
    """``cut_of`` with string seed keys (as group.json keeps it), or a :class:`UserError` when it
    names a row that is not compared or leaves a replicate without its layer; every layer the
    comparison's runs are cut at is checked against ``base``'s network."""
    out: dict = {}
    for row, per_seed in (cut_of or {}).items():
        if row not in cuts:
            raise UserError(f"cut_of names {row!r}, which is not one of the compared cuts "
                            f"({', '.join(cuts)}).")
        keys = {str(int(k)): str(v) for k, v in per_seed.items()}
        missing = [s for s in seeds if str(int(s)) not in keys]
        if missing:
            raise UserError(f"cut_of[{row!r}] has no layer for seed(s) "
                            f"{', '.join(map(str, missing))}.")
        out[row] = keys
    for c in cuts:
        for layer in sorted({actual_cut(c, s, out) for s in seeds}):
            dataclasses.replace(base, cut=layer).validate()
    return out


def replicate_config(base, cut: str, seed: int, replicate: str = "split",
                     cut_of: dict | None = None):
    """The configuration of replicate ``seed`` of ``cut``: with ``replicate="split"`` the seed
    is also the split seed (the run's own and, for loaders that fix a split, the dataset's).
    A row cut per replicate (``cut_of``, :func:`actual_cut`) gets that replicate's layer."""
    cut = actual_cut(cut, seed, cut_of)
    if replicate == "seed":
        return dataclasses.replace(base, cut=cut, seed=int(seed))
    opts = dict(base.dataset_options or {})
    try:
        fixes_split = "split_seed" in loader_options(parse_spec(base.dataset)[0].name)
    except Exception:  # an unknown dataset fails later with its own message
        fixes_split = False
    if fixes_split:
        opts["split_seed"] = int(seed)
    return dataclasses.replace(base, cut=cut, seed=int(seed), split_seed=int(seed),
                               dataset_options=opts)


def split_of(config: dict | None) -> tuple | None:
    """What fixes a run's data split, from its saved configuration: (split_seed, the dataset's
    split_seed option, n); None when unknown."""
    if not config:
        return None
    return (config.get("split_seed"), (config.get("dataset_options") or {}).get("split_seed"),
            config.get("n"))


def paired_difference(base_values, cut_values, *, test_train_ratio: float, splits=None,
                      lower_is_better: bool = False, alpha: float = ALPHA) -> dict:
    """The paired comparison of one metric, cut against baseline, over replicates.

    Args:
        base_values, cut_values: the metric per replicate (None: missing; dropped in pairs).
        test_train_ratio: n_test / n_train of the runs (the Nadeau-Bengio correction).
        splits: per replicate, what fixes its data split (:func:`split_of`); replicates sharing
            one split make the test not testable over data.
        lower_is_better: MAE; the verdict says better / worse accordingly.

    Returns:
        ``{"test", "unit", "n", "mean_diff", "ci95", "t", "p", "test_train_ratio", "testable",
        "why", "verdict"}``: diff = cut - baseline; ``p`` two-sided, None when not testable.
    """
    keep = [i for i, (x, y) in enumerate(zip(base_values, cut_values))
            if _finite(x) and _finite(y)]
    d = np.array([cut_values[i] - base_values[i] for i in keep], dtype=np.float64)
    n = int(d.size)
    distinct = None if splits is None else len({splits[i] for i in keep})
    out = {"test": TEST, "unit": "group split (one per replicate)", "n": n,
           "mean_diff": float(d.mean()) if n else None, "ci95": None, "t": None, "p": None,
           "test_train_ratio": float(test_train_ratio), "testable": False, "why": None}
    if distinct is not None and n and distinct < n:
        out["unit"] = ("training seed on one split" if distinct == 1 else
                       f"replicate ({distinct} distinct splits among {n})")
    why = None
    if n < MIN_REPLICATES:
        why = f"{n} paired replicate(s); a test needs at least {MIN_REPLICATES}"
    elif distinct is not None and distinct < n:
        why = (f"the {n} replicates share {'one split' if distinct == 1 else 'splits'} (seeds "
               "vary only the initialisation and batch order): a test over them measures "
               "optimiser noise, not data; use replicates over splits")
    elif np.var(d) == 0:
        why = "the paired differences have zero variance"
    if why is not None:
        out["why"] = why
        out["verdict"] = "not testable"
        return out
    var = float(d.var(ddof=1))
    se = math.sqrt((1.0 / n + test_train_ratio) * var)
    t = float(d.mean() / se)
    p = float(2 * stats.t.sf(abs(t), n - 1))
    half = float(stats.t.ppf(0.975, n - 1) * se)
    better = (d.mean() < 0) if lower_is_better else (d.mean() > 0)
    out.update(ci95=[float(d.mean() - half), float(d.mean() + half)], t=t, p=p, testable=True,
               verdict=("significantly better" if better else "significantly worse")
               if p < alpha else "no significant difference")
    return out


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)

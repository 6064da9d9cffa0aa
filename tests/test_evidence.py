"""Issue 22: the test on the statistic shown, the peak as a plateau, Table 2 over data splits."""
import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import LeaveOneGroupOut

from rcvcore.rcv import (
    RELATIVE_ALPHAS,
    make_splits,
    permutation_targets,
    score_targets,
)


def _brute_null(X, targets, splits, grouped):
    """Mean over repeats of held-out R² of each column of ``targets`` (B, n), every fit a
    scikit-learn RidgeCV with the penalty chosen on the training split as the scan's."""
    out = np.zeros((len(targets), len(splits)))
    for j, s in enumerate(splits):
        Xtr = X[s.train]
        Xc = Xtr - Xtr.mean(axis=0)
        grid = np.asarray(RELATIVE_ALPHAS) * (Xc ** 2).sum() / len(Xtr)
        for b, y in enumerate(targets):
            if grouped:
                cv = list(LeaveOneGroupOut().split(Xtr, y[s.train], s.train_groups))
                est = RidgeCV(alphas=grid, cv=cv, scoring="neg_mean_squared_error")
            else:
                est = RidgeCV(alphas=grid)
            est.fit(Xtr, y[s.train])
            out[b, j] = r2_score(y[s.test], est.predict(X[s.test]))
    return out.mean(axis=1)


@pytest.mark.parametrize("grouped", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("p", [6, 60])          # primal and dual
def test_permutation_statistic_is_the_reported_r2_and_matches_sklearn(rng, grouped, p):
    n = 50
    g = np.repeat(np.arange(10), 5) if grouped else None
    X = rng.normal(size=(n, p)) + (2 * rng.normal(size=(10, p))[g] if grouped else 0)
    y = X[:, 0] + 0.5 * rng.normal(size=n)
    splits = make_splits(n, groups=g, repeats=3, seed=0)
    null = permutation_targets(y, groups=g, permutations=6, seed=0)
    s = score_targets({"l": X}, {"y": y}, splits, null=null)["y"]["l"]
    # the tested statistic is the number shown, to the last bit
    assert s.null_observed == s.mean
    ref = _brute_null(X, np.vstack([y, null]), splits, grouped)
    assert s.mean == pytest.approx(ref[0], rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(s.null, ref[1:], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Table 2 over data: the one rule


def test_paired_difference_matches_scipy_and_is_corrected(rng):
    from scipy import stats

    from rcvcore.evidence import paired_difference

    a, b = rng.normal(10, 1, 6), rng.normal(9, 1, 6)
    plain = paired_difference(list(a), list(b), test_train_ratio=0.0)
    ref = stats.ttest_rel(b, a)
    assert plain["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert plain["t"] == pytest.approx(ref.statistic, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert plain["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-10)
    assert plain["testable"] and plain["n"] == 6
    nb = paired_difference(list(a), list(b), test_train_ratio=0.25)
    assert nb["p"] > plain["p"] and nb["ci95"][1] - nb["ci95"][0] > ci.high - ci.low
    # MAE: lower is better, the verdict follows the direction
    far = paired_difference([10, 11, 12, 13], [5, 5.5, 6.5, 6.9], test_train_ratio=0.2,
                            lower_is_better=True)
    assert far["verdict"] == "significantly better" and far["mean_diff"] < 0


def test_never_significant_with_too_few_replicates_zero_variance_or_one_split():
    from rcvcore.evidence import paired_difference

    two = paired_difference([1.0, 2.0], [3.0, 4.5], test_train_ratio=0.2)
    assert two["verdict"] == "not testable" and two["p"] is None and two["n"] == 2
    flat = paired_difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], test_train_ratio=0.2)
    assert flat["verdict"] == "not testable" and "zero variance" in flat["why"]
    one = paired_difference([1, 2, 3, 4.0], [2, 3.5, 4, 6.0], test_train_ratio=0.2,
                            splits=[(0, None, None)] * 4)
    assert one["verdict"] == "not testable" and "optimiser noise" in one["why"]
    assert one["unit"] == "training seed on one split"
    # missing values drop their pair
    gap = paired_difference([1, None, 3, 4.0, 5], [2, 3, 4, 6.0, 5.5], test_train_ratio=0.2)
    assert gap["n"] == 4


def test_null_differences_are_rarely_significant(rng):
    """Null comparisons (no true difference): the rule rejects at most at its level."""
    from rcvcore.evidence import paired_difference

    hits = 0
    for _ in range(400):
        a = rng.normal(size=5)
        b = a + rng.normal(scale=0.3, size=5)
        hits += paired_difference(list(a), list(b), test_train_ratio=0.25)["verdict"] \
            .startswith("significantly")
    assert hits / 400 <= 0.05


def test_replicate_config_gives_each_seed_its_split():
    from rcvcore.evidence import replicate_config
    from rcvcore.train.config import TrainConfig

    base = TrainConfig(dataset="demo-he", split_seed=0)
    cfg = replicate_config(base, "block3.0", 1002)
    assert (cfg.seed, cfg.split_seed, cfg.dataset_options["split_seed"], cfg.cut) == \
        (1002, 1002, 1002, "block3.0")
    assert replicate_config(base, "none", 1002, "seed").split_seed == 0
    folder = replicate_config(TrainConfig(dataset="demo-scale"), "none", 7)
    assert folder.split_seed == 7 and "split_seed" not in folder.dataset_options

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

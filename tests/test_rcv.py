"""RCV scoring against scikit-learn on the same splits."""
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import LeaveOneGroupOut

from rcvcore.errors import UserError
from rcvcore.rcv import (
    RCV,
    RELATIVE_ALPHAS,
    logmeanexp,
    make_splits,
    score_layers,
    score_targets,
    shuffled_targets,
)


def _ridge_grid(X):
    Xc = X - X.mean(axis=0)
    return np.asarray(RELATIVE_ALPHAS) * np.trace(Xc @ Xc.T) / len(X)


def _sklearn_r2(X, y, splits, model, grouped=False):
    out = []
    for s in splits:
        Xtr, ytr = X[s.train], y[s.train]
        if model == "ols":
            est = LinearRegression()
        elif grouped:
            cv = list(LeaveOneGroupOut().split(Xtr, ytr, s.train_groups))
            est = RidgeCV(alphas=_ridge_grid(Xtr), cv=cv, scoring="neg_mean_squared_error")
        else:
            est = RidgeCV(alphas=_ridge_grid(Xtr))
        est.fit(Xtr, ytr)
        out.append(r2_score(y[s.test], est.predict(X[s.test])))
    return np.array(out)


@pytest.mark.parametrize("model", ["ols", "ridge"])
@pytest.mark.parametrize("n,p", [(60, 8), (60, 200)])   # primal and dual (features > images)
def test_score_layers_matches_sklearn(rng, model, n, p):
    X = rng.normal(size=(n, p)) * 3 + 5
    y = X[:, 0] * 2 + rng.normal(size=n)
    ours = score_layers({"l": X}, y, repeats=3, seed=0, model=model)["l"].r2
    theirs = _sklearn_r2(X, y, make_splits(n, repeats=3, seed=0), model)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p", [8, 200])
def test_grouped_ridge_matches_leave_one_group_out(rng, p):
    g = np.repeat(np.arange(12), 5)
    X = rng.normal(size=(60, p)) + 2 * rng.normal(size=(12, p))[g]
    y = X[:, 0] + rng.normal(size=60)
    ours = score_layers({"l": X}, y, groups=g, repeats=3, model="ridge")["l"].r2
    splits = make_splits(60, groups=g, repeats=3)
    theirs = _sklearn_r2(X, y, splits, "ridge", grouped=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


def test_grouped_splits_never_straddle(rng):
    g = np.repeat(np.arange(10), 4)
    for s in make_splits(40, groups=g, repeats=5, seed=3):
        assert not set(g[s.train]) & set(g[s.test])


def test_per_class_splits_and_average(rng):
    labels = np.repeat(["a", "b", "c"], 20)
    X = rng.normal(size=(60, 5))
    y = X[:, 1] + 0.1 * rng.normal(size=60)
    score = score_layers({"l": X}, y, labels=labels, repeats=4, model="ols")["l"]
    assert set(score.r2_by_class) == {"a", "b", "c"}
    per_repeat = np.mean([score.r2_by_class[c] for c in "abc"], axis=0)
    np.testing.assert_allclose(score.r2, per_repeat)
    for s in make_splits(60, labels=labels, repeats=2):
        assert len(set(labels[np.r_[s.train, s.test]])) == 1


def test_splits_are_identical_across_layers_and_seeded():
    a = make_splits(50, repeats=3, seed=1)
    b = make_splits(50, repeats=3, seed=1)
    c = make_splits(50, repeats=3, seed=2)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b))
    assert not all(np.array_equal(x.test, y.test) for x, y in zip(a, c))


def test_shared_factorisation_equals_separate_fits(rng):
    X = rng.normal(size=(50, 30))
    y = X[:, 0] + rng.normal(size=50)
    splits = make_splits(50, repeats=3)
    ysh = shuffled_targets(y, repeats=3)
    both = score_targets({"l": X}, {"y": y, "sh": ysh}, splits)
    alone = score_targets({"l": X}, {"sh": ysh}, splits)
    np.testing.assert_allclose(both["sh"]["l"].r2, alone["sh"]["l"].r2, rtol=1e-10)


def test_shuffled_control_is_near_zero_or_below(rng):
    X = rng.normal(size=(200, 10))
    y = X @ rng.normal(size=10) + 0.1 * rng.normal(size=200)
    true = score_layers({"l": X}, y, repeats=5)["l"]
    shuffled = score_layers({"l": X}, y, repeats=5, shuffle=True)["l"]
    assert true.mean > 0.95
    assert shuffled.mean < 0.1


def test_ols_is_minimum_norm_and_goes_far_negative_when_interpolating(rng):
    X = rng.normal(size=(30, 500))
    y = rng.normal(size=30)
    est = RCV(model="ols").fit(X, y)
    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(est.score(X, y), 1.0, atol=1e-8)   # interpolates


def test_rcv_estimator_contract(rng):
    X = rng.normal(size=(40, 6))
    y = X[:, 2] * 3 + 1
    est = RCV().fit(X, y)
    assert est.score(X, y) > 0.99
    np.testing.assert_allclose(np.linalg.norm(est.direction_), 1.0)
    assert np.argmax(np.abs(est.direction_)) == 2
    with pytest.raises(ValueError, match="6 features"):
        est.predict(rng.normal(size=(3, 5)))
    with pytest.raises(UserError, match="ridge"):
        RCV(model="lasso").fit(X, y)


def test_logmeanexp():
    assert logmeanexp([0.5, 0.5]) == pytest.approx(0.5)
    assert logmeanexp([0.0, np.log(3.0)]) == pytest.approx(np.log(2.0))
    assert logmeanexp([-50.0, 0.5]) == pytest.approx(np.log((np.exp(-50) + np.exp(0.5)) / 2))


def test_bad_measures_and_sizes(rng):
    X = {"l": rng.normal(size=(20, 3))}
    with pytest.raises(UserError, match="constant"):
        score_layers(X, np.ones(20))
    with pytest.raises(UserError, match="Too few images"):
        score_layers({"l": rng.normal(size=(4, 3))}, rng.normal(size=4))
    with pytest.raises(UserError, match="non-finite"):
        score_layers(X, np.r_[np.nan, rng.normal(size=19)])

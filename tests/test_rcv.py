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


# ------------------------------------------------------------------------------------------
# significance (issue 10)

from rcvcore.rcv import (  # noqa: E402
    _Fit,
    bh_adjust,
    corrected_paired_t,
    layer_tests,
    permutation_pvalue,
    permutation_targets,
)


def test_bh_matches_scipy(rng):
    from scipy.stats import false_discovery_control

    p = rng.uniform(size=17) ** 3
    np.testing.assert_allclose(bh_adjust(p), false_discovery_control(p), rtol=1e-12)
    # a test that could not be run is NaN and does not count among the tests
    q = bh_adjust(np.r_[p[:5], np.nan])
    assert np.isnan(q[-1])
    np.testing.assert_allclose(q[:5], false_discovery_control(p[:5]), rtol=1e-12)


def test_corrected_paired_t_reduces_to_scipy_and_is_more_conservative(rng):
    from scipy.stats import ttest_rel

    a, b = rng.normal(0.3, 0.1, 10), rng.normal(0.2, 0.1, 10)
    t, p = corrected_paired_t(a, b, 0.0)
    ref = ttest_rel(a, b, alternative="greater")
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue,
                                                                               rel=1e-10)
    t2, p2 = corrected_paired_t(a, b, 0.3 / 0.7)      # overlapping training sets
    assert p2 > p and t2 == pytest.approx(t / np.sqrt((1 / 10 + 0.3 / 0.7) / (1 / 10)))
    assert np.isnan(corrected_paired_t([0.1], [0.0], 0.4)[1])


def test_permutation_pvalue_counts_the_observed():
    assert permutation_pvalue(0.5, [0.1] * 199) == pytest.approx(1 / 200)
    assert permutation_pvalue(0.5, [0.5] + [0.1] * 99) == pytest.approx(2 / 101)
    assert np.isnan(permutation_pvalue(np.nan, [0.1]))


@pytest.mark.parametrize("p", [8, 200])
def test_gcv_matches_the_hat_matrix(rng, p):
    n = 40
    X = rng.normal(size=(n, p))
    Y = rng.normal(size=(n, 3))
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    fit = _Fit(Xc, Yc) if n > p else _Fit(None, Yc, gram=Xc @ Xc.T, n_features=p)
    alphas = np.array([1e-2, 1.0, 30.0]) * fit.scale
    ours = fit.gcv(alphas)
    for i, a in enumerate(alphas):
        H = Xc @ np.linalg.solve(Xc.T @ Xc + a * np.eye(p), Xc.T) + 1.0 / n
        resid = Y - Y.mean(axis=0) - (H - 1.0 / n) @ Yc
        ref = n * (resid ** 2).sum(axis=0) / np.trace(np.eye(n) - H) ** 2
        np.testing.assert_allclose(ours[i], ref, rtol=1e-8)


def test_planted_signal_is_significant_at_its_layer_only(rng):
    n = 120
    signal = rng.normal(size=(n, 30))
    y = signal[:, :3] @ np.array([1.0, -0.5, 0.8]) + 0.3 * rng.normal(size=n)
    feats = {"signal": signal, "noise": rng.normal(size=(n, 30))}
    splits = make_splits(n, repeats=5, seed=0)
    null = permutation_targets(y, permutations=99, seed=0)
    res = score_targets(feats, {"y": y}, splits, null=null)["y"]
    p = {k: permutation_pvalue(s.null_observed, s.null) for k, s in res.items()}
    assert p["signal"] == pytest.approx(1 / 100)
    assert p["noise"] > 0.2
    assert res["signal"].mean > 0.8 and len(res["noise"].null) == 99
    sig = layer_tests(["signal", "noise"], p, None, alpha=0.05)
    assert sig["signal"]["significant"] and not sig["noise"]["significant"]
    assert "random_weights" not in sig["signal"]
    # both controls: a layer must beat both
    sig = layer_tests(["signal", "noise"], p, {"signal": 0.2, "noise": 0.001}, alpha=0.05)
    assert not sig["signal"]["significant"] and not sig["noise"]["significant"]
    assert layer_tests(["signal"], None, None)["signal"]["significant"] is None


def test_null_columns_do_not_change_the_scores(rng):
    X = rng.normal(size=(60, 100))
    y = X[:, 0] + rng.normal(size=60)
    splits = make_splits(60, repeats=3)
    a = score_targets({"l": X}, {"y": y}, splits)["y"]["l"]
    b = score_targets({"l": X}, {"y": y}, splits, null=permutation_targets(y, permutations=20))
    np.testing.assert_allclose(b["y"]["l"].r2, a.r2, rtol=1e-10)
    assert b["y"]["l"].alphas == a.alphas


def test_group_wise_permutation_moves_whole_groups(rng):
    groups = np.repeat([f"g{i}" for i in range(6)], 4)
    labels = np.repeat(["a", "b"], 12)
    y = np.arange(24, dtype=float)
    perms = permutation_targets(y, labels=labels, groups=groups, permutations=30, seed=1)
    sh = shuffled_targets(y, labels=labels, groups=groups, repeats=30, seed=1)
    moved = 0
    for yp in np.r_[perms, sh]:
        blocks = {frozenset(y[groups == g]) for g in np.unique(groups)}
        for g in np.unique(groups):
            assert frozenset(yp[groups == g]) in blocks            # a whole group's values
            assert set(labels[np.isin(y, yp[groups == g])]) == set(labels[groups == g])
            moved += frozenset(yp[groups == g]) != frozenset(y[groups == g])
    assert moved > 0
    # groups of different sizes are not merged: a group of 3 keeps its own values
    g2 = np.r_[np.repeat(["x", "y"], 4), ["z"] * 3]
    p2 = permutation_targets(np.arange(11.0), groups=g2, permutations=10)
    assert all(set(p[8:]) == {8.0, 9.0, 10.0} for p in p2)


def test_each_target_reports_its_own_penalties(rng):
    X = rng.normal(size=(80, 20))
    y = X[:, 0] * 3 + 0.1 * rng.normal(size=80)
    splits = make_splits(80, repeats=3)
    out = score_targets({"l": X}, {"y": y, "sh": shuffled_targets(y, repeats=3)}, splits)
    assert len(out["sh"]["l"].alphas) == 3
    assert max(out["y"]["l"].alphas) < min(out["sh"]["l"].alphas)   # noise is shrunk harder


def test_small_test_sets_and_few_distinct_splits_are_rejected(rng):
    labels = np.r_[["big"] * 30, ["small"] * 6]
    with pytest.raises(UserError, match=r"class 'small'.*test set would hold 2 images.*"
                                        r"--no-per-class"):
        make_splits(36, labels=labels)
    # 4 groups with 2 in each test set: 6 distinct splits cannot make 10 honest repeats
    g = np.repeat(np.arange(4), 5)
    with pytest.raises(UserError, match=r"Only 6 distinct.*--repeats 6"):
        make_splits(20, groups=g, repeats=10)
    # 5 groups: exactly 10 distinct splits, all used
    g = np.repeat(np.arange(5), 4)
    tests = {tuple(sorted(s.test)) for s in make_splits(20, groups=g, repeats=10)}
    assert len(tests) == 10


def test_r2_per_class_comes_with_its_test_size(rng):
    labels = np.repeat(["a", "b"], 20)
    X = rng.normal(size=(40, 5))
    s = score_layers({"l": X}, X[:, 0] + rng.normal(size=40), labels=labels, repeats=3)["l"]
    assert s.n_test_by_class == {"a": (6, 6, 6), "b": (6, 6, 6)}
    assert s.to_json()["n_test_by_class"] == {"a": [6, 6, 6], "b": [6, 6, 6]}


def _refit_criterion(X, Y, alphas, groups):
    """Leave-one-(group-)out MSE by explicit ridge refits (unpenalised intercept), mean over
    groups of each group's MSE: (n_alphas, n_columns)."""
    out = np.zeros((len(alphas), Y.shape[1]))
    ids = np.unique(groups)
    for g in ids:
        out_g, keep = groups == g, groups != g
        mx, my = X[keep].mean(axis=0), Y[keep].mean(axis=0)
        Xc = X[keep] - mx
        for i, a in enumerate(alphas):
            W = np.linalg.solve(Xc.T @ Xc + a * np.eye(X.shape[1]), Xc.T @ (Y[keep] - my))
            out[i] += (((X[out_g] - mx) @ W + my - Y[out_g]) ** 2).mean(axis=0)
    return out / len(ids)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("p", [6, 60])          # primal and dual
@pytest.mark.parametrize("trip", [False, True])  # True: the single-precision guard trips
def test_screened_penalty_search_picks_the_exact_penalties(rng, monkeypatch, grouped, p, trip):
    """The permutation test's penalty search (single-precision screen, float64 candidates) picks,
    for every permuted column, the penalty of explicit leave-one-(group-)out refits, also when
    the screen's error guard trips and the search falls back to float64."""
    import rcvcore.rcv as rcv

    monkeypatch.setattr(rcv, "SMALL_CRITERION_BYTES", 0)     # screen even this small criterion
    if trip:
        monkeypatch.setattr(rcv, "SCREEN_TOL", 1e-12)
    rows = []                                   # the dtype of every full criterion evaluated
    orig = rcv._Fit._loo_rows
    monkeypatch.setattr(rcv._Fit, "_loo_rows", lambda self, setup, cols, dtype: rows.append(
        np.dtype(dtype).name) or orig(self, setup, cols, dtype))
    n = 40
    groups = np.repeat(np.arange(10), 4) if grouped else np.arange(n)
    X = rng.normal(size=(n, p)) @ np.diag(np.geomspace(1, 1e-2, p))
    y = X[:, 0] * 3 + rng.normal(size=n)
    Y = np.c_[y, permutation_targets(y, groups=groups if grouped else None,
                                     permutations=30, seed=1).T]
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    fit = _Fit(Xc, Yc) if n > p else _Fit(None, Yc, gram=Xc @ Xc.T, n_features=p)
    alphas = np.asarray(RELATIVE_ALPHAS) * fit.scale
    g = groups if grouped else None
    ref = np.argmin(_refit_criterion(X, Y, alphas, groups), axis=0)
    np.testing.assert_array_equal(fit.loo_argmin(alphas, g, fast=True), ref)
    # the screen ran in full, then float64 in full only where the guard tripped
    assert rows == (["float32", "float64"] if trip else ["float32"])
    rows.clear()
    np.testing.assert_array_equal(fit.loo_argmin(alphas, g), ref)
    assert rows == ["float64"]

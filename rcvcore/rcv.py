"""Regression Concept Vectors: linear regression from pooled activations to a scale measure.

:class:`RCV` is a scikit-learn estimator; :func:`score_layers` scores many layers over repeated
70/30 splits (grouped, per class) with held-out R². The solver works in float64 on one eigen-
decomposition per (layer, split): of the centred Gram matrix when features outnumber training
images, of the covariance otherwise. Every target column that shares a split (the true measure and
its shuffled control) reuses that factorisation, and the ridge penalty is chosen on the training
split alone by exact leave-one-out, for all penalties at once (as ``RidgeCV``'s GCV does).

Significance (:func:`permutation_targets`, :func:`permutation_pvalue`, :func:`corrected_paired_t`,
:func:`bh_adjust`, :func:`layer_tests`): a permutation test against shuffled measures whose
permuted fits reuse the factorisations (each penalty chosen by the same leave-one-(group-)out
search as the reported R², so the test's statistic is the number shown), a
corrected paired t-test against the random-weights network over the same splits, and a
Benjamini-Hochberg correction over the layers.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from .errors import UserError

MODELS = ("ridge", "ols")
#: Ridge penalties, relative to the mean squared norm of the centred training rows
#: (trace of the centred Gram / n), so one grid fits layers of any activation scale.
RELATIVE_ALPHAS = tuple(np.logspace(-5, 3, 17))


def logmeanexp(r2) -> float:
    """The paper's aggregate ``ln(mean(exp(R²)))`` (their figures plot exp(R²)/e)."""
    r2 = np.asarray(r2, dtype=np.float64).ravel()
    m = r2.max()
    return float(m + np.log(np.mean(np.exp(r2 - m))))


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Column-wise R² = 1 - SS_res/SS_tot (as ``sklearn.metrics.r2_score``)."""
    ss_res = ((y_true - y_pred) ** 2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)


# ------------------------------------------------------------------------------------------
# the solver on one training split


#: :meth:`_Fit.loo_argmin`'s band: penalties whose single-precision criterion is within this
#: relative distance of the column's minimum are recomputed in float64
SCREEN_TOL = 1e-4
#: the largest residual block of one batch of penalties in :meth:`_Fit.loo_mse` (bytes)
LOO_BATCH_BYTES = 1 << 20
#: a criterion (all penalties, float64) this small is computed exactly, not screened
SMALL_CRITERION_BYTES = 1 << 20
#: columns whose candidates are always recomputed, to measure the single-precision error
GUARD_COLUMNS = 8


@dataclass
class _LooSetup:
    """The target-independent part of :meth:`_Fit.loo_mse` for one penalty grid and grouping."""
    key: tuple
    alphas: np.ndarray                      # (A,) absolute penalties
    D: np.ndarray                           # (A, rank) eigenvalue weights 1 / (λ + α)
    denom: np.ndarray | None                # (A, n) leave-one-out denominators (no groups)
    buckets: list                           # [(idx (G_s, size), inverses (A, G_s, size, size))]
    n_groups: int
    cast: dict                              # Q in single precision, made once
    order: np.ndarray | None = None         # rows by bucket, so each bucket is one block


class _Fit:
    """Exact linear fits of the columns of ``Y`` on centred features ``Xc`` (one split).

    ``solve(alpha)`` gives dual or primal coefficients; ``loo_mse(alphas)`` the leave-one-out
    mean squared errors of ridge with an unpenalised intercept, for every alpha and column.
    """

    def __init__(self, Xc: np.ndarray | None, Yc: np.ndarray, gram: np.ndarray | None = None,
                 n_features: int | None = None):
        n, p = (gram.shape[0], n_features) if gram is not None else Xc.shape
        self.n, self.p = n, p
        self.dual = n <= p
        if self.dual:
            K = Xc @ Xc.T if gram is None else gram
            scale = max(np.trace(K) / n, np.finfo(float).tiny)
            # Deflate the ones vector (an exact null direction of a centred Gram) by lifting it
            # above every other eigenvalue, then drop it: the intercept is not penalised.
            lift = 2.0 * np.trace(K) / n + scale
            lam, Q = np.linalg.eigh(K + lift)
            lam, Q = lam[:-1], Q[:, :-1]
        else:
            C = Xc.T @ Xc
            scale = max(np.trace(C) / n, np.finfo(float).tiny)
            lam, V = np.linalg.eigh(C)
            self.V = V
            Q = Xc @ V                      # = U * sqrt(lam): unnormalised left vectors
        self.lam = np.clip(lam, 0.0, None)
        self.Q = Q
        self.scale = scale
        self.Yc = Yc
        self.QtY = Q.T @ Yc
        self.tol = self.lam.max(initial=0.0) * max(n, p) * np.finfo(np.float64).eps * 10
        self._setup: _LooSetup | None = None

    def _inv(self, alpha: float) -> np.ndarray:
        lam = self.lam
        if alpha > 0:
            return 1.0 / (lam + alpha)
        out = np.zeros_like(lam)               # minimum-norm least squares: drop null directions
        keep = lam > self.tol
        out[keep] = 1.0 / lam[keep]
        return out

    def loo_mse(self, alphas: np.ndarray, groups: np.ndarray | None = None,
                cols=slice(None), dtype=np.float64) -> np.ndarray:
        """(n_alphas, n_columns) cross-validated MSE of ridge with an unpenalised intercept.

        Without ``groups``: exact leave-one-out. With ``groups``: exact leave-one-group-out (the
        block form e_g = (I - H)_gg⁻¹ ((I - H) y)_g), scored as the mean over groups of each
        group's MSE, as ``RidgeCV(cv=LeaveOneGroupOut(), scoring="neg_mean_squared_error")``.
        Crops of one photograph or patches of one slide are then never used to tune the penalty
        for their own siblings.

        One penalty at a time (an (n, k) residual, not an (A, n, k) one: the permutation test
        scores hundreds of columns). ``dtype=np.float32`` evaluates the residuals in single
        precision (see :meth:`loo_argmin`, which screens with it). ``cols``: a slice or an
        index array of the columns.
        """
        return self._loo_rows(self._loo_setup(alphas, groups), cols, dtype)

    def loo_argmin(self, alphas: np.ndarray, groups: np.ndarray | None = None,
                   cols=slice(None), fast: bool = False) -> np.ndarray:
        """Per column, the index of the penalty with the lowest :meth:`loo_mse` in float64
        (first on ties): ``np.argmin(loo_mse(alphas, groups, cols), axis=0)``.

        ``fast`` (the permutation test's hundreds of columns) gives the same indices for about
        half the work: every criterion is screened in single precision; a penalty more than
        ``SCREEN_TOL`` above its column's single-precision minimum cannot be the float64
        minimum while the single-precision error stays below ``SCREEN_TOL / 2`` (measured:
        under 6e-6 on random and activation-like features), so a column with one candidate
        keeps it, and a column with several gets them recomputed in float64 and the argmin
        taken over those. The recomputed pairs (always those of the first ``GUARD_COLUMNS``
        columns) measure the single-precision error; above ``SCREEN_TOL / 4``
        (ill-conditioned group blocks) the whole criterion is recomputed in float64 instead.
        """
        setup = self._loo_setup(alphas, groups)
        k = len(np.arange(self.QtY.shape[1])[cols])
        if not fast or len(setup.alphas) * self.n * k * 8 <= SMALL_CRITERION_BYTES:
            # (a criterion that is one batch in float64 costs less than the screen)
            return np.argmin(self._loo_rows(setup, cols, np.float64), axis=0)
        c32 = self._loo_rows(setup, cols, np.float32)                       # (A, k)
        cand = c32 <= c32.min(axis=0) * (1.0 + SCREEN_TOL)
        # a column with one candidate has its float64 argmin there; recompute the columns
        # with several, and the first GUARD_COLUMNS columns to measure the float32 error
        redo = cand & ((cand.sum(axis=0) > 1) | (np.arange(cand.shape[1]) < GUARD_COLUMNS))
        a_idx, j_idx = np.nonzero(redo)
        c64 = np.where(cand, c32, np.inf)
        c64[a_idx, j_idx] = self._loo_pairs(setup, a_idx,
                                            np.arange(self.QtY.shape[1])[cols][j_idx])
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.abs(c32[redo] - c64[redo]) / np.abs(c64[redo])
        if not np.all(err <= SCREEN_TOL / 4):     # (nan too: a zero or non-finite criterion)
            return np.argmin(self.loo_mse(alphas, groups, cols), axis=0)
        return np.argmin(c64, axis=0)

    def _loo_setup(self, alphas, groups) -> _LooSetup:
        """What the criterion needs besides the targets, for a penalty grid and groups: the
        eigenvalue weights, the leave-one-out denominators or the group blocks' inverses (by
        block size, so that every group of one size is one batched product). Kept for the next
        call with the same grid and groups (the named columns, then the permuted ones)."""
        alphas = np.asarray(alphas, dtype=np.float64)
        g = None if groups is None else np.asarray(groups)
        key = (alphas.tobytes(), None if g is None else (g.dtype.str, g.tobytes()))
        if self._setup is not None and self._setup.key == key:
            return self._setup
        n = self.n
        D = 1.0 / (self.lam[None, :] + alphas[:, None])             # (A, r), all penalties
        if not self.dual:
            D = np.where(self.lam[None, :] > self.tol, D, 0.0)
        denom, buckets, n_groups = None, [], 0
        inv = None
        if g is not None:
            _, inv = np.unique(g, return_inverse=True)
            if inv.max() + 1 == n:
                inv = None                                         # singletons: leave-one-out
        if inv is None:
            diag = (self.Q ** 2) @ D.T                              # (n, A)
            # dual: fitted = (I-H) y / α on 1⊥ and diag (I-H) / α; primal: 1 - leverage
            denom = diag.T if self.dual else 1.0 - 1.0 / n - diag.T
        else:
            order = np.argsort(inv, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
            members = np.split(order, starts[1:])
            n_groups = len(members)
            for size in sorted({len(m) for m in members}):
                idx = np.stack([m for m in members if len(m) == size])   # (G_s, size)
                buckets.append((idx, self._block_inverses(idx, D)))
        order = np.concatenate([idx.ravel() for idx, _ in buckets]) if buckets else None
        self._setup = _LooSetup(key, alphas, D, denom, buckets, n_groups, {}, order)
        return self._setup

    def _loo_rows(self, setup: _LooSetup, cols, dtype) -> np.ndarray:
        """The criterion of every penalty of ``setup`` for columns ``cols``: (A, k).

        Penalties go in batches of one (c, n, k) residual of at most :data:`LOO_BATCH_BYTES`:
        the small fits of per-class scoring (tens of images) cost one product per batch instead
        of one per penalty (their time was Python's, not the arithmetic's); large ones still
        go one penalty at a time (hundreds of permuted columns on thousands of images)."""
        # grouped: rows in bucket order, so that a bucket's residuals are a view, not a copy
        rows = slice(None) if setup.order is None else setup.order
        Q = setup.cast.get(np.dtype(dtype).str)
        if Q is None:
            Q = setup.cast[np.dtype(dtype).str] = self.Q[rows].astype(dtype, copy=False)
        D = setup.cast.setdefault("D" + np.dtype(dtype).str, setup.D.astype(dtype, copy=False))
        QtY = self.QtY[:, cols].astype(dtype, copy=False)
        Yc = None if self.dual else self.Yc[rows][:, cols].astype(dtype, copy=False)
        n_alphas, k = len(setup.alphas), QtY.shape[1]
        step = max(1, int(LOO_BATCH_BYTES // max(1, self.n * k * np.dtype(dtype).itemsize)))
        out = np.empty((n_alphas, k))
        for a0 in range(0, n_alphas, step):
            a = np.arange(a0, min(n_alphas, a0 + step))
            fitted = np.matmul(Q, D[a][:, :, None] * QtY)                  # (c, n, k)
            resid = fitted if self.dual else Yc - fitted                  # (I-H) y (dual: / α)
            out[a] = self._score_batch(setup, resid, a)
        return out

    def _score_batch(self, setup: _LooSetup, resid: np.ndarray, a: np.ndarray) -> np.ndarray:
        """:meth:`_score` of a batch: ``resid`` (c, n, k) under penalties ``a`` (c,): (c, k)."""
        dtype = resid.dtype
        if setup.denom is not None:
            resid /= setup.denom[a][:, :, None].astype(dtype)
            return np.einsum("cij,cij->cj", resid, resid) / self.n
        c, _, k = resid.shape
        total = np.zeros((c, k))
        start = 0                               # the rows are in bucket order (setup.order)
        for b, (idx, Minv) in enumerate(setup.buckets):
            g, size = idx.shape
            block = resid[:, start:start + g * size].reshape(c, g, size, k)
            M = setup.cast.get(("M", b, dtype.str))
            if M is None:
                M = setup.cast[("M", b, dtype.str)] = Minv.astype(dtype, copy=False)
            e = np.matmul(M[a], block).reshape(c, g * size, k)        # (c, G_s size, k)
            # (a group's mean as one contiguous sum over the bucket / size: 2x faster than a
            # mean over the strided size axis)
            total += np.einsum("cij,cij->cj", e, e) / size
            start += g * size
        return total / setup.n_groups

    def _loo_pairs(self, setup: _LooSetup, a_idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The float64 criterion of the pairs (penalty ``a_idx[m]``, column ``cols[m]``) in one
        product: (m,)."""
        fitted = self.Q @ (setup.D[a_idx].T * self.QtY[:, cols])             # (n, m)
        resid = fitted if self.dual else self.Yc[:, cols] - fitted
        return self._score(setup, resid, a_idx)

    def _score(self, setup: _LooSetup, resid: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        """Mean squared leave-one-(group-)out error of each column of ``resid`` = (I - H) y
        (dual: / α), column m under penalty ``a_idx[m]`` (:meth:`_loo_pairs`; a batch of
        penalties over all columns is :meth:`_score_batch`): (k,)."""
        dtype = resid.dtype
        if setup.denom is not None:
            resid /= setup.denom[a_idx].T.astype(dtype)
            return np.einsum("ij,ij->j", resid, resid) / self.n
        total = np.zeros(resid.shape[1])
        for a in np.unique(a_idx):
            j = np.flatnonzero(a_idx == a)
            r = resid[:, j]
            for idx, Minv in setup.buckets:
                e = np.matmul(Minv[a].astype(dtype, copy=False), r[idx])     # (G_s, size, k)
                e = e.reshape(-1, e.shape[-1])
                total[j] += np.einsum("ij,ij->j", e, e) / idx.shape[1]
        return total / setup.n_groups

    def _block_inverses(self, idx: np.ndarray, D: np.ndarray) -> np.ndarray:
        """(A, G, g, g) inverses of the diagonal blocks (I - H)_bb (dual: α (I - H)_bb / α) of
        the G groups of size g in ``idx`` (G, g), for every penalty (independent of the
        targets)."""
        Qb = self.Q[idx]                                                # (G, g, r)
        Mb = np.matmul(Qb[None] * D[:, None, None, :], np.swapaxes(Qb, 1, 2)[None])
        if not self.dual:
            Mb = np.eye(idx.shape[1]) - 1.0 / self.n - Mb               # (I-H)_bb
        return np.linalg.inv(Mb)

    def predict(self, alpha: float, cross: np.ndarray, Xc_test: np.ndarray | None = None,
                cols=slice(None)) -> np.ndarray:
        """Centred predictions for test rows given ``cross`` = Xc_test Xcᵀ (dual) or Xc_test."""
        D = self._inv(alpha)
        if self.dual:
            return cross @ (self.Q @ (D[:, None] * self.QtY[:, cols]))
        # primal: w = V diag(D) Vᵀ Xcᵀ y ; Vᵀ Xcᵀ y = Qᵀ y
        w = self.V @ (D[:, None] * self.QtY[:, cols])
        return Xc_test @ w

    def gcv(self, alphas: np.ndarray, cols=slice(None)) -> np.ndarray:
        """(n_alphas, n_columns) generalised cross-validation criterion (Golub, Heath & Wahba
        1979) ``n ||(I-H) y||² / tr(I-H)²`` of ridge with an unpenalised intercept: the
        rotation-invariant form of leave-one-out, O(rank) per penalty and column instead of
        O(n rank), which is what makes hundreds of permuted fits cheap."""
        alphas = np.asarray(alphas, dtype=np.float64)
        lam = self.lam
        t = lam[None, :] / (lam[None, :] + alphas[:, None])            # (A, r) shrink factors
        if self.dual:
            c2 = self.QtY[:, cols] ** 2                                 # Q orthonormal on 1⊥
            rss = ((1.0 - t) ** 2) @ c2
        else:
            keep = lam > self.tol
            t = np.where(keep[None, :], t, 0.0)
            c2 = np.where(keep[:, None], self.QtY[:, cols] ** 2 / np.where(keep, lam, 1)[:, None],
                          0.0)
            yy = (self.Yc[:, cols] ** 2).sum(axis=0)
            rss = np.maximum(yy[None, :] - (1.0 - (1.0 - t) ** 2) @ c2, 0.0)
        dof = self.n - 1.0 - t.sum(axis=1)                              # tr(I - H)
        return self.n * rss / np.maximum(dof, np.finfo(float).tiny)[:, None] ** 2

    def test_basis(self, cross: np.ndarray | None, Xc_test: np.ndarray | None) -> np.ndarray:
        """Test rows in the fit's eigenbasis, so that predictions of many columns with many
        penalties cost one product: (n_test, rank)."""
        return cross @ self.Q if self.dual else Xc_test @ self.V

    def predict_many(self, alphas: np.ndarray, basis: np.ndarray, cols=slice(None)
                     ) -> np.ndarray:
        """Centred predictions of columns ``cols``, column k with penalty ``alphas[k]``, from
        :meth:`test_basis`: (n_test, k)."""
        alphas = np.asarray(alphas, dtype=np.float64)
        lam = self.lam[:, None]
        with np.errstate(divide="ignore"):
            D = np.where(alphas[None, :] > 0, 1.0 / (lam + alphas[None, :]),
                         np.where(lam > self.tol, 1.0 / np.where(lam > 0, lam, 1.0), 0.0))
        return basis @ (D * self.QtY[:, cols])

    def coef(self, alpha: float, Xc: np.ndarray) -> np.ndarray:
        D = self._inv(alpha)
        if self.dual:
            return Xc.T @ (self.Q @ (D[:, None] * self.QtY))
        return self.V @ (D[:, None] * self.QtY)


def _choose_alpha(fit: _Fit, model: str, rel_alphas, groups=None, cols=slice(None),
                  criterion: str = "loo", fast: bool = False) -> np.ndarray:
    """Per-column penalty: 0 for OLS; for ridge the grid value with the lowest leave-one-out
    (leave-one-group-out with ``groups``) error on the training split, first on ties; with
    ``criterion="gcv"`` the lowest generalised cross-validation criterion instead. ``fast``:
    the same choice, screened in single precision (the permutation test's hundreds of permuted
    columns; :meth:`_Fit.loo_argmin`)."""
    k = fit.Yc[:, cols].shape[1]
    if model == "ols":
        return np.zeros(k)
    alphas = np.asarray(rel_alphas, dtype=np.float64) * fit.scale
    if criterion == "gcv":
        return alphas[np.argmin(fit.gcv(alphas, cols), axis=0)]
    return alphas[fit.loo_argmin(alphas, groups, cols, fast=fast)]


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise UserError(f"model={model!r} is not supported; choose 'ridge' (default, penalty "
                        "chosen on the training split) or 'ols' (the paper's least squares).")


# ------------------------------------------------------------------------------------------
# the estimator


class RCV(RegressorMixin, BaseEstimator):
    """Regression Concept Vector: a linear regression from activations to a concept measure.

    Args:
        model: ``"ridge"`` (default; penalty chosen by exact leave-one-out on the training data)
            or ``"ols"`` (ordinary least squares, minimum-norm when features outnumber samples,
            as the paper did).
        alphas: ridge penalties relative to the mean squared norm of the centred rows.

    Attributes:
        coef_: (n_features,) regression weights.
        intercept_: float.
        alpha_: the absolute penalty used (0 for OLS).
        direction_: (n_features,) the unit-norm RCV, ``coef_ / ||coef_||``.
    """

    def __init__(self, model: str = "ridge", alphas=RELATIVE_ALPHAS):
        self.model = model
        self.alphas = alphas

    def fit(self, X, y, groups=None):
        """Fit on ``X`` (n_samples, n_features); ``groups`` makes the penalty search leave
        whole groups out."""
        _check_model(self.model)
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if X.shape[0] < 3:
            raise UserError(f"RCV needs at least 3 samples to fit, got {X.shape[0]}.")
        mu, ybar = X.mean(axis=0), y.mean()
        Xc, yc = X - mu, (y - ybar)[:, None]
        fit = _Fit(Xc, yc)
        self.alpha_ = float(_choose_alpha(fit, self.model, self.alphas, groups)[0])
        self.coef_ = fit.coef(self.alpha_, Xc)[:, 0]
        self.intercept_ = float(ybar - mu @ self.coef_)
        norm = np.linalg.norm(self.coef_)
        self.direction_ = self.coef_ / norm if norm > 0 else self.coef_
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_


# ------------------------------------------------------------------------------------------
# repeated splits


@dataclass(frozen=True)
class Split:
    """One train/test split of the images of one class (indices into the dataset)."""

    repeat: int
    label: str
    train: np.ndarray
    test: np.ndarray
    train_groups: np.ndarray | None = None


#: Fewest test images per class (per split) for a held-out R²: below it one odd image decides
#: the score (2-image test sets gave R² down to -382).
MIN_TEST = 5


def _min_images(test_size: float, min_test: int) -> int:
    n = 6
    while int(np.ceil(test_size * n)) < min_test or n - int(np.ceil(test_size * n)) < 2:
        n += 1
    return n


# Long by design: the docstring states the split protocol; the body is one loop over repeats.
def distinct_splits(units: int, test_size: float = 0.3) -> int:
    """How many distinct train/test splits ``units`` images or groups allow (the most repeats
    :func:`make_splits` accepts)."""
    from math import comb

    return comb(units, int(np.ceil(test_size * units)))


def make_splits(n: int, *, labels=None, groups=None, repeats: int = 10, seed: int = 0,
                test_size: float = 0.3, min_test: int = MIN_TEST) -> list[Split]:
    """Random ``1 - test_size`` / ``test_size`` splits, repeated, per class, grouped.

    Splits depend only on ``(n, labels, groups, seed)``, so every layer and every control is
    scored on identical splits. With ``groups``, no group straddles train and test. Every class
    needs at least ``min_test`` test images in every split, and as many distinct splits as
    ``repeats`` (with few groups, repeats would otherwise reuse one split and the std over
    repeats would understate the uncertainty): a repeat that draws a split already drawn draws
    again.

    Raises:
        UserError: a class with too few images (or groups) for a split, a test set smaller than
            ``min_test`` images, or fewer distinct splits than ``repeats``.
    """
    labels = np.full(n, "all") if labels is None else np.asarray(labels).astype(str)
    splits = []
    pct = f"{round((1 - test_size) * 100)}/{round(test_size * 100)}"
    for ci, label in enumerate(sorted(np.unique(labels))):
        label = str(label)
        idx = np.flatnonzero(labels == label)
        g = None if groups is None else np.asarray(groups)[idx]
        units = len(idx) if g is None else len(np.unique(g))
        n_test = int(np.ceil(test_size * units))
        where = "" if label == "all" else f" in class {label!r}"
        what = "images" if g is None else "groups (source images)"
        fix = ("Use more images (a larger --n), pool the classes (--no-per-class), or drop the "
               "class" if label != "all" else "Use more images (a larger --n)")
        if g is not None:
            fix += ", or split by image (--ungrouped, optimistic)"
        if len(idx) < 6 or units - n_test < 2 or n_test < 1:
            raise UserError(
                f"Too few images for a {pct} split{where}: {len(idx)} images in {units} {what}; "
                f"need at least {_min_images(test_size, min_test) if g is None else 6} images "
                f"and 3 {what}. {fix}.")
        if g is None and n_test < min_test:
            raise UserError(
                f"Too few images for a {pct} split{where}: the test set would hold {n_test} "
                f"images (at least {min_test} are needed for a held-out R² that one image cannot "
                f"decide); that takes {_min_images(test_size, min_test)} images, the class has "
                f"{len(idx)}. {fix}.")
        possible = distinct_splits(units, test_size)
        if possible < repeats:
            raise UserError(
                f"Only {possible} distinct {pct} splits{where} ({units} {what}, {n_test} in "
                f"each test set) for {repeats} repeats: repeats would reuse the same split and "
                f"the std over repeats would understate the uncertainty. Use --repeats "
                f"{possible} or fewer, or more {what}. {fix}.")
        seen = set()
        for r in range(repeats):
            for attempt in range(1000):
                rs = int(np.random.SeedSequence([seed, r, ci, attempt] if attempt else
                                                [seed, r, ci]).generate_state(1)[0])
                splitter = (ShuffleSplit(1, test_size=test_size, random_state=rs) if g is None
                            else GroupShuffleSplit(1, test_size=test_size, random_state=rs))
                tr, te = next(splitter.split(idx, groups=g))
                key = tuple(sorted(te.tolist()))
                if key not in seen:
                    break
            seen.add(key)
            if len(te) < min_test:
                raise UserError(
                    f"Too few images for a {pct} split{where}: a test set of {len(te)} images "
                    f"(its {n_test} test groups are small); at least {min_test} are needed for "
                    f"a held-out R² that one image cannot decide. {fix}.")
            splits.append(Split(r, str(label), idx[tr], idx[te], None if g is None else g[tr]))
    return splits


def _permute(y: np.ndarray, rng: np.random.Generator, classes: list[np.ndarray],
             groups: np.ndarray | None) -> np.ndarray:
    """One permutation of ``y`` that respects the design: within each class; with ``groups``,
    whole groups of the same size exchange their blocks of measures (then images are shuffled
    inside each group), so the null keeps the data's grouping as grouped splits do."""
    out = y.copy()
    for i in classes:
        if groups is None:
            out[i] = y[rng.permutation(i)]
            continue
        names, inv = np.unique(groups[i], return_inverse=True)
        members = [i[inv == k] for k in range(len(names))]
        sizes = np.array([len(m) for m in members])
        for size in np.unique(sizes):
            M = np.stack([members[k] for k in np.flatnonzero(sizes == size)])   # (groups, size)
            moved = y[M[rng.permutation(len(M))]]          # whole groups exchange their blocks
            out[M] = rng.permuted(moved, axis=1)           # then images shuffle within a group
    return out


def _class_index(n: int, labels) -> list[np.ndarray]:
    labels = np.full(n, "all") if labels is None else np.asarray(labels).astype(str)
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]


def shuffled_targets(y: np.ndarray, *, labels=None, groups=None, repeats: int = 10,
                     seed: int = 0) -> np.ndarray:
    """(repeats, n) copies of ``y``, each permuted within class with its own seed (the control);
    with ``groups``, whole groups are permuted (see :func:`permutation_targets`)."""
    y = np.asarray(y, dtype=np.float64)
    classes = _class_index(len(y), labels)
    g = None if groups is None else np.asarray(groups).astype(str)
    out = np.empty((repeats, len(y)))
    for r in range(repeats):
        out[r] = _permute(y, np.random.default_rng([seed, r, 7919]), classes, g)
    return out


def permutation_targets(y: np.ndarray, *, labels=None, groups=None, permutations: int = 200,
                        seed: int = 0) -> np.ndarray:
    """(permutations, n) permuted copies of ``y`` for the permutation test: within class and,
    with ``groups``, by whole groups (groups of equal size exchange their measures; images are
    shuffled within each group). Each permutation is used for every repeat, so the null
    statistic (mean R² over repeats) is computed exactly as the observed one."""
    y = np.asarray(y, dtype=np.float64)
    classes = _class_index(len(y), labels)
    g = None if groups is None else np.asarray(groups).astype(str)
    out = np.empty((permutations, len(y)))
    for b in range(permutations):
        out[b] = _permute(y, np.random.default_rng([seed, b, 104729]), classes, g)
    return out


@dataclass(frozen=True)
class LayerScore:
    """Held-out R² of the RCV of one layer over repeated splits.

    ``r2`` has one value per repeat (the mean over classes of that repeat); ``r2_by_class``
    keeps every (class, repeat) value, from which the paper's log-mean-exp is computed, and
    ``n_test_by_class`` the size of each of those test sets. ``alphas`` are the penalties this
    target's fits used, one per split. ``null`` (not in JSON) holds the permutation test's null
    statistics (mean R² over repeats of each permuted measure) when they were computed, and
    ``null_observed`` the same statistic for the true measure (see :func:`score_targets`).
    """

    layer: str
    n_features: int
    r2: tuple[float, ...]
    r2_by_class: Mapping[str, tuple[float, ...]] = field(default_factory=dict, compare=False)
    alphas: tuple[float, ...] = field(default=(), compare=False)
    n_test_by_class: Mapping[str, tuple[int, ...]] = field(default_factory=dict, compare=False)
    null: tuple[float, ...] = field(default=(), compare=False, repr=False)
    null_observed: float | None = field(default=None, compare=False)

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.r2))

    @property
    def std(self) -> float:
        """Std over repeats, ``np.std`` (ddof=0; Table 2's std over replicates uses ddof=1)."""
        return float(np.nanstd(self.r2))

    @property
    def logmeanexp(self) -> float:
        vals = [v for vs in self.r2_by_class.values() for v in vs] or list(self.r2)
        vals = [v for v in vals if np.isfinite(v)]
        return logmeanexp(vals) if vals else float("nan")

    def to_json(self) -> dict:
        return {"name": self.layer, "n_features": self.n_features, "r2": list(self.r2),
                "r2_mean": self.mean, "r2_std": self.std, "r2_logmeanexp": self.logmeanexp,
                "r2_by_class": {str(k): list(v) for k, v in self.r2_by_class.items()},
                "n_test_by_class": {str(k): list(v) for k, v in self.n_test_by_class.items()},
                "alphas": list(self.alphas)}

    @classmethod
    def from_json(cls, d: dict) -> LayerScore:
        by_class = d.get("r2_by_class") or {"all": d["r2"]}
        return cls(d["name"], int(d["n_features"]), tuple(float(v) for v in d["r2"]),
                   {k: tuple(float(v) for v in vs) for k, vs in by_class.items()},
                   tuple(float(a) for a in d.get("alphas", ())),
                   {k: tuple(int(v) for v in vs)
                    for k, vs in (d.get("n_test_by_class") or {}).items()})


# Long by design (with its nested one_layer): one loop over the splits shares each layer's
# Gram matrix and factorisation across the measure, the controls and every permutation.
def score_targets(features: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                  splits: list[Split], *, model: str = "ridge", alphas=RELATIVE_ALPHAS,
                  progress: Callable[[float, str], None] | None = None,
                  null: np.ndarray | None = None, null_target: str | None = None
                  ) -> dict[str, dict[str, LayerScore]]:
    """Score every layer for several targets on the same splits, sharing factorisations.

    Args:
        features: layer -> (n_images, n_features) activations.
        targets: name -> (n_images,) measure, or (repeats, n_images) for a target that differs
            per repeat (the shuffled control).
        splits: from :func:`make_splits`.
        null: optional (n_permutations, n_images) permuted measures (the same in every repeat,
            see :func:`permutation_targets`): each is fitted on every split like a target,
            reusing the factorisations, penalty chosen on the training split as for the others,
            and its mean R² over repeats goes to ``LayerScore.null`` of ``null_target`` (default:
            the first target).

    Returns:
        target name -> layer -> :class:`LayerScore`.
    """
    _check_model(model)
    names = list(targets)
    null_target = names[0] if null_target is None else null_target
    i_null = names.index(null_target)
    repeats = 1 + max(s.repeat for s in splits)
    labels_order = sorted({s.label for s in splits})
    T = {}
    for name, t in targets.items():
        t = np.asarray(t, dtype=np.float64)
        T[name] = np.broadcast_to(t, (repeats, t.shape[-1])) if t.ndim == 1 else t
    N = None if null is None or len(null) == 0 else np.asarray(null, dtype=np.float64)
    out: dict[str, dict[str, LayerScore]] = {name: {} for name in names}
    layers = list(features)
    n_test = {c: [0] * repeats for c in labels_order}
    for s in splits:
        n_test[s.label][s.repeat] = len(s.test)

    # the target columns of each repeat (named, then permuted), shared by every layer
    Ys = {}
    for r in range(repeats):
        named_cols = np.stack([T[name][r] for name in names], axis=1)
        Ys[r] = named_cols if N is None else np.concatenate([named_cols, N.T], axis=1)

    def one_layer(layer: str) -> dict[str, LayerScore]:
        res: dict[str, LayerScore] = {}
        X = np.asarray(features[layer], dtype=np.float64)
        X = X - X.mean(axis=0)          # a common shift keeps Gram-matrix centring exact
        n, p = X.shape
        need_gram = any(len(s.train) <= p for s in splits)
        G = X @ X.T if need_gram else None
        k_named = len(names)
        r2 = np.full((k_named, repeats, len(labels_order)), np.nan)
        r2_null = None if N is None else np.full((len(N), repeats, len(labels_order)), np.nan)
        r2_obs = np.full((repeats, len(labels_order)), np.nan)
        chosen = [[] for _ in names]
        for s in splits:
            tr, te = s.train, s.test
            mu = X[tr].mean(axis=0)
            Y = Ys[s.repeat]                                                # (n, k)
            ybar = Y[tr].mean(axis=0)
            if len(tr) <= p:
                Gtt = G[np.ix_(tr, tr)]
                b = Gtt.mean(axis=1)
                m = b.mean()
                Kc = Gtt - b[:, None] - b[None, :] + m
                fit = _Fit(None, Y[tr] - ybar, gram=Kc, n_features=p)
                Gst = G[np.ix_(te, tr)]
                a = Gst.mean(axis=1)
                cross = Gst - a[:, None] - b[None, :] + m
                Xc_test = None
            else:
                Xc = X[tr] - mu
                fit = _Fit(Xc, Y[tr] - ybar)
                cross, Xc_test = None, X[te] - mu
            named = slice(0, k_named)
            a_cols = _choose_alpha(fit, model, alphas, s.train_groups, cols=named)
            if r2_null is None:       # few columns: two thin products beat a test basis
                pred = np.stack([fit.predict(a_cols[k], cross, Xc_test, cols=slice(k, k + 1))[:, 0]
                                 for k in range(k_named)], axis=1) + ybar[named]
            else:
                basis = fit.test_basis(cross, Xc_test)
                pred = fit.predict_many(a_cols, basis, cols=named) + ybar[named]
            j = labels_order.index(s.label)
            r2[:, s.repeat, j] = _r2(Y[te, named], pred)
            for k in range(k_named):
                chosen[k].append(float(a_cols[k]))
            if r2_null is not None:
                # the permutation test's statistic is the reported one: every permuted measure's
                # penalty is chosen exactly as the true measure's (leave-one-out, or
                # leave-one-group-out with groups, on the training split), so the observed
                # statistic is the reported R² itself
                perm_cols = slice(k_named, Y.shape[1])
                # (screened in single precision, the candidates recomputed in float64: the
                # same penalties as the float64 search for about half the work)
                a_perm = _choose_alpha(fit, model, alphas, s.train_groups, cols=perm_cols,
                                       fast=True)
                p_perm = fit.predict_many(a_perm, basis, cols=perm_cols) + ybar[perm_cols]
                r2_obs[s.repeat, j] = r2[i_null, s.repeat, j]
                r2_null[:, s.repeat, j] = _r2(Y[te, perm_cols], p_perm)
        nt = {c: tuple(int(v) for v in n_test[c]) for c in labels_order}
        with np.errstate(all="ignore"):
            for k, name in enumerate(names):
                per_repeat = np.nanmean(r2[k], axis=1)
                null_stat, observed = (), None
                if r2_null is not None and name == null_target:
                    null_stat = tuple(float(v) for v in
                                      np.nanmean(np.nanmean(r2_null, axis=2), axis=1))
                    observed = float(np.nanmean(np.nanmean(r2_obs, axis=1)))
                res[name] = LayerScore(
                    layer, p, tuple(float(v) for v in per_repeat),
                    {c: tuple(float(v) for v in r2[k][:, j]) for j, c in enumerate(labels_order)},
                    tuple(chosen[k]), nt, null_stat, observed)
        return res

    # Layers run in parallel threads (LAPACK releases the GIL) with one BLAS thread each: on few
    # cores, multi-threaded BLAS next to spinning OpenMP threads (torch) was 7-30x slower here.
    workers = max(1, min(len(layers), os.cpu_count() or 1))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(one_layer, layer): layer for layer in layers}
        done = 0
        for fut in as_completed(futures):
            layer = futures[fut]
            res = fut.result()
            for name in names:
                out[name][layer] = res[name]
            done += 1
            if progress:
                progress(done / len(layers), f"scored {layer}")
    return {name: {layer: out[name][layer] for layer in layers} for name in names}


def score_layers(features: Mapping[str, np.ndarray], y, *, labels=None, groups=None,
                 repeats: int = 10, seed: int = 0, model: str = "ridge", test_size: float = 0.3,
                 alphas=RELATIVE_ALPHAS, shuffle: bool = False,
                 progress=None) -> dict[str, LayerScore]:
    """Held-out R² of the RCV of every layer, over ``repeats`` grouped, per-class splits.

    Args:
        features: layer -> (n_images, n_features) pooled activations.
        y: (n_images,) scale measure.
        labels: optional (n_images,) classes: splits and fits are per class, R² averaged.
        groups: optional (n_images,) groups that never straddle train and test.
        shuffle: score the shuffled-labels control instead of the true measure.

    Returns:
        layer -> :class:`LayerScore`.
    """
    y = np.asarray(y, dtype=np.float64)
    check_measure(y, labels)
    splits = make_splits(len(y), labels=labels, groups=groups, repeats=repeats, seed=seed,
                         test_size=test_size)
    target = (shuffled_targets(y, labels=labels, groups=groups, repeats=repeats, seed=seed)
              if shuffle else y)
    return score_targets(features, {"y": target}, splits, model=model, alphas=alphas,
                         progress=progress)["y"]


def check_measure(y: np.ndarray, labels=None) -> None:
    """Raise a clear error for a measure that cannot be regressed (constant, non-finite)."""
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise UserError(f"The scale measure has {int((~np.isfinite(y)).sum())} non-finite "
                        "values (NaN or inf); fix or drop those rows.")
    labels = np.full(len(y), "all") if labels is None else np.asarray(labels).astype(str)
    for label in map(str, np.unique(labels)):
        v = y[labels == label]
        where = "" if label == "all" else f" in class {label!r}"
        if v.size and np.ptp(v) == 0:
            raise UserError(f"The scale measure is constant ({v[0]:g}){where}: R² is undefined. "
                            "A scan needs images of different scales.")
        if v.size:
            _check_numerics(v, where)


#: |values| beyond which squares (variances, residual sums) leave float64's normal range
_SQUARE_SAFE = (1e-150, 1e150)


def _check_numerics(v: np.ndarray, where: str) -> None:
    """Refuse a measure whose variation float64 cannot resolve (issue 25: scales of 1e-300 gave
    NaN R² with exit 0; two scales one ulp apart gave 0.000 ± 0.000)."""
    top = float(np.max(np.abs(v)))
    spread = float(np.ptp(v))
    if top < _SQUARE_SAFE[0] or top > _SQUARE_SAFE[1]:
        raise UserError(f"The scale measure{where} is of magnitude {top:.3g}: its squares leave "
                        "double precision (under- or overflow), so R² cannot be computed. "
                        "Rescale the measure (e.g. use log10 of it, or other units).")
    if spread <= 64 * np.finfo(np.float64).eps * top:
        raise UserError(f"The scale measure{where} varies by {spread:.3g} around {top:.6g}: "
                        "within double-precision rounding of constant, so R² would measure "
                        "rounding noise. A scan needs images of clearly different scales "
                        "(or subtract the common offset first).")


# ------------------------------------------------------------------------------------------
# significance

PERMUTATION_TEST = "permutation"
PAIRED_TEST = "corrected-paired-t"
CORRECTION = "benjamini-hochberg"


def permutation_pvalue(observed: float, null) -> float:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + B)`` (never 0; NaN for
    a NaN statistic or an empty null). NaN null values (a permuted fit that could not be scored)
    count as not exceeding."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(observed) or null.size == 0:
        return float("nan")
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def corrected_paired_t(a, b, test_train_ratio: float) -> tuple[float, float]:
    """One-sided paired t-test of ``mean(a - b) > 0`` over repeated random splits, with the
    Nadeau & Bengio (2003) correction for overlapping training sets.

    The repeats share most of their training images, so their differences are positively
    correlated and the plain paired t-test (or Wilcoxon's signed-rank test, which also assumes
    independent pairs) overstates significance. The corrected statistic is
    ``mean(d) / sqrt((1/J + n_test/n_train) * var(d))`` with ``J - 1`` degrees of freedom; with
    ``test_train_ratio = 0`` it is exactly ``scipy.stats.ttest_rel(a, b, alternative="greater")``.

    Returns:
        (t statistic, p-value); NaN for fewer than 2 finite pairs.
    """
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    J = d.size
    if J < 2:
        return float("nan"), float("nan")
    mean, var = d.mean(), d.var(ddof=1)
    if var == 0:
        t = np.inf if mean > 0 else (-np.inf if mean < 0 else np.nan)
        p = 0.0 if mean > 0 else 1.0
        return float(t), float(p)
    t = mean / np.sqrt((1.0 / J + test_train_ratio) * var)
    return float(t), float(stats.t.sf(t, J - 1))


def bh_adjust(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as ``scipy.stats.false_discovery_control``); NaN
    entries (tests that could not be run) stay NaN and do not count in the number of tests."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    q = p[ok]
    order = np.argsort(q)
    ranked = q[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = np.clip(ranked, 0, 1)
    out[ok] = adj
    return out


def layer_tests(layers: list[str], p_shuffled: Mapping[str, float] | None,
                p_random: Mapping[str, float] | None, alpha: float = 0.05) -> dict[str, dict]:
    """Per layer: each test's raw and BH-adjusted p-value (each test corrected over the layers)
    and whether the layer is significant against every control that was tested (a layer must
    pass both tests: an intersection-union test, which needs no further correction).

    ``p_shuffled`` / ``p_random`` None: that test was not run; the layer's ``significant`` is
    then decided by the other test alone, and None when neither was run.
    """
    out: dict[str, dict] = {layer: {} for layer in layers}
    ran = []
    for key, ps in (("shuffled", p_shuffled), ("random_weights", p_random)):
        if ps is None:
            continue
        ran.append(key)
        raw = np.array([ps.get(layer, np.nan) for layer in layers], dtype=np.float64)
        adj = bh_adjust(raw)
        for layer, r, q in zip(layers, raw, adj):
            out[layer][key] = {"p": None if not np.isfinite(r) else float(r),
                               "p_adjusted": None if not np.isfinite(q) else float(q),
                               "significant": bool(np.isfinite(q) and q <= alpha)}
    for layer in layers:
        tests = [out[layer][k]["significant"] for k in ran]
        out[layer]["significant"] = None if not tests else bool(all(tests))
    return out

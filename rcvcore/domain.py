"""The training domain of a run: what its model saw, and whether a prediction lies inside it.

A model trained on 8x-20x patches still answers for a 40x patch, a blank tile or a photograph,
and with a confident probability. :class:`TrainingDomain` records, at the end of training (rank 0,
from the **training split only**), what the model can vouch for:

- the classes it was trained on (a magnification it never saw cannot be predicted);
- the range of the training measure (a predicted area beyond it is an extrapolation);
- the class means of the pooled features at the cut, standardised per channel with the
  training set's mean and std (floored at the median channel's std), and the ``quantile``
  (99 %) of the training images' distance to the nearest class mean (each training image's own
  class mean is computed without it, leave-one-out, so the threshold is that of an unseen image
  from the training distribution, not an in-sample one);
- for classification runs, the ``1 - quantile`` (1 %) quantile of the training images' maximum
  class probability.

:meth:`TrainingDomain.check` turns one prediction into ``(out_of_range, reasons, distance)``.
Distances are root-mean-square z-scores: ``||z - m_c|| / sqrt(n_features)``, so 1.0 means about
"one training std per channel away" whatever the width of the cut.

Everything here is NumPy (no torch); the run directory keeps it as ``domain.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import read_json
from .runs.directory import DOMAIN

#: the quantile of training distances (and 1 - it of training max-probabilities) kept as threshold
QUANTILE = 0.99
_ALL = "(all)"


@dataclass(frozen=True)
class TrainingDomain:
    """What a run's model was trained on (see the module docstring).

    Attributes:
        classes: the classes the model was trained on, in their natural order (may be empty).
        measure_min, measure_max: range of the training measure (regression runs), else None.
        measure_name: what the measure is (``nuclei_area_px``).
        feature_mean, feature_scale: per-channel standardisation of the pooled features.
        centroids: class -> mean standardised feature vector (``(all)`` when unlabelled).
        distance_threshold: ``quantile`` of the training images' nearest-centroid distances.
        min_probability: ``1 - quantile`` quantile of training max-probabilities
            (classification runs), else None.
        quantile: the quantile used.
        n_train: training images it was computed from.
    """

    classes: tuple[str, ...]
    measure_min: float | None
    measure_max: float | None
    measure_name: str
    feature_mean: tuple[float, ...]
    feature_scale: tuple[float, ...]
    centroids: tuple[tuple[str, tuple[float, ...]], ...]
    distance_threshold: float
    min_probability: float | None
    quantile: float
    n_train: int

    # ---- feature space
    def standardise(self, features: np.ndarray) -> np.ndarray:
        """(n, n_features) pooled features -> standardised (n, n_features)."""
        f = np.asarray(features, float)
        if f.ndim != 2 or f.shape[1] != len(self.feature_mean):
            raise ValueError(f"features have shape {f.shape}, but the training domain expects "
                             f"(n, {len(self.feature_mean)}): is this the run's own model?")
        return (f - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(n, n_features) pooled features -> (n,) RMS z-distance to the nearest class mean."""
        z = self.standardise(features)
        c = np.asarray([v for _, v in self.centroids], float)
        return np.sqrt(_sq_dist(z, c).min(axis=1) / z.shape[1])

    # ---- one prediction
    def check(self, *, features: np.ndarray | None = None, area: float | None = None,
              probabilities: dict[str, float] | None = None
              ) -> tuple[bool, list[str], float | None]:
        """``(out_of_range, reasons, feature_distance)`` of one prediction.

        Args:
            features: (n_tiles, n_features) pooled features of the image's tiles; the image's
                distance is the median over its tiles (one odd tile of a large image does not
                flag it, a patch whose tiles are mostly unlike training does).
            area: the predicted measure (regression runs).
            probabilities: class -> probability (classification runs).
        """
        reasons: list[str] = []
        dist = None
        if features is not None and len(features):
            dist = float(np.median(self.distances(features)))
            if dist > self.distance_threshold:
                reasons.append(
                    f"far from every training class in feature space (distance {dist:.2f}, "
                    f"{self.quantile:.0%} of training patches are within "
                    f"{self.distance_threshold:.2f})")
        if area is not None and self.measure_min is not None and self.measure_max is not None:
            lo, hi = self.measure_min, self.measure_max
            if not lo <= area <= hi:
                side = "below" if area < lo else "above"
                reasons.append(f"predicted {self.measure_name} {area:.1f} is {side} the training "
                               f"range {lo:.1f}-{hi:.1f}")
        if probabilities and self.min_probability is not None:
            p = max(probabilities.values())
            if p < self.min_probability:
                reasons.append(f"low confidence (max probability {p:.2f}; {self.quantile:.0%} of "
                               f"training patches reach {self.min_probability:.2f})")
        if reasons and self.classes:
            reasons.append(f"the model knows only {', '.join(self.classes)}: a magnification "
                           "outside these cannot be predicted")
        return bool(reasons), reasons, dist

    # ---- JSON
    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "measure_min": self.measure_min,
                "measure_max": self.measure_max, "measure_name": self.measure_name,
                "feature_mean": list(self.feature_mean),
                "feature_scale": list(self.feature_scale),
                "centroids": [[c, list(v)] for c, v in self.centroids],
                "distance_threshold": self.distance_threshold,
                "min_probability": self.min_probability, "quantile": self.quantile,
                "n_train": self.n_train}

    @classmethod
    def from_dict(cls, d: dict) -> TrainingDomain:
        return cls(classes=tuple(map(str, d["classes"])),
                   measure_min=_opt(d.get("measure_min")), measure_max=_opt(d.get("measure_max")),
                   measure_name=str(d.get("measure_name") or "measure"),
                   feature_mean=tuple(map(float, d["feature_mean"])),
                   feature_scale=tuple(map(float, d["feature_scale"])),
                   centroids=tuple((str(c), tuple(map(float, v))) for c, v in d["centroids"]),
                   distance_threshold=float(d["distance_threshold"]),
                   min_probability=_opt(d.get("min_probability")),
                   quantile=float(d.get("quantile", QUANTILE)), n_train=int(d.get("n_train", 0)))


def _opt(v) -> float | None:
    return None if v is None else float(v)


def _sq_dist(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, d), (k, d) -> (n, k) squared Euclidean distances."""
    return ((z[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)


def fit_domain(features: np.ndarray, *, labels=None, classes=(), measures=None,
               probabilities: np.ndarray | None = None, measure_name: str = "measure",
               quantile: float = QUANTILE) -> TrainingDomain:
    """The :class:`TrainingDomain` of a training split.

    Args:
        features: (n_train, n_features) pooled features of the training images.
        labels: the class of each training image, or None (one centroid for all).
        classes: the task's classes in their natural order.
        measures: (n_train,) training measures (regression runs), or None.
        probabilities: (n_train, n_classes) predicted class probabilities (classification).
        quantile: see :data:`QUANTILE`.
    """
    f = np.asarray(features, float)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"fit_domain needs (n >= 2, n_features) features, got {f.shape}")
    mean = f.mean(axis=0)
    std = f.std(axis=0)
    # channels are scaled by their std, but never by less than the median channel's: with
    # fewer training images than channels, a near-constant channel (one that never fires on
    # training patches) would otherwise dominate every distance (measured on the tiny run of
    # tests/test_domain.py: held-out in-distribution patches flagged 0 % instead of 2 %)
    pos = std[std > 0]
    scale = np.maximum(std, float(np.median(pos)) if pos.size else 1.0)
    z = (f - mean) / scale
    names = np.asarray([_ALL] * len(f) if labels is None else list(map(str, labels)))
    order = [c for c in classes if c in set(names)] or sorted(set(names))
    cents = np.stack([z[names == c].mean(axis=0) for c in order])
    d2 = _sq_dist(z, cents)
    # leave-one-out: the own class mean without the image is n/(n-1) as far from it
    counts = np.asarray([(names == c).sum() for c in order])
    own = np.asarray([order.index(c) for c in names])
    n_own = counts[own]
    rows = np.arange(len(z))
    d2[rows, own] = np.where(n_own > 1, d2[rows, own] * (n_own / np.maximum(n_own - 1, 1)) ** 2,
                             np.inf)   # a class of one image has no mean without it
    train_dist = np.sqrt(d2.min(axis=1) / z.shape[1])
    min_p = None
    if probabilities is not None and len(probabilities):
        min_p = float(np.quantile(np.asarray(probabilities, float).max(axis=1), 1 - quantile))
    m = None if measures is None else np.asarray(measures, float)
    return TrainingDomain(
        classes=tuple(map(str, classes)),
        measure_min=None if m is None or not m.size else float(m.min()),
        measure_max=None if m is None or not m.size else float(m.max()),
        measure_name=measure_name, feature_mean=tuple(map(float, mean)),
        feature_scale=tuple(map(float, scale)),
        centroids=tuple((c, tuple(map(float, v))) for c, v in zip(order, cents)),
        distance_threshold=float(np.quantile(train_dist, quantile)), min_probability=min_p,
        quantile=float(quantile), n_train=int(len(f)))


def read_domain(run_dir) -> TrainingDomain | None:
    """The run's :class:`TrainingDomain`, or None (a run trained before it was recorded, or a
    damaged file: predictions then carry no feature check)."""
    path = Path(run_dir) / DOMAIN
    if not path.is_file():
        return None
    try:
        return TrainingDomain.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None

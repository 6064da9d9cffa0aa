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
  class probability, and, at each end of the ordered classes (5x ... 40x), the ``quantile`` of
  the training patches' log-odds of that end class against its neighbour (``log p(20x) -
  log p(15x)``). A patch beyond the last class the model saw (a 40x patch for a model trained on
  8x-20x) is answered with that class and a confident probability, and its features can stay
  close to the class mean; its log-odds past the training range are what gives it away
  (bench/bench_domain.py: BENCHMARKS.md, "Training domain").

:meth:`TrainingDomain.check` turns one prediction into ``(out_of_range, reasons, distance)``.
Distances are root-mean-square z-scores: ``||z - m_c|| / sqrt(n_features)``, so 1.0 means about
"one training std per channel away" whatever the width of the cut.

Everything here is NumPy (no torch); the run directory keeps it as ``domain.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import read_json
from .runs.directory import DOMAIN

#: the quantile of training distances (and 1 - it of training max-probabilities) kept as threshold
QUANTILE = 0.99
#: validation images needed to take the probability thresholds from them (see fit_domain)
MIN_CALIBRATION = 10
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
        edges: ``(end class, neighbour, threshold)`` for the first and last of the ordered
            classes (classification runs): ``quantile`` of the training end-class patches'
            ``log p(end) - log p(neighbour)``.
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
    edges: tuple[tuple[str, str, float], ...] = ()

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
        reasons += self._edge_reasons(probabilities)
        if reasons and self.classes:
            reasons.append(f"the model knows only {', '.join(self.classes)}: a magnification "
                           "outside these cannot be predicted")
        return bool(reasons), reasons, dist

    def _edge_reasons(self, probabilities: dict[str, float] | None) -> list[str]:
        """A patch answered with the first / last class, more surely than training patches of
        that class were: probably beyond it (e.g. a higher magnification than any seen)."""
        if not probabilities:
            return []
        top = max(probabilities, key=probabilities.get)
        out = []
        for end, nb, thr in self.edges:
            if top != end or nb not in probabilities:
                continue
            odds = log_odds(probabilities[end], probabilities[nb])
            if odds > thr:
                where = "above" if end == self.classes[-1] else "below"
                out.append(f"beyond the training range of {end} (log-odds {end} vs {nb} "
                           f"{odds:.1f}; {self.quantile:.0%} of training {end} patches are "
                           f"under {thr:.1f}): the patch may be {where} {end}")
        return out

    # ---- JSON
    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "measure_min": self.measure_min,
                "measure_max": self.measure_max, "measure_name": self.measure_name,
                "feature_mean": list(self.feature_mean),
                "feature_scale": list(self.feature_scale),
                "centroids": [[c, list(v)] for c, v in self.centroids],
                "distance_threshold": self.distance_threshold,
                "min_probability": self.min_probability, "quantile": self.quantile,
                "n_train": self.n_train, "edges": [list(e) for e in self.edges]}

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
                   quantile=float(d.get("quantile", QUANTILE)), n_train=int(d.get("n_train", 0)),
                   edges=tuple((str(a), str(b), float(t)) for a, b, t in d.get("edges") or ()))


def log_odds(p_a: float, p_b: float) -> float:
    """``log p_a - log p_b`` with probabilities floored at 1e-300 (an underflowed 0 counts as
    very far, not as an error)."""
    return float(np.log(max(p_a, 1e-300)) - np.log(max(p_b, 1e-300)))


def _opt(v) -> float | None:
    return None if v is None else float(v)


def _sq_dist(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, d), (k, d) -> (n, k) squared Euclidean distances."""
    return ((z[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)


def fit_domain(features: np.ndarray, *, labels=None, classes=(), measures=None,
               probabilities: np.ndarray | None = None, calibration=None,
               measure_name: str = "measure", quantile: float = QUANTILE) -> TrainingDomain:
    """The :class:`TrainingDomain` of a training split.

    Args:
        features: (n_train, n_features) pooled features of the training images.
        labels: the class of each training image, or None (one centroid for all).
        classes: the task's classes in their natural order.
        measures: (n_train,) training measures (regression runs), or None.
        probabilities: (n_train, n_classes) predicted class probabilities (classification).
        calibration: ``(probabilities, labels)`` of the validation split, or None. When it
            holds at least :data:`MIN_CALIBRATION` images, the probability thresholds (lowest
            max-probability, end-class log-odds) come from it: a fine-tuned network is surer of
            its own training patches than of unseen ones (on the demo model, thresholds from
            the training split flagged 13 % of held-out test patches; BENCHMARKS.md).
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
    min_p, edges = None, ()
    if probabilities is not None and len(probabilities):
        probs, pnames = np.asarray(probabilities, float), names
        if calibration is not None and len(calibration[0]) >= MIN_CALIBRATION:
            probs = np.asarray(calibration[0], float)
            pnames = np.asarray(list(map(str, calibration[1])))
        min_p = float(np.quantile(probs.max(axis=1), 1 - quantile))
        edges = _edges(probs, pnames, tuple(map(str, classes)), quantile)
    m = None if measures is None else np.asarray(measures, float)
    return TrainingDomain(
        classes=tuple(map(str, classes)),
        measure_min=None if m is None or not m.size else float(m.min()),
        measure_max=None if m is None or not m.size else float(m.max()),
        measure_name=measure_name, feature_mean=tuple(map(float, mean)),
        feature_scale=tuple(map(float, scale)),
        centroids=tuple((c, tuple(map(float, v))) for c, v in zip(order, cents)),
        distance_threshold=float(np.quantile(train_dist, quantile)), min_probability=min_p,
        quantile=float(quantile), n_train=int(len(f)), edges=edges)


def _edges(probs: np.ndarray, names: np.ndarray, classes: tuple[str, ...], quantile: float
           ) -> tuple[tuple[str, str, float], ...]:
    """``(end, neighbour, quantile of log p(end) - log p(neighbour))`` over the training patches
    of each end class of ``classes`` (ordered; at least 3 classes, so that the ends are ends of
    a scale and not the two sides of a binary choice)."""
    if len(classes) < 3:
        return ()
    out = []
    for e, n in ((0, 1), (len(classes) - 1, len(classes) - 2)):
        rows = names == classes[e]
        if rows.sum() < 2:
            continue
        odds = [log_odds(p[e], p[n]) for p in probs[rows]]
        out.append((classes[e], classes[n], float(np.quantile(odds, quantile))))
    return tuple(out)


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

"""The peak of a scan as a plateau: which layers are not measurably below the best one.

:func:`plateau`: every layer's R² against the peak's, paired over the same repeated splits,
with the Nadeau-Bengio corrected one-sided t-test (:func:`rcvcore.rcv.corrected_paired_t`) and a
Benjamini-Hochberg correction over the layers compared; the layers whose adjusted p-value stays
above ``alpha`` are on the plateau (with the peak). :func:`peak_frequency`: in how many repeats
each layer has the highest R². :func:`earliest_on_plateau`: the cut rule ``earliest-plateau``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .rcv import LayerScore, bh_adjust, corrected_paired_t

TEST = "corrected-paired-t (Nadeau-Bengio), one-sided: peak above layer; Benjamini-Hochberg"


def plateau(scores: Sequence[LayerScore], peak: str, test_train_ratio: float,
            alpha: float = 0.05) -> dict:
    """The layers of ``scores`` not significantly below ``peak`` (the peak included).

    Returns:
        ``{"peak", "layers" (in the order of ``scores``), "p_below" (layer -> BH-adjusted
        p-value of "the peak is above this layer"; None for the peak or an untestable layer),
        "test", "alpha", "repeats"}``.
    """
    by_name = {s.layer: s for s in scores}
    top = by_name[peak]
    others = [s for s in scores if s.layer != peak]
    raw = np.array([corrected_paired_t(top.r2, s.r2, test_train_ratio)[1] for s in others],
                   dtype=np.float64)
    adj = bh_adjust(raw)
    p_below = {peak: None}
    for s, q in zip(others, adj):
        p_below[s.layer] = None if not np.isfinite(q) else float(q)
    # an untestable comparison (too few finite repeats) cannot separate a layer from the peak
    layers = [s.layer for s in scores
              if s.layer == peak or p_below[s.layer] is None or p_below[s.layer] > alpha]
    return {"peak": peak, "layers": layers, "p_below": p_below, "test": TEST,
            "alpha": float(alpha), "repeats": len(top.r2)}


def peak_frequency(scores: Sequence[LayerScore]) -> dict[str, float]:
    """Fraction of the repeats in which each layer has the highest held-out R² (repeats where
    every layer is NaN do not count; ties count for the first layer)."""
    if not scores:
        return {}
    R = np.array([s.r2 for s in scores], dtype=np.float64)          # (layers, repeats)
    ok = np.isfinite(R).any(axis=0)
    if not ok.any():
        return {s.layer: 0.0 for s in scores}
    best = np.nanargmax(np.where(np.isfinite(R[:, ok]), R[:, ok], -np.inf), axis=0)
    counts = np.bincount(best, minlength=len(scores))
    return {s.layer: float(c / ok.sum()) for s, c in zip(scores, counts)}


def earliest_on_plateau(order: Sequence[str], plateau_layers: Sequence[str],
                        qualifies) -> str | None:
    """The first layer of ``order`` (shallow to deep) on the plateau that ``qualifies`` (is
    significantly above the controls); None when none does."""
    on = set(plateau_layers)
    return next((name for name in order if name in on and qualifies(name)), None)

"""Seeded train / val / test splits of groups: the one implementation.

A *group* is what must not straddle two parts (a source image of histology patches, a patient of
BreakHis, a photograph of demo-scale crops). Two users assign groups to parts:

- dataset loaders that fix a split as part of the dataset (``Sample.split``: BreakHis patients,
  histology sources; option ``split_seed``, fractions 0.6 / 0.2 / 0.2, train drawn first);
- a training run on a dataset without a fixed split (:func:`rcvcore.train.split_dataset`'s
  fallback: ``--val-fraction`` / ``--test-fraction``, 0.15 each, test drawn first).

Both are :func:`split_groups`; ``order`` keeps each user's historical assignment, so existing
datasets and runs keep their splits.

Not to be confused with the scan's *repeated* two-way splits (:func:`rcvcore.rcv.make_splits`):
those resample train / held-out test many times (per class) to estimate a held-out R² and its
spread; a train / val / test split is drawn once. The validation part is scored after each epoch,
but the test metrics are those of the last epoch: it does not pick a checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .base import DatasetError

PARTS = ("train", "val", "test")


def split_groups(groups: Iterable[str], seed: int = 0,
                 fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), *,
                 order: tuple[str, str, str] = PARTS) -> dict[str, str]:
    """Assign each group to ``train``, ``val`` or ``test`` at random with a fixed ``seed``.

    The groups are sorted, permuted with ``numpy.random.default_rng(seed)``, and the permutation
    is cut into parts in ``order`` (the first part takes the first groups). ``val`` and ``test``
    get ``round(fraction * n_groups)`` groups, at least one each, and ``train`` the rest, at
    least one: whenever there are at least 3 groups every part is non-empty. With fewer, the
    groups go to train, then test, then val. The assignment depends only on the set of groups,
    ``seed``, ``fractions`` and ``order``, never on the order of ``groups``.

    Args:
        groups: group ids (repeats allowed: one entry per image is fine).
        seed: the split's seed.
        fractions: (train, val, test) fractions of groups, normalised by their sum; or
            ``(None, val, test)``: train takes the rest (val and test used as given).
        order: the parts in the order they take groups from the permutation.

    Raises:
        DatasetError: fractions that are not three non-negative numbers, or an ``order`` that is
            not a permutation of ``train``, ``val``, ``test``.
    """
    ids = sorted(set(groups))
    fractions = tuple(fractions)
    rest = len(fractions) == 3 and fractions[0] is None       # (None, val, test)
    given = fractions[1:] if rest else fractions
    if len(fractions) != 3 or min(given) < 0 or sum(given) <= 0 or (rest and sum(given) >= 1):
        raise DatasetError(f"split fractions must be three non-negative numbers (or None and "
                           f"two that sum below 1), got {fractions}.")
    if sorted(order) != sorted(PARTS):
        raise DatasetError(f"split order must be train, val and test in some order, got {order}.")
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(ids)
    if n < 3:
        return dict(zip(perm, ["train", "test", "val"][:n]))
    f = [None, *given] if rest else np.asarray(fractions, float) / sum(fractions)
    size = {"val": max(1, int(round(f[1] * n))), "test": max(1, int(round(f[2] * n)))}
    while n - size["val"] - size["test"] < 1:    # keep at least one training group
        size["val" if size["val"] >= size["test"] else "test"] -= 1
    size["train"] = n - size["val"] - size["test"]
    out, start = {}, 0
    for part in order:
        for g in perm[start:start + size[part]]:
            out[g] = part
        start += size[part]
    return out

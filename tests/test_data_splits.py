"""rcvcore.data.splits: one seeded train / val / test split of groups, for the loaders' fixed
splits and a training run's fallback split, each keeping its historical assignment."""
from __future__ import annotations

import numpy as np
import pytest

from rcvcore.data.base import Dataset, DatasetError, Sample
from rcvcore.data.histology import split_groups as histology_split_groups
from rcvcore.data.splits import split_groups
from rcvcore.train import split_dataset


def _loader_split_before(groups, seed=0, fractions=(0.6, 0.2, 0.2)):
    """``rcvcore.data.histology.split_groups`` as it was (BreakHis, histology patches) before it
    became rcvcore.data.splits': the reference that every dataset's fixed split must keep."""
    ids = sorted(set(groups))
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(ids)
    if n < 3:
        return dict(zip(perm, ["train", "test", "val"][:n]))
    f = np.asarray(fractions, float) / sum(fractions)
    n_val = max(1, int(round(f[1] * n)))
    n_test = max(1, int(round(f[2] * n)))
    while n - n_val - n_test < 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    n_train = n - n_val - n_test
    return {g: "train" if i < n_train else ("val" if i < n_train + n_val else "test")
            for i, g in enumerate(perm)}


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.7, 0.15, 0.15), (3, 1, 1),
                                       (0.5, 0.25, 0.25), (0.8, 0.1, 0.1), (1, 0, 1)])
def test_loaders_fixed_splits_are_unchanged(fractions):
    assert histology_split_groups is split_groups
    for n in (1, 2, 3, 4, 5, 6, 7, 10, 17, 40, 143):
        ids = [f"patient{i}" for i in range(n)]
        for seed in range(4):
            assert split_groups(ids, seed, fractions) == _loader_split_before(ids, seed,
                                                                              fractions)


def _grouped(n_groups: int) -> Dataset:
    return Dataset("t", "folder", "m", tuple(
        Sample(f"/x/{g}_{k}.png", 1.0, group=f"g{g:03d}") for g in range(n_groups)
        for k in range(2)))


def test_a_runs_fallback_split_is_split_groups_test_first():
    """split_dataset's own seeded group split (datasets without a fixed split) is exactly
    ``split_groups(groups, seed, (None, val, test), order=("test", "val", "train"))``, and so
    always keeps a training group: 4 or 6 groups at --val-fraction 0.45 --test-fraction 0.45
    (which TrainConfig allows) used to leave a run none."""
    for n in (3, 4, 5, 6, 7, 9, 10, 12, 25, 60):
        ds = _grouped(n)
        groups = ds.groups.tolist()
        for vf, tf in ((0.15, 0.15), (0.1, 0.3), (0.25, 0.25), (0.2, 0.1), (0.45, 0.45),
                       (0.49, 0.3)):
            for seed in range(3):
                run = split_dataset(ds, vf, tf, seed)
                part = split_groups(groups, seed, (None, vf, tf), order=("test", "val", "train"))
                for k in ("train", "val", "test"):
                    ours = np.flatnonzero(np.asarray([part[g] for g in groups]) == k)
                    np.testing.assert_array_equal(run[k], ours, err_msg=f"{n} {vf} {tf} {k}")
                    assert len(run[k]) > 0, (n, vf, tf, k)


def test_split_groups_order_sizes_and_bad_arguments():
    ids = [f"g{i}" for i in range(20)]
    a = split_groups(ids, 1, (0.6, 0.2, 0.2))
    b = split_groups(ids, 1, (0.6, 0.2, 0.2), order=("test", "val", "train"))
    for s in (a, b):
        assert sorted(s.values()).count("val") == 4 and list(s.values()).count("test") == 4
    assert a != b and split_groups(reversed(ids), 1) == a
    assert list(split_groups(ids, 1, (None, 0.25, 0.25)).values()).count("train") == 10
    with pytest.raises(DatasetError, match="three non-negative"):
        split_groups(ids, 0, (0.5, -0.1, 0.6))
    with pytest.raises(DatasetError, match="three non-negative"):
        split_groups(ids, 0, (None, 0.5, 0.5))
    with pytest.raises(DatasetError, match="split order"):
        split_groups(ids, 0, order=("train", "train", "test"))

"""rcvcore.data.splits: one seeded train / val / test split of groups, for the loaders' fixed
splits and a training run's fallback split, each keeping its historical assignment."""
from __future__ import annotations

import numpy as np
import pytest

from rcvcore.data.base import Dataset, DatasetError, Sample
from rcvcore.data.splits import split_groups
from rcvcore.train import split_dataset


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.7, 0.15, 0.15), (3, 1, 1),
                                       (0.5, 0.25, 0.25), (0.8, 0.1, 0.1), (1, 0, 1)])
def test_fixed_splits_have_the_stated_sizes_and_depend_on_the_seed_only(fractions):
    """A loader's fixed split: every group in one part; val and test hold round(fraction * n)
    groups (at least one each), train keeps at least one; the same seed gives the same
    split whatever the order of the ids, and the seeds do not all give the same one."""
    f = np.asarray(fractions, float) / sum(fractions)
    for n in (3, 4, 5, 6, 7, 10, 17, 40, 143):
        ids = [f"patient{i}" for i in range(n)]
        splits = [split_groups(ids, seed, fractions) for seed in range(4)]
        for seed, part in enumerate(splits):
            assert sorted(part) == sorted(ids) and set(part.values()) <= {"train", "val", "test"}
            count = {k: list(part.values()).count(k) for k in ("train", "val", "test")}
            want_val, want_test = max(1, round(f[1] * n)), max(1, round(f[2] * n))
            assert count["train"] >= 1
            if want_val + want_test < n:
                assert (count["val"], count["test"]) == (want_val, want_test), (n, seed)
            assert split_groups(list(reversed(ids)), seed, fractions) == part
        if n >= 5:
            assert any(p != splits[0] for p in splits[1:]), n


def test_fixed_splits_of_tiny_sets():
    assert split_groups(["a"], 0) == {"a": "train"}
    assert sorted(split_groups(["a", "b"], 0).values()) == ["test", "train"]


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

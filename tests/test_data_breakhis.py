"""BreakHis loader: layout, magnification classes, patient splits, broken files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import truncate, write_breakhis_tree, write_png

from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError


@pytest.fixture()
def tree(tmp_path):
    return write_breakhis_tree(tmp_path / "bh")


def test_breakhis_magnification_classes_and_measure(tree, tmp_path):
    ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", workers=1)
    assert ds.kind == "breakhis" and ds.label_name == "magnification"
    assert ds.classes == ["40x", "100x", "200x", "400x"]
    assert {c: int((ds.labels == c).sum()) for c in ds.classes} == dict.fromkeys(ds.classes, 12)
    for s in ds.samples:
        assert s.label == f"{int(s.measure)}x"
        assert f"/{int(s.measure)}X/" in s.path and Path(s.path).is_absolute()


def test_breakhis_splits_by_patient(tree, tmp_path):
    ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", workers=1)
    assert set(ds.groups) == {"14-22549AB", "14-9133", "14-3411F", "14-2523", "14-12204",
                              "14-13413"}
    per_patient = {}
    for s in ds.samples:
        per_patient.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in per_patient.values())
    # stratified by benign / malignant: each split holds one patient of each
    for split in ("train", "val", "test"):
        kinds = {"/benign/" in s.path for s in ds.samples if s.split == split}
        assert kinds == {True, False}
    again = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", seed=5, workers=1)
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]   # fixed seed


def test_breakhis_tumour_type_and_class_labels(tree, tmp_path):
    ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", label="tumour_type",
                      workers=1)
    assert ds.label_name == "tumour_type"
    assert ds.classes == ["adenosis", "fibroadenoma", "tubular_adenoma", "ductal_carcinoma",
                          "lobular_carcinoma", "mucinous_carcinoma"]
    ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", label="class",
                      magnifications="40,400", workers=1)
    assert ds.classes == ["benign", "malignant"]
    assert set(ds.measures) == {40.0, 400.0}
    with pytest.raises(DatasetError, match="Choose magnification, tumour_type or class"):
        load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", label="typo")


def test_breakhis_broken_files_are_skipped_and_named(tree, tmp_path):
    files = sorted(tree.rglob("*.png"))
    truncate(files[0], 0.5)
    files[1].write_bytes(b"\x89PNG not really")
    files[2].write_bytes(b"")
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", workers=2)
    assert len(ds) == 48 - 3
    assert {s.path for s in ds.skipped} == {str(f.resolve()) for f in files[:3]}
    text = " ".join(str(w.message) for w in rec)
    assert all(f.name in text for f in files[:3])
    # the verdicts are cached: a second load skips the same files without decoding them again
    with pytest.warns(UserWarning):
        again = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", workers=1)
    assert len(again) == len(ds) and len(again.skipped) == 3


def test_breakhis_wrong_layout_is_one_clear_error(tmp_path):
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetError, match="benign\\|malignant/SOB/<tumour type>/<patient>"):
        load_dataset(f"breakhis:{tmp_path / 'flat'}", cache_dir=tmp_path / "c")
    write_png(tmp_path / "f2" / "x.png")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset(f"breakhis:{tmp_path / 'f2' / 'x.png'}", cache_dir=tmp_path / "c")


def test_breakhis_measure_is_numeric(tree, tmp_path):
    ds = load_dataset(f"breakhis:{tree}", cache_dir=tmp_path / "c", workers=1)
    np.testing.assert_array_equal(np.unique(ds.measures), [40, 100, 200, 400])

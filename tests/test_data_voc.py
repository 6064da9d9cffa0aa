"""VOC loader: torchvision's layout, box-area measure per class, single-object option, splits."""
from __future__ import annotations

import pytest
from _data_fixtures import write_voc_tree

from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError


def _by(ds):
    return {(s.group, s.label): s for s in ds.samples}


def test_voc_measures_per_class_and_splits(tmp_path):
    root = write_voc_tree(tmp_path / "voc")
    ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", workers=1)
    assert ds.kind == "voc" and ds.label_name == "class"
    got = {k: s.measure for k, s in _by(ds).items()}
    assert got == {("a", "dog"): 0.25, ("b", "dog"): pytest.approx(0.1),
                   ("b", "cat"): pytest.approx(0.05), ("c", "cat"): pytest.approx(0.1),
                   ("d", "person"): 1.0}                      # c's dog is difficult: left out
    splits = {k: s.split for k, s in _by(ds).items()}
    assert splits[("a", "dog")] == "train" and splits[("c", "cat")] == "val"
    assert ds.classes == ["cat", "dog", "person"]


def test_voc_single_object_and_difficult(tmp_path):
    root = write_voc_tree(tmp_path / "voc")
    ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", classes="dog",
                      single_object=True, workers=1)
    assert [(s.group, s.measure) for s in ds.samples] == [("a", 0.25)]
    ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", classes=["dog"],
                      include_difficult=True, workers=1)
    assert {s.group for s in ds.samples} == {"a", "b", "c"}


def test_voc_accepts_devkit_and_year_folders(tmp_path):
    root = write_voc_tree(tmp_path / "voc", year="2007")
    for p in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2007"):
        ds = load_dataset(f"voc:{p}", cache_dir=tmp_path / "c", image_set="val", workers=1)
        assert {s.group for s in ds.samples} == {"c", "d"}
        assert {s.split for s in ds.samples} == {"val"}
    write_voc_tree(root, year="2012")
    with pytest.raises(DatasetError, match="--opt year=2007"):
        load_dataset(f"voc:{root}", cache_dir=tmp_path / "c")
    assert len(load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", year=2012, workers=1)) == 5


def test_voc_bad_items_skipped(tmp_path):
    root = write_voc_tree(tmp_path / "voc")
    d = root / "VOCdevkit" / "VOC2012"
    (d / "Annotations" / "b.xml").write_text("<annotation><size>")
    (d / "JPEGImages" / "d.jpg").write_bytes(b"garbage")
    (d / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\nd\ne\n")
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", workers=1)
    assert {s.group for s in ds.samples} == {"a", "c"}
    names = sorted(s.path.rsplit("/", 1)[-1] for s in ds.skipped)
    assert names == ["b.xml", "d.jpg", "e.xml"]
    text = " ".join(str(w.message) for w in rec)
    assert "b.xml" in text and "d.jpg" in text


def test_voc_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no VOC folder.*JPEGImages/, Annotations/"):
        load_dataset(f"voc:{tmp_path / 'empty'}", cache_dir=tmp_path / "c")
    root = write_voc_tree(tmp_path / "voc")
    with pytest.raises(DatasetError, match="unknown class 'dgo'.*Did you mean 'dog'"):
        load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", classes="dgo")
    with pytest.raises(DatasetError, match="image set .*test.txt not found.*train, trainval, val"):
        load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", image_set="test")


def test_voc_records_box_geometry_for_the_visible_measure(tmp_path):
    from rcvcore.data.boxes import visible_box_fraction
    from rcvcore.models import Preprocess
    from rcvcore.scan import seen_measures

    root = write_voc_tree(tmp_path / "voc")
    ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", workers=1)
    assert ds.info["box_measure"] == "visible"
    pre = Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3)
    y, name, unseen = seen_measures(ds, pre)
    assert name == "visible_box_area_fraction"
    for i, s in enumerate(ds.samples):
        w, h, boxes = ds.info["box_geometry"][(s.path, s.label)]
        assert y[i] == visible_box_fraction(boxes, w, h, resize=256, crop=224) or i in unseen

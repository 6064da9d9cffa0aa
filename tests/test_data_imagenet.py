"""ImageNet loader: box-area measure, class selection, annotation roots, skipped items."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _data_fixtures import (
    PAPER_WNIDS,
    expected_imagenet_fraction,
    truncate,
    voc_xml,
    write_imagenet_tree,
    write_jpeg,
)

from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError
from rcvcore.data.boxes import Box, largest_box_fraction, parse_voc_xml


def test_box_fraction_quarter_and_largest(tmp_path):
    assert largest_box_fraction([Box("a", 0, 0, 50, 40)], 100, 80) == 0.25
    assert largest_box_fraction([Box("a", 0, 0, 10, 10), Box("a", 0, 0, 50, 40)], 100, 80) == 0.25
    assert largest_box_fraction([Box("a", -10, -10, 200, 200)], 100, 80) == 1.0   # clipped
    assert largest_box_fraction([], 100, 80) is None
    p = tmp_path / "a.xml"
    p.write_text(voc_xml("a.JPEG", 100, 80, [("n1", 0, 0, 50, 40, 1)]))
    ann = parse_voc_xml(p)
    assert (ann.width, ann.height) == (100, 80) and ann.boxes[0].difficult


def test_imagenet_default_classes_and_measures(tmp_path):
    root = write_imagenet_tree(tmp_path / "in")
    ds = load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", workers=1)
    assert ds.kind == "imagenet" and ds.measure_name == "box_area_fraction"
    assert ds.label_name == "wnid" and ds.classes == list(PAPER_WNIDS)
    assert len(ds) == 9
    for s in ds.samples:
        k = int(Path(s.path).stem.split("_")[1])
        assert s.measure == pytest.approx(expected_imagenet_fraction(k))
    quarter = [s for s in ds.samples if s.path.endswith("n02058221_1.JPEG")][0]
    assert quarter.measure == 0.25


def test_imagenet_parent_folder_and_all_classes(tmp_path):
    write_imagenet_tree(tmp_path / "in")
    ds = load_dataset(f"imagenet:{tmp_path / 'in'}", cache_dir=tmp_path / "c", classes="all",
                      workers=1)
    assert ds.classes == sorted(PAPER_WNIDS + ("n99999999",))


def test_imagenet_separate_annotation_root(tmp_path):
    root = write_imagenet_tree(tmp_path / "in", xml_beside=False)
    # PATH/train with PATH/Annotation next to it is found by itself
    ds = load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", workers=1)
    assert len(ds) == 9
    moved = tmp_path / "boxes"
    shutil.move(str(tmp_path / "in" / "Annotation"), moved)
    ds = load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", annotations=str(moved),
                      classes="n01608432", workers=1)
    assert len(ds) == 3 and ds.classes == ["n01608432"]


def test_imagenet_kaggle_layout(tmp_path):
    base = tmp_path / "kaggle" / "ILSVRC"
    write_jpeg(base / "Data" / "CLS-LOC" / "train" / "n02058221" / "n02058221_7.JPEG")
    ann = base / "Annotations" / "CLS-LOC" / "train" / "n02058221"
    ann.mkdir(parents=True)
    (ann / "n02058221_7.xml").write_text(voc_xml("x", 100, 80, [("n02058221", 0, 0, 50, 40)]))
    ds = load_dataset(f"imagenet:{tmp_path / 'kaggle'}", cache_dir=tmp_path / "c",
                      classes="n02058221", workers=1)
    assert ds.measures.tolist() == [0.25]


def test_imagenet_bad_items_skipped_and_counted(tmp_path):
    root = write_imagenet_tree(tmp_path / "in")
    cls = root / "n02058221"
    (cls / "n02058221_0.xml").unlink()                              # no box
    (cls / "n02058221_1.xml").write_text("<annotation><object>")    # does not parse
    truncate(cls / "n02058221_2.JPEG", 0.4)                         # truncated image
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", workers=1)
    assert len(ds) == 6
    assert ds.info["n_without_box"] == 1
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"n02058221_0.JPEG", "n02058221_1.xml", "n02058221_2.JPEG"}
    assert "no bounding-box" in reasons["n02058221_0.JPEG"]
    assert "does not parse" in reasons["n02058221_1.xml"]
    text = " ".join(str(w.message) for w in rec)
    assert "n02058221_1.xml" in text and "n02058221_2.JPEG" in text
    assert "1 image(s) without a bounding box" in text


def test_imagenet_errors(tmp_path):
    root = write_imagenet_tree(tmp_path / "in")
    with pytest.raises(DatasetError, match="n01608433 not found.*Did you mean 'n01608432'"):
        load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", classes="n01608433")
    with pytest.raises(DatasetError, match="not a WordNet id"):
        load_dataset(f"imagenet:{root}", cache_dir=tmp_path / "c", classes="albatross")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no WordNet-id class folder.*Expected PATH/<wnid>"):
        load_dataset(f"imagenet:{tmp_path / 'empty'}", cache_dir=tmp_path / "c")


def test_visible_box_fraction_with_a_box_half_outside_the_crop(tmp_path):
    """A 600x200 image resized to 224 px (short side) and centre-cropped to 224: the network sees
    x in [200, 400). A box over x in [150, 250) is half outside: it covers 1/8 of what the
    network sees, against 1/12 of the whole image."""
    import numpy as np
    from PIL import Image

    from rcvcore.data.boxes import crop_window, visible_box_fraction
    from rcvcore.models import Preprocess
    from rcvcore.scan import seen_measures

    box = (150, 0, 250, 100)
    assert crop_window(600, 200, 224, 224)[:4] == pytest.approx((200, 0, 400, 200))
    assert visible_box_fraction([box], 600, 200, resize=224, crop=224) == pytest.approx(0.125)
    assert visible_box_fraction([(0, 0, 100, 100)], 600, 200, resize=224, crop=224) == 0.0
    assert visible_box_fraction([], 600, 200, resize=224, crop=224) is None
    # the network's own preprocessing agrees: count the box's pixels in its input
    root = tmp_path / "in" / "n02058221"
    root.mkdir(parents=True)
    arr = np.zeros((200, 600, 3), np.uint8)
    arr[0:100, 150:250] = 255
    Image.fromarray(arr).save(root / "n02058221_1.png")
    (root / "n02058221_1.xml").write_text(voc_xml("n02058221_1.png", 600, 200,
                                                  [("n02058221", *box)]))
    pre = Preprocess(224, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest")
    seen = pre(Image.open(root / "n02058221_1.png").convert("RGB"))[0].numpy()
    assert (seen > 0.5).mean() == pytest.approx(0.125, abs=0.005)
    ds = load_dataset(f"imagenet:{tmp_path / 'in'}", cache_dir=tmp_path / "c", workers=1,
                      classes="n02058221")
    assert ds.samples[0].measure == pytest.approx(1 / 12)           # the loader's image fraction
    y, name, unseen = seen_measures(ds, pre)
    assert y[0] == pytest.approx(0.125) and name == "visible_box_area_fraction" and not unseen
    # the whole-image measure on request (a pipeline that resizes the whole image)
    whole = load_dataset(f"imagenet:{tmp_path / 'in'}", cache_dir=tmp_path / "c", workers=1,
                         classes="n02058221", box_measure="image")
    assert seen_measures(whole, pre)[0][0] == pytest.approx(1 / 12)
    with pytest.raises(DatasetError, match="box_measure must be 'visible'"):
        load_dataset(f"imagenet:{tmp_path / 'in'}", cache_dir=tmp_path / "c", workers=1,
                     classes="n02058221", box_measure="crop")
    # a box the crop hides entirely is left out of the scan, with the reason
    (root / "n02058221_1.xml").write_text(voc_xml("n02058221_1.png", 600, 200,
                                                  [("n02058221", 0, 0, 100, 100)]))
    hidden = load_dataset(f"imagenet:{tmp_path / 'in'}", cache_dir=tmp_path / "c2", workers=1,
                          classes="n02058221")
    assert "outside the network's 224 px centre crop" in seen_measures(hidden, pre)[2][0]

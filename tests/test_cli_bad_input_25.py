"""The command-line bad-input cases of issue 25.5: each ends in one line (argparse's error, a
UserError, a named skip) or a correct result, never a traceback or a silent wrong answer."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from _data_fixtures import write_voc_tree

from rcvcore.cli import _show_warning, main
from rcvcore.data import load_dataset
from rcvcore.data.base import DatasetError
from rcvcore.data.boxes import AnnotationError, parse_voc_xml
from rcvcore.errors import Notice, UserError
from rcvcore.rcv import check_measure


@pytest.mark.parametrize("argv, words", [
    (["scan", "--arch", "resnet18", "--dataset", "demo-scale", "--seed", "1_000"],
     "'1_000' is not a seed"),                              # int() reads it as 1000
    (["scan", "--arch", "resnet18", "--dataset", "demo-scale", "--seed", "-1"],
     "give a seed between 0 and"),
    (["scan", "--arch", "resnet18", "--dataset", "demo-scale", "--seed", str(2**70)],
     "out of range"),
    (["scan", "--arch", "resnet18", "--dataset", "demo-scale", "--alpha", "nan"],
     "not a plain decimal number"),
    (["scan", "--arch", "resnet18", "--dataset", "demo-scale", "--n", "2.5"], "not a count"),
    (["train", "--workers", "-1"], "-1 is out of range: give a count >= 0"),
    (["train", "--lr", "inf"], "not a plain decimal number"),
    (["train", "--lr", "0"], "give a number > 0"),
    (["train", "--image-size", "100000"], "an image size in px between 8 and 4096"),
    (["predict", "--run", "x", "--max-tiles", "0", "a.png"], "give a count >= 1"),
])
def test_numbers_out_of_their_range_are_argument_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_path_of_an_unknown_user_is_one_line(tmp_path, capsys):
    assert main(["inspect", "--dataset", "folder:~no_such_user_rcv25/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "~no_such_user_rcv25" in err


def test_a_line_break_in_a_name_cannot_forge_a_line():
    buf = io.StringIO()
    _show_warning(Notice("skipped /d/a.png\nwarning: all checks passed"), Notice, "f", 1,
                  file=buf)
    assert buf.getvalue() == "warning: skipped /d/a.png\\nwarning: all checks passed\n"


def test_voc_ids_that_are_paths_are_skipped_not_read(tmp_path):
    """An absolute id in ImageSets once read a file outside the VOC tree."""
    root = write_voc_tree(tmp_path / "voc")
    d = root / "VOCdevkit" / "VOC2012"
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(d / "Annotations" / "a.xml", outside / "x.xml")
    shutil.copy(d / "JPEGImages" / "a.jpg", outside / "x.jpg")
    (d / "ImageSets" / "Main" / "trainval.txt").write_text(
        f"a\n{outside / 'x'}\n../../../outside/x\n")
    with pytest.warns(UserWarning) as rec:
        ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", workers=1)
    assert {s.group for s in ds.samples} == {"a"}
    assert all("outside" not in s.path for s in ds.samples)
    assert sum("is a path, not an image id" in str(w.message) for w in rec) == 2


def test_a_non_utf8_image_set_list_is_read_with_a_notice(tmp_path):
    root = write_voc_tree(tmp_path / "voc")
    lst = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"
    lst.write_bytes(b"a\nb\n\xe9t\xe9\n")                # latin-1 bytes, not UTF-8
    with pytest.warns(Notice, match="not UTF-8"):
        ds = load_dataset(f"voc:{root}", cache_dir=tmp_path / "c", workers=1)
    assert {"a", "b"} <= {s.group for s in ds.samples}


@pytest.mark.parametrize("xml, words", [
    ("<size><width>1e999</width><height>10</height></size><object><name>dog</name><bndbox>"
     "<xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>", None),
    ("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>1e999</xmax>"
     "<ymax>5</ymax></bndbox></object>", "not a pixel coordinate"),
    ("<object><name>dog</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>3</xmax>"
     "<ymax>5</ymax></bndbox></object>", "not a pixel coordinate"),
])
def test_overflowing_numbers_in_box_xml(tmp_path, xml, words):
    p = tmp_path / "a.xml"
    p.write_text(f"<annotation>{xml}</annotation>")
    if words is None:                    # an absurd image size reads as unknown (0 x 0)
        ann = parse_voc_xml(p)
        assert (ann.width, ann.height) == (0, 0) and len(ann.boxes) == 1
    else:
        with pytest.raises(AnnotationError, match=words):
            parse_voc_xml(p)


@pytest.mark.parametrize("y, words", [
    (np.array([1e-300, 2e-300, 3e-300, 4e-300]), "magnitude 4e-300"),      # was NaN R², exit 0
    (np.array([1e200, 2e200, 3e200]), "under- or overflow"),
    (np.array([1.0, np.nextafter(1.0, 2.0)] * 4), "rounding"),            # was 0.000 ± 0.000
    (np.array([1e9, 1e9 + 1e-6] * 3), "rounding"),
])
def test_measures_float64_cannot_resolve_are_refused_with_the_cause(y, words):
    with pytest.raises(UserError, match=words):
        check_measure(y)


def test_ordinary_measures_still_pass():
    for y in (np.array([0.0, 1.0, 2.0]), np.array([1e-5, 3e-5]), np.array([1e9, 1e9 + 10])):
        check_measure(y)


def test_an_empty_dataset_spec_path_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError):
        load_dataset("folder:~no_such_user_rcv25/x", cache_dir=tmp_path)


def _mixed_folder(root):
    """A folder table with every kind of row: good images, missing files, a sub-folder, a
    symlink inside and one pointing out, '..', an absolute path, a bad scale, a detour."""
    from _train_fixtures import write_folder

    write_folder(root, n=6)
    (root / "sub").mkdir()
    for name in ("extra.png", "abs.png", "detour.png"):
        (root / name).write_bytes((root / "im000.png").read_bytes())
    (root / "link.png").symlink_to(root / "extra.png")
    (root.parent / "out.png").write_bytes((root / "im001.png").read_bytes())
    (root / "out_link.png").symlink_to(root.parent / "out.png")
    rows = (root / "labels.csv").read_text().splitlines()
    rows += ["missing.png,3.0,a,g9", "sub,3.0,a,g9", "link.png,5.0,a,g8",
             "out_link.png,5.0,a,g7", "../out.png,5.0,a,g6", f"{root / 'abs.png'},1,a,g5",
             "./im003.png,nan,a,g4", "sub/../detour.png,7.5,a,g3"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_large_table_is_checked_by_lookup_with_the_same_result(tmp_path, monkeypatch):
    """The folder listing used for long tables gives exactly what the per-row checks give."""
    import warnings

    import rcvcore.data.folder as folder

    root = _mixed_folder(tmp_path / "ds")
    results = []
    for walk_rows in (10**9, 0):               # per-row checks, then the listing for every row
        monkeypatch.setattr(folder, "WALK_ROWS", walk_rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = folder.load(root, cache_dir=tmp_path / "c", workers=1)
            results.append((ds.samples, ds.skipped))
    assert results[0] == results[1]
    samples, skipped = results[0]
    assert len(samples) == 9 and len(skipped) == 5   # + link inside, absolute, detour


def test_a_long_table_of_missing_files_gives_one_summary(tmp_path):
    import time
    import warnings

    from rcvcore.data.folder import MAX_SKIP_WARNINGS, load

    root = tmp_path / "ds"
    from _train_fixtures import write_folder

    write_folder(root, n=6)
    lines = (root / "labels.csv").read_text().splitlines()
    lines += [f"nothere{i}.png,{1 + i % 4}" for i in range(60_000)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    t0 = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(root, cache_dir=tmp_path / "c", workers=1)
    cpu = time.process_time() - t0
    assert len(ds.samples) == 6 and len(ds.skipped) == 60_000
    assert len(caught) == MAX_SKIP_WARNINGS + 1
    assert "59,980 more item(s) skipped (59,980 file not found" in str(caught[-1].message)
    assert cpu < 20, cpu     # about 0.5 s of CPU; minutes when each row was resolved and warned

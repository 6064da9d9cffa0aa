"""``python -m rcvcore datasets`` and ``inspect``: listing, the JSON contract, user errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _data_fixtures import write_imagenet_tree, write_janowczyk_tree, write_voc_tree

from rcvcore.cli import main
from rcvcore.cli.data import parse_options

KINDS = ("janowczyk", "demo-histology", "demo-he", "breakhis", "imagenet", "voc")


def test_datasets_lists_every_kind_with_a_description(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for k in KINDS:
        line = next(ln for ln in out.splitlines() if ln.split()[0].split(":")[0] == k)
        assert len(line.split(None, 1)[1]) > 20
    assert "janowczyk:PATH" in out and "demo-histology " in out
    assert main(["datasets", "--options"]) == 0
    out = capsys.readouterr().out
    assert "group_by='image'" in out and "min_tissue=0.15" in out


def _check_contract(data: dict):
    assert set(data) == {"dataset", "n_items", "skipped", "classes", "measure", "splits"}
    assert set(data["measure"]) == {"name", "by_class"}
    assert set(data["splits"]) == {"train", "val", "test"}
    for st in data["measure"]["by_class"].values():
        assert set(st) == {"count", "mean", "min", "max"}
    for s in data["skipped"]:
        assert set(s) == {"path", "reason"}
    assert sum(data["classes"].values()) == data["n_items"]


def test_inspect_janowczyk_json(tmp_path, capsys):
    root = write_janowczyk_tree(tmp_path / "jan", n_images=3)
    out = tmp_path / "out" / "summary.json"
    rc = main(["inspect", "--dataset", f"janowczyk:{root}", "--json", str(out),
               "--cache-dir", str(tmp_path / "c"), "--opt", "magnifications=20,40",
               "--opt", "workers=1"])
    assert rc == 0
    data = json.loads(out.read_text())
    _check_contract(data)
    assert data["dataset"] == f"janowczyk:{root}"
    assert data["n_items"] == 15
    assert data["classes"] == {"20x": 3, "40x": 12}
    assert list(data["measure"]["by_class"]) == ["20x", "40x"]
    assert data["measure"]["name"] == "nuclei_area_px"
    assert data["measure"]["by_class"]["40x"]["mean"] == pytest.approx(317, rel=0.02)
    assert data["splits"] == {"train": 5, "val": 5, "test": 5}
    text = capsys.readouterr().out
    assert "20x" in text and "nuclei_area_px" in text and "train 5" in text


def test_inspect_imagenet_json_counts_skips(tmp_path, capsys):
    root = write_imagenet_tree(tmp_path / "in")
    (root / "n01608432" / "n01608432_0.xml").unlink()
    out = tmp_path / "s.json"
    rc = main(["inspect", "--dataset", f"imagenet:{root}", "--json", str(out),
               "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    # the loader's warning is printed once, as a one-line "warning:" (not Python's format)
    err = capsys.readouterr().err
    assert "warning: imagenet: 1 image(s) without a bounding box" in err
    assert "UserWarning" not in err
    data = json.loads(out.read_text())
    _check_contract(data)
    assert data["classes"] == {"n02058221": 3, "n01608432": 2, "n04037443": 3}
    assert data["measure"]["by_class"]["n02058221"]["max"] == 0.25
    assert data["measure"]["by_class"]["n02058221"]["min"] == pytest.approx(0.0625)
    assert [Path(s["path"]).name for s in data["skipped"]] == ["n01608432_0.JPEG"]
    assert data["splits"] == {"train": 0, "val": 0, "test": 0}


def test_inspect_voc_with_options_and_n(tmp_path, capsys):
    root = write_voc_tree(tmp_path / "voc")
    out = tmp_path / "s.json"
    assert main(["inspect", "--dataset", f"voc:{root}", "--json", str(out), "--cache-dir",
                 str(tmp_path / "c"), "--opt", "classes=dog,cat", "--opt",
                 "single_object=false", "--n", "3"]) == 0
    data = json.loads(out.read_text())
    _check_contract(data)
    assert data["n_items"] == 3 and set(data["classes"]) <= {"dog", "cat"}


@pytest.mark.parametrize("argv, match", [
    (["--dataset", "janowczyk:/definitely/not/here"], "does not exist"),
    (["--dataset", "imagenett:/x"], "Did you mean 'imagenet'"),
    (["--dataset", "demo-histology", "--opt", "novalue"], "--opt expects KEY=VALUE"),
    (["--dataset", "demo-histology", "--opt", "colour=red"],
     "unknown option .colour.*Valid options: tiles"),
])
def test_inspect_user_errors_exit_2(argv, match, capsys, tmp_path):
    assert main(["inspect", "--cache-dir", str(tmp_path / "c")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert __import__("re").search(match, err)


def test_inspect_wrong_layout_names_the_expected_one(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["inspect", "--dataset", f"breakhis:{tmp_path / 'empty'}"]) == 2
    assert "benign|malignant/SOB" in capsys.readouterr().err


def test_parse_options():
    assert parse_options(["a=1", "b=0.5", "c=true", "d=n1,n2", "e=none", "f-g=x"]) == {
        "a": 1, "b": 0.5, "c": True, "d": "n1,n2", "e": None, "f_g": "x"}


@pytest.mark.slow   # a fresh interpreter imports torch through the other commands
def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rcvcore", "datasets"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "breakhis:PATH" in r.stdout

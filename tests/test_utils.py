"""rcvcore._utils and rcvcore._files: the low-level helpers every module shares."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from rcvcore._files import atomic_path, atomic_write, json_safe, read_json, write_json
from rcvcore._shared import closest
from rcvcore._utils import as_list, downloads_disabled, parallel_map


@pytest.mark.parametrize("value, off", [("1", True), ("yes", True), ("true", True),
                                        ("anything", True), ("", False), ("0", False),
                                        ("false", False), ("no", False), (None, False)])
def test_downloads_disabled_one_meaning(monkeypatch, value, off):
    if value is None:
        monkeypatch.delenv("RCV_NO_DOWNLOAD", raising=False)
    else:
        monkeypatch.setenv("RCV_NO_DOWNLOAD", value)
    assert downloads_disabled() is off


def test_closest_and_as_list():
    assert "'resnet50'" in closest("resnet05", ["resnet50", "vgg16"])
    assert closest("zzz", ["resnet50"]) == ""
    assert as_list(None) == [] and as_list("a, b,,c;d") == ["a", "b", "c", "d"]
    assert as_list(("x ", 3)) == ["x", 3] and as_list(7) == [7]


def _square(x):
    return x * x


def test_parallel_map_keeps_order():
    items = [(i,) for i in range(7)]
    assert parallel_map(_square, items, workers=2) == [i * i for i in range(7)]
    seen = []
    assert parallel_map(_square, items, workers=1, progress=lambda f, m: seen.append(f)) \
        == [i * i for i in range(7)]
    assert seen[-1] == 1.0


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "a.txt", "hello")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_path(tmp_path / "c.npy", lambda p: np.save(p, np.arange(3)))
    write_json(tmp_path / "d.json", {"x": math.nan, "y": np.float32(1.5), "z": (1, np.int64(2))})
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]
    assert read_json(tmp_path / "d.json") == {"x": None, "y": 1.5, "z": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.npy", "d.json"]
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None
    assert json.dumps(json_safe({"a": [math.inf]})) == '{"a": [null]}'


def test_a_failed_write_keeps_the_old_file(tmp_path):
    atomic_write(tmp_path / "a.txt", "old")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_path(tmp_path / "a.txt", boom)
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]

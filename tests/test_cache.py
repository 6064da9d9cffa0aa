"""rcvcore._cache: a generic store (arrays, JSON, prefixes) and the cache root's sections."""
from __future__ import annotations

import numpy as np
import pytest

from rcvcore._cache import (
    SECTIONS,
    ActivationCache,
    ActivationKey,
    Extraction,
    Store,
    cache_usage,
    clear_cache,
)


def test_store_arrays_json_and_prefixes(tmp_path):
    with Store(tmp_path / "s") as s:
        s.put("a:1", {"x": np.arange(4, dtype=np.float32)})
        s.put_json("b:1", {"k": [1, 2]})
        s.put_json("b:2", [3])
        assert s.get("a:1")["x"].tolist() == [0, 1, 2, 3]
        assert s.get_json("b:1") == {"k": [1, 2]} and s.get("nope") is None
        assert s.count("b:") == 2 and s.count() == 3
        assert s.clear("b:") == 2 and s.keys() == ["a:1"] and s.volume() > 0
    assert {r["section"] for r in cache_usage(tmp_path)} == set(SECTIONS)


def test_activation_cache_counts_and_rejects_bad_entries(tmp_path):
    key = ActivationKey("resnet18", "w", "add_2", "gap", "p", "imgs")
    entry = Extraction({"add_2": np.ones((2, 3), np.float32)}, np.array([0, 2]), ((1, "bad"),))
    with ActivationCache(tmp_path / "activations") as c:
        assert c.get(key, 3) is None
        c.put(key, entry)
        got = c.get(key, 3)
        assert list(got.features) == ["add_2"] and got.features["add_2"].shape == (2, 3)
        assert got.failed == ((1, "bad"),) and got.ok.tolist() == [0, 2]
        assert c.get(key, 4) is None            # another dataset size: a miss, and dropped
        assert (c.hits, c.misses) == (1, 2) and c.store.count("act:") == 0
    usage = {r["section"]: r for r in cache_usage(tmp_path)}
    assert usage["activations"]["entries"] == 0 and usage["activations"]["prefixes"] == {}


def test_clear_all_removes_every_section_including_image_checks(tmp_path):
    for name in ("activations", "image-checks", "demo-scale"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    removed = clear_cache(tmp_path, "all")
    assert sorted(removed) == sorted(str(tmp_path / n)
                                     for n in ("activations", "image-checks", "demo-scale"))
    assert list(tmp_path.iterdir()) == []


def test_activation_entries_written_before_the_one_record_type_still_read(tmp_path):
    # the on-disk value of an activation entry, as every earlier version wrote it
    key = ActivationKey("resnet18", "w", "add_2", "gap", "p", "imgs")
    feats = np.arange(6, dtype=np.float32).reshape(2, 3)
    with ActivationCache(tmp_path / "activations") as c:
        c.store.put(key.digest(), {"features": feats, "ok": [0, 2], "failed": [[1, "bad"]]})
        got = c.get(key, 3)
        np.testing.assert_array_equal(got.features["add_2"], feats)
        assert got.ok.tolist() == [0, 2] and got.failed == ((1, "bad"),)
        c.put(key, got)                          # and what it writes is that same value
        raw = c.store.get(key.digest())
        assert raw["ok"] == [0, 2] and raw["failed"] == [[1, "bad"]]
        np.testing.assert_array_equal(raw["features"], feats)


def test_extraction_merges_only_records_of_the_same_images():
    a = Extraction({"l1": np.ones((2, 1))}, np.array([0, 2]), ((1, "bad"),))
    b = Extraction({"l2": np.zeros((2, 4))}, np.array([0, 2]), ((1, "other words"),))
    c = Extraction({"l2": np.zeros((3, 4))}, np.array([0, 1, 2]), ())
    assert a.same_images(b) and not a.same_images(c)
    assert set(a.merged(b).features) == {"l1", "l2"}
    with pytest.raises(ValueError, match="different readable images"):
        a.merged(c)

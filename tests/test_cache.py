"""rcvcore.cache: a generic store (arrays, JSON, prefixes) and the cache root's sections."""
from __future__ import annotations

import numpy as np

from rcvcore.cache import (
    SECTIONS,
    ActivationCache,
    ActivationKey,
    CachedActivations,
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
    entry = CachedActivations(np.ones((2, 3), np.float32), np.array([0, 2]), ((1, "bad"),))
    with ActivationCache(tmp_path / "activations") as c:
        assert c.get(key, 3) is None
        c.put(key, entry)
        got = c.get(key, 3)
        assert got.features.shape == (2, 3) and got.failed == ((1, "bad"),)
        assert c.get(key, 4) is None            # another dataset size: a miss, and dropped
        assert (c.hits, c.misses) == (1, 2) and c.store.count("act:") == 0
    usage = {r["section"]: r for r in cache_usage(tmp_path)}
    assert usage["activations"]["entries"] == 0 and usage["activations"]["prefixes"] == {}


def test_clear_all_removes_every_section_including_image_checks(tmp_path):
    for name in ("activations", "image-checks", "demo-scale"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    assert "image-checks" in SECTIONS
    removed = clear_cache(tmp_path, "all")
    assert sorted(removed) == sorted(str(tmp_path / n)
                                     for n in ("activations", "image-checks", "demo-scale"))
    assert list(tmp_path.iterdir()) == []

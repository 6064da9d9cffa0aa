"""rcvcore.scan.activations: one record (Extraction) from the extractor, the cache and the scan."""
from __future__ import annotations

import numpy as np

from rcvcore._cache import ActivationCache, ActivationKey, Extraction
from rcvcore._extract import FeatureExtractor, extract
from rcvcore.data import load_dataset
from rcvcore.data.base import fingerprint
from rcvcore.models import resolve_backbone
from rcvcore.scan import activations


def _key(bb, layer, ds):
    return ActivationKey(bb.arch, bb.fingerprint, layer, "gap", bb.preprocess.fingerprint,
                         fingerprint(ds))


def test_fresh_cached_and_partly_cached_passes_give_one_record(scale_folder, cache_dir):
    ds = load_dataset(f"folder:{scale_folder}", n=8)
    bb = resolve_backbone("resnet18", "random", 0)
    ref = extract(FeatureExtractor(bb.build(), bb.spec, ["add_1", "add_2", "add_3"]),
                  ds.paths, bb.preprocess)
    with ActivationCache(cache_dir / "activations") as cache:
        first, secs = activations(bb, ["add_1", "add_2"], ds, device="cpu", cache=cache)
        assert isinstance(first, Extraction) and secs > 0
        assert (cache.hits, cache.misses) == (0, 2)
        assert first.ok.tolist() == list(range(8)) and first.failed == ()
        again, secs = activations(bb, ["add_1", "add_2"], ds, device="cpu", cache=cache)
        assert (cache.hits, cache.misses, secs) == (2, 2, 0.0)
        # one cached layer, one new: the cached rows and the fresh ones are of the same images
        mixed, _ = activations(bb, ["add_2", "add_3"], ds, device="cpu", cache=cache)
    assert list(mixed.features) == ["add_2", "add_3"] and mixed.same_images(ref)
    for layer in ("add_1", "add_2"):
        np.testing.assert_array_equal(again.features[layer], first.features[layer])
        np.testing.assert_allclose(first.features[layer], ref.features[layer], rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(mixed.features["add_3"], ref.features["add_3"], rtol=1e-5,
                               atol=1e-6)


def test_a_cached_layer_of_other_readable_images_is_redone_not_misaligned(scale_folder,
                                                                          cache_dir):
    ds = load_dataset(f"folder:{scale_folder}", n=8)
    bb = resolve_backbone("resnet18", "random", 0)
    with ActivationCache(cache_dir / "activations") as cache:
        true, _ = activations(bb, ["add_1"], ds, device="cpu", cache=cache)
        # an entry recorded when image 0 could not be read (rows 1..7), under the same key
        stale = Extraction({"add_1": true.features["add_1"][1:]}, np.arange(1, 8),
                           ((0, "truncated"),))
        cache.put(_key(bb, "add_1", ds), stale)
        got, _ = activations(bb, ["add_1", "add_2"], ds, device="cpu", cache=cache)
        assert got.ok.tolist() == list(range(8)) and got.failed == ()
        np.testing.assert_allclose(got.features["add_1"], true.features["add_1"], rtol=1e-5,
                                   atol=1e-6)
        healed = cache.get(_key(bb, "add_1", ds), len(ds))      # and the entry is rewritten
        assert healed.ok.tolist() == list(range(8))

"""Shared fixtures: offline guards, a seeded RNG, a folder of small generated images."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The checkout under test: first on the path of this process (pyproject's ``pythonpath``) and
#: of every process a test starts (``python -m rcvcore``, streamlit), from any working directory.
ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(ROOT):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
os.environ.setdefault("RCV_NO_DOWNLOAD", "1")   # tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")    # nor does timm's Hugging Face hub client


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rcv_cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory, _session_cache):
    """No downloads, and a private TORCH_HOME, Hugging Face cache and rcvcore cache so a user's
    cached weights never leak in and no test writes into the user's cache."""
    monkeypatch.setenv("RCV_CACHE_DIR", str(_session_cache))
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    return d


def make_scale_folder(root, n=24, size=96, seed=0, classes=None, groups=True):
    """Write ``n`` images whose bright square's side grows with ``scale``, plus labels.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scale = float(rng.uniform(0.1, 0.9))
        img = np.full((size, size, 3), 30, np.uint8)
        img += rng.integers(0, 20, size=img.shape, dtype=np.uint8)
        side = max(2, int(scale * size))
        x0 = int(rng.integers(0, size - side + 1))
        y0 = int(rng.integers(0, size - side + 1))
        img[y0:y0 + side, x0:x0 + side] = (220, 180, 60)
        name = f"img_{i:03d}.png"
        Image.fromarray(img).save(root / name)
        row = {"path": name, "scale": f"{scale:.6f}"}
        if classes:
            row["class"] = classes[i % len(classes)]
        if groups:
            row["group"] = f"g{i % 8}"
        rows.append(row)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def scale_folder(tmp_path):
    return make_scale_folder(tmp_path / "scale_folder")


@pytest.fixture
def app_env(tmp_path, monkeypatch):
    """Dashboard environment: private caches and runs, no ImageNet weights, no downloads."""
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("RCV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached ImageNet weights
    return tmp_path


def widget(at, kind, key):
    """The AppTest widget of type ``kind`` (``selectbox``, ``radio`` ...) with ``key``."""
    for w in getattr(at, kind):
        if w.key == key:
            return w
    raise AssertionError(f"no {kind} with key {key!r}; have {[w.key for w in getattr(at, kind)]}")

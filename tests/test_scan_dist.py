"""A scan sharded over 2 processes by torchrun (gloo, CPU) equals the single-process scan."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_scale_folder

from rcvcore.scan import ScanConfig, run_scan

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def _torchrun(args, cache, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "rcvcore", "scan",
           *args, "--cache-dir", str(cache), "--json", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text()), r


@pytest.mark.slow
def test_sharded_scan_equals_single_process_and_warm_run_does_no_forward(tmp_path):
    data = make_scale_folder(tmp_path / "d", n=26, size=64)     # 26: shards of 13 and 13
    common = dict(arch="resnet18", weights="random", dataset=f"folder:{data}",
                  layers="add_2,add_6,pre_softmax", repeats=3, device="cpu", batch_size=8)
    single = run_scan(ScanConfig(**common, cache_dir=str(tmp_path / "c1")))
    args = ["--arch", "resnet18", "--weights", "random", "--dataset", f"folder:{data}",
            "--layers", "add_2,add_6,pre_softmax", "--repeats", "3", "--device", "cpu",
            "--batch-size", "8", "--n-images", "26"]
    dist, r = _torchrun(args, tmp_path / "c2", tmp_path / "d.json")
    assert r.stdout.count("suggested cut") <= 1          # rank 0 alone prints the table
    assert dist["n_images"] == single.n_images == 26
    assert dist["timing"]["world_size"] == 2 and dist["timing"]["devices"] == ["cpu", "cpu"]
    assert single.timing["world_size"] == 1
    for ours, ref in zip(dist["layers"], single.layers):
        np.testing.assert_allclose(ours["r2"], ref.r2, rtol=1e-6, atol=1e-8)
    for kind, key in (("shuffled", "shuffled"), ("random_weights", "random_weights")):
        for ours, ref in zip(dist["controls"][kind], single.controls[key]):
            np.testing.assert_allclose(ours["r2"], ref.r2, rtol=1e-6, atol=1e-8)
    # warm: other scoring, same activations -> every layer from rank 0's cache, no forward pass
    warm_args = [a if a != "3" else "2" for a in args]      # --repeats 2
    warm, _ = _torchrun(warm_args, tmp_path / "c2",
                        tmp_path / "w.json")
    assert warm["cache"]["misses"] == 0 and warm["cache"]["hits"] == 6
    assert warm["timing"]["extract_s"] == 0.0

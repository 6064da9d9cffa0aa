"""The scan end to end: CLI contract, cache behaviour, bad input."""
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_scale_folder
from PIL import Image

from rcvcore.cli import main
from rcvcore.data import load_dataset
from rcvcore.scan import ScanConfig, run_scan

LAYERS = "add_1,add_4,add_8"


def _args(folder, cache, *extra):
    return ["scan", "--arch", "resnet18", "--weights", "random", "--dataset", f"folder:{folder}",
            "--layers", LAYERS, "--repeats", "3", "--cache-dir", str(cache), "--quiet", *extra]


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    from rcvcore.models import build_model

    model, _ = build_model("resnet18", "random", seed=123)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    return path


def test_cli_json_contract_and_warm_cache(scale_folder, cache_dir, tmp_path, capsys, checkpoint):
    out = tmp_path / "scan.json"
    csv_out = tmp_path / "scan.csv"
    args = _args(scale_folder, cache_dir, "--json", str(out), "--csv", str(csv_out))
    args[args.index("random")] = str(checkpoint)
    assert main(args) == 0
    d = json.loads(out.read_text())
    for key in ("arch", "weights", "dataset", "n_images", "skipped", "layers", "controls",
                "timing", "cache"):
        assert key in d
    assert d["arch"] == "resnet18" and d["n_images"] == 24 and d["skipped"] == []
    assert [l["name"] for l in d["layers"]] == LAYERS.split(",")
    for row in d["layers"]:
        assert set(row) >= {"name", "n_features", "r2", "r2_mean", "r2_std", "r2_logmeanexp"}
        assert len(row["r2"]) == 3
        assert row["r2_mean"] == pytest.approx(np.mean(row["r2"]))
    assert [l["name"] for l in d["controls"]["shuffled"]] == LAYERS.split(",")
    assert [l["name"] for l in d["controls"]["random_weights"]] == LAYERS.split(",")
    assert set(d["timing"]) >= {"extract_s", "fit_s"}
    # 3 layers x (true + random weights)
    assert d["cache"] == {"hits": 0, "misses": 6, "result": "miss"}
    assert "add_4" in capsys.readouterr().out
    assert csv_out.read_text().startswith("kind,layer,depth,n_features,r2_mean")

    # a repeated scan does no forward pass and returns the same numbers
    out2 = tmp_path / "scan2.json"
    args[args.index(str(out))] = str(out2)
    assert main(args) == 0
    d2 = json.loads(out2.read_text())
    assert d2["cache"] == {"hits": 6, "misses": 0, "result": "hit"}
    assert d2["timing"] == {"extract_s": 0.0, "fit_s": 0.0, "world_size": 1, "devices": ["cpu"]}
    assert d2["layers"] == d["layers"] and d2["controls"] == d["controls"]
    assert "nothing recomputed" in capsys.readouterr().out

    # other scoring settings: every activation from the cache, the R² refitted
    out3 = tmp_path / "scan3.json"
    args[args.index(str(out2))] = str(out3)
    args[args.index("--repeats") + 1] = "4"
    assert main(args) == 0
    d3 = json.loads(out3.read_text())
    assert d3["cache"] == {"hits": 6, "misses": 0, "result": "miss"}
    assert d3["timing"]["extract_s"] == 0.0 and len(d3["layers"][0]["r2"]) == 4


def test_changed_image_or_measure_is_never_stale(scale_folder, cache_dir):
    cfg = ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                     layers="add_2", repeats=2, controls=(), cache_dir=str(cache_dir))
    first = run_scan(cfg)
    assert first.cache["misses"] == 1
    img = scale_folder / "img_000.png"
    Image.new("RGB", (96, 96), (255, 0, 0)).save(img)
    os.utime(img, ns=(1, 1))   # even with an odd mtime, the size changed
    assert run_scan(cfg).cache["misses"] == 1
    labels = scale_folder / "labels.csv"
    labels.write_text(labels.read_text().replace("img_001.png,0.", "img_001.png,1."))
    assert run_scan(cfg).cache["misses"] == 1
    assert run_scan(cfg).cache["hits"] == 1


def test_corrupt_cache_entry_is_recomputed(scale_folder, cache_dir):
    cfg = ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                     layers="add_2", repeats=2, controls=(), cache_dir=str(cache_dir))
    ref = run_scan(cfg)
    # overwrite every stored value (inline in SQLite or in a file) with garbage
    for root, _, files in os.walk(cache_dir / "activations"):
        for f in files:
            if f.endswith(".val"):
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
    con = sqlite3.connect(cache_dir / "activations" / "cache.db")
    with con:
        changed = con.execute("update Cache set value = ? where filename is null",
                              (b"garbage",)).rowcount
    con.close()
    assert changed >= 1 or any(f.endswith(".val") for _, _, fs in
                               os.walk(cache_dir / "activations") for f in fs)
    again = run_scan(cfg)
    assert again.cache == {"hits": 0, "misses": 1, "result": "miss"}
    assert again.layers[0].r2 == ref.layers[0].r2


def test_unreadable_file_is_skipped_and_named(scale_folder, cache_dir, tmp_path, capsys):
    (scale_folder / "img_003.png").write_bytes(b"truncated")
    out = tmp_path / "s.json"
    code = main(_args(scale_folder, cache_dir, "--controls", "none", "--json", str(out)))
    assert code == 0
    assert "img_003.png" in capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["n_images"] == 23
    assert len(d["skipped"]) == 1 and d["skipped"][0].endswith("img_003.png")
    assert d["controls"] == {"shuffled": [], "random_weights": []}
    # scored again from the result cache: the file is still named in a warning and in skipped
    assert main(_args(scale_folder, cache_dir, "--controls", "none", "--json", str(out))) == 0
    assert "img_003.png" in capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["cache"]["result"] == "hit" and d["skipped"][0].endswith("img_003.png")


@pytest.mark.parametrize("extra,message", [
    (["--arch", "inceptionv3"], "Did you mean 'inception_v3'"),
    (["--layers", "add_99"], "no probe layer 'add_99'"),
    (["--dataset", "demo-scal"], "Did you mean 'demo-scale'"),
    (["--controls", "shufled"], "Did you mean 'shuffled'"),
    (["--weights", "imagenet"], "resnet18-f37072fd.pth"),
])
def test_bad_input_exits_2_with_closest_names(scale_folder, cache_dir, capsys, extra, message):
    args = _args(scale_folder, cache_dir)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_constant_measure_and_too_few_images_fail_before_extraction(tmp_path, cache_dir, capsys):
    from conftest import make_scale_folder

    folder = make_scale_folder(tmp_path / "const", n=12)
    labels = folder / "labels.csv"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join([rows[0]] + [",".join([r.split(",")[0], "0.5"] + r.split(",")[2:])
                                             for r in rows[1:]]) + "\n")
    assert main(_args(folder, cache_dir)) == 2
    assert "constant" in capsys.readouterr().err
    assert not (cache_dir / "activations").exists()
    small = make_scale_folder(tmp_path / "small", n=4, groups=False)
    assert main(_args(small, cache_dir)) == 2
    assert "Too few images" in capsys.readouterr().err


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "rcvcore", "scan", "--arch", "resnet50",
                        "--dataset", "demo-scale", "--cache-dir", str(tmp_path / "c")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "resnet50-0676ba61.pth" in r.stderr and "Traceback" not in r.stderr


def test_demo_scale_is_deterministic_and_exact(cache_dir):
    from rcvcore.data import load_dataset

    a = load_dataset("demo-scale", n=20, seed=1, cache_dir=cache_dir)
    b = load_dataset("demo-scale", n=20, seed=1, cache_dir=cache_dir / "other")
    assert np.array_equal(a.measures, b.measures)
    assert a.measures.min() >= 0 and a.measures.max() <= 2   # log2 of zoom 1..4
    # default protocol: each photograph a class (the paper's per-class protocol), no groups
    assert len(set(a.labels)) == 16 and a.groups is None and a.label_name == "photo"
    assert Image.open(a.paths[0]).size == (256, 256)
    # across photographs: no classes, grouped by photograph; the very same crops
    c = load_dataset("demo-scale", n=20, seed=1, cache_dir=cache_dir, protocol="across-photos")
    assert c.labels is None and len(set(c.groups)) == 16
    assert np.array_equal(c.measures, a.measures) and c.paths == a.paths
    with pytest.raises(Exception, match="across-photos"):
        load_dataset("demo-scale", n=20, cache_dir=cache_dir, protocol="per-image")


def test_no_cache_neither_reads_nor_writes(scale_folder, cache_dir, tmp_path):
    out = tmp_path / "n.json"
    args = _args(scale_folder, cache_dir, "--no-cache", "--controls", "none", "--json", str(out))
    assert main(args) == 0
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert d["cache"] == {"hits": 0, "misses": 3, "result": "off"}
    assert d["timing"]["extract_s"] > 0
    assert not (cache_dir / "activations").exists()


def test_random_weights_control_differs_from_a_random_scan(scale_folder, cache_dir):
    cfg = ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                     layers="add_2", repeats=2, controls=("random-weights",),
                     cache_dir=str(cache_dir))
    r = run_scan(cfg)
    assert r.layers[0].r2 != r.controls["random_weights"][0].r2


def test_result_cache_is_exact_and_never_stale(tmp_path, cache_dir):
    """A scan scored before comes back from the result cache with every number (per-class R²
    and the log-mean-exp included); a changed checkpoint or image is scored again."""
    import torch
    from conftest import make_scale_folder

    from rcvcore.models import build_model

    folder = make_scale_folder(tmp_path / "data", n=32, classes=["a", "b"])
    ckpt = tmp_path / "w.pth"
    torch.save(build_model("resnet18", "random", seed=5)[0].state_dict(), ckpt)
    cfg = ScanConfig(arch="resnet18", weights=str(ckpt), dataset=f"folder:{folder}",
                     layers="add_2,add_6", repeats=2, controls=("shuffled",),
                     cache_dir=str(cache_dir))
    first = run_scan(cfg)
    again = run_scan(cfg)
    assert again.cache["result"] == "hit"
    assert again.to_json()["layers"] == first.to_json()["layers"]
    assert again.to_json()["controls"] == first.to_json()["controls"]
    assert len(first.layers[0].r2_by_class) == 2
    assert again.layers[0].logmeanexp == first.layers[0].logmeanexp
    assert again.suggest_cut() == first.suggest_cut()
    # a new checkpoint file under the same path: activations and scores recomputed
    torch.save(build_model("resnet18", "random", seed=6)[0].state_dict(), ckpt)
    changed = run_scan(cfg)
    assert changed.cache == {"hits": 0, "misses": 2, "result": "miss"}
    assert changed.layers[0].r2 != first.layers[0].r2
    # a changed image: scored again
    Image.new("RGB", (96, 96), (0, 0, 255)).save(folder / "img_003.png")
    assert run_scan(cfg).cache["result"] == "miss"
    assert run_scan(cfg).cache["result"] == "hit"
    from rcvcore._cache import Store
    from rcvcore.scan import RESULT_PREFIX

    with Store(cache_dir / "activations") as store:
        assert store.clear(RESULT_PREFIX) >= 1
    rescored = run_scan(cfg)
    assert rescored.cache == {"hits": 2, "misses": 0, "result": "miss"}


def test_cache_command_reports_and_clears(scale_folder, cache_dir, capsys):
    cfg = ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                     layers="add_2", repeats=2, controls=(), cache_dir=str(cache_dir))
    run_scan(cfg)
    assert main(["cache", "--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 saved scan results" in out and "activations" in out
    assert main(["cache", "--cache-dir", str(cache_dir), "--clear", "results"]) == 0
    assert "0 saved scan results" in capsys.readouterr().out
    assert run_scan(cfg).cache == {"hits": 1, "misses": 0, "result": "miss"}
    assert main(["cache", "--cache-dir", str(cache_dir), "--clear", "activations"]) == 0
    assert not (cache_dir / "activations").exists()
    assert run_scan(cfg).cache == {"hits": 0, "misses": 1, "result": "miss"}


# ------------------------------------------------------------------------------------------
# honest statistics (issue 10)


def _noise_folder(tmp_path):
    from conftest import make_scale_folder

    folder = make_scale_folder(tmp_path / "noise", n=30)
    labels = folder / "labels.csv"
    rows = labels.read_text().splitlines()
    rng = np.random.default_rng(42)
    out = [rows[0]]
    for r in rows[1:]:
        parts = r.split(",")
        parts[1] = f"{rng.uniform(0.1, 0.9):.6f}"    # a measure the images know nothing of
        out.append(",".join(parts))
    labels.write_text("\n".join(out) + "\n")
    return folder


def test_pure_noise_gets_no_suggested_cut(tmp_path, cache_dir, capsys):
    folder = _noise_folder(tmp_path)
    out = tmp_path / "noise.json"
    assert main(_args(folder, cache_dir, "--json", str(out), "--permutations", "99")) == 0
    printed = capsys.readouterr().out
    assert "suggested cut" not in printed.replace("No suggested cut", "")
    assert "No suggested cut" in printed and "p shuf" in printed and "p rand" in printed
    d = json.loads(out.read_text())
    assert d["suggested_cut"] is None and d["suggested_cut_rule"] == "peak"
    assert "significantly above its controls" in d["suggested_cut_reason"]
    assert d["significance"]["vs_shuffled"]["permutations"] == 99
    assert d["significance"]["not_run"] == []
    for row in d["layers"]:          # the old keys are all still there, the tests are extra
        assert set(row) >= {"name", "n_features", "r2", "r2_mean", "r2_std", "r2_logmeanexp",
                            "r2_by_class", "alphas", "significance", "significant"}
        sh, rw = row["significance"]["vs_shuffled"], row["significance"]["vs_random_weights"]
        assert sh["test"] == "permutation" and rw["test"] == "corrected-paired-t"
        assert 1 / 100 <= sh["p"] <= 1 and 0 <= rw["p"] <= 1
        assert sh["p_adjusted"] >= sh["p"] and row["significance"]["alpha"] == 0.05
        assert row["significant"] is False
    # the shuffled control reports the penalties it used, not the true fit's
    assert [r["alphas"] for r in d["controls"]["shuffled"]] != [r["alphas"] for r in d["layers"]]
    # the same numbers after a JSON round trip (the result cache, the dashboard)
    from rcvcore.scan import ScanResult

    back = ScanResult.from_json(d)
    assert back.suggest_cut() == (None, d["suggested_cut_reason"])
    assert json.dumps(back.to_json()) == json.dumps(d)     # every key, both tests run
    # a plateau is reported, but no rule cuts a network on noise
    assert set(d["plateau"]["layers"]) <= {r["name"] for r in d["layers"]}
    assert sum(d["peak_frequency"].values()) == pytest.approx(1.0)
    plat = dataclasses.replace(back, config=dataclasses.replace(back.config,
                                                                cut_rule="earliest-plateau"))
    assert plat.suggest_cut()[0] is None


def test_controls_none_says_which_tests_were_not_run(scale_folder, cache_dir):
    cfg = ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                     layers="add_2,add_6", repeats=3, controls=(), cache_dir=str(cache_dir))
    r = run_scan(cfg)
    cut, reason = r.suggest_cut()
    assert "Not run: the shuffled-measure permutation test" in reason
    assert "random-weights paired test" in reason
    d = r.to_json()
    assert d["significance"]["not_run"] == ["vs_shuffled", "vs_random_weights"]
    assert all(row["significant"] is None for row in d["layers"])
    assert d["suggested_cut"] == cut
    # only the random-weights control: the cut rests on its test alone, and says so
    r2 = run_scan(dataclasses.replace(cfg, controls=("random-weights",)))
    reason2 = r2.suggest_cut()[1]
    assert "Not run: the shuffled-measure permutation test" in reason2
    assert "random-weights paired test" not in reason2.split("Not run:")[1]
    # a saved scan (the dashboard's, the result cache's) loads back as the same result
    for result in (r, r2):
        _assert_round_trip(result)


def _assert_round_trip(r):
    """``ScanResult.from_json`` of ``r``'s JSON text is ``r``, field by field, and writes the
    same JSON and CSV."""
    from rcvcore.scan import ScanResult

    back = ScanResult.from_json(json.loads(json.dumps(r.to_json())))
    for f in dataclasses.fields(ScanResult):
        assert getattr(back, f.name) == getattr(r, f.name), f.name
    for a, b in zip(back.layers + sum(back.controls.values(), ()),
                    r.layers + sum(r.controls.values(), ()), strict=True):
        assert a.to_json() == b.to_json()   # also what LayerScore's equality leaves out
    assert json.dumps(back.to_json()) == json.dumps(r.to_json())
    assert back.to_csv() == r.to_csv()


def test_cut_rules_on_a_result(scale_folder, cache_dir):
    from rcvcore.rcv import LayerScore
    from rcvcore.scan import ScanResult

    def score(name, mean, std=0.01):
        return LayerScore(name, 8, (mean - std, mean + std))

    layers = (score("add_1", 0.3), score("add_2", 0.8, 0.1), score("add_3", 0.75),
              score("add_4", 0.5), score("pre_softmax", 0.95))
    tests = {s.layer: {"p_shuffled": 0.001, "p_random_weights": 0.001} for s in layers}
    tests["add_3"]["p_random_weights"] = 0.9
    res = ScanResult(config=ScanConfig(arch="resnet18"), dataset="x", measure_name="m",
                     n_images=10, skipped=(), layers=layers, controls={}, depth={},
                     tests=tests, test_info={"permutations": 999})
    assert res.suggest_cut()[0] == "add_2"                  # the peak, logits excluded
    res2 = dataclasses.replace(res, config=ScanConfig(arch="resnet18", cut_rule="within-std"))
    assert res2.suggest_cut()[0] == "add_2"     # add_3: within one std, not significant
    tests["add_3"]["p_random_weights"] = 0.001
    assert res2.suggest_cut()[0] == "add_3"
    assert "within-std" in res2.suggest_cut()[1]
    strict = dataclasses.replace(res, config=ScanConfig(arch="resnet18", alpha=0.0001))
    assert strict.suggest_cut()[0] is None
    with pytest.raises(Exception, match="within-std"):
        ScanConfig(cut_rule="last").validate()


def test_histology_pools_by_default_and_per_class_can_be_forced():
    from rcvcore.data.base import Dataset, Sample
    from rcvcore.scan import scoring_mode

    samples = tuple(Sample(f"/x/{i}.png", float(i), ["5x", "10x"][i % 2]) for i in range(10))
    hist = Dataset("h", "janowczyk", "nuclei_area_px", samples, label_name="magnification",
                   pooled_by_default=True)
    other = Dataset("o", "imagenet", "box_area_fraction", samples, label_name="wnid")
    assert scoring_mode(ScanConfig(), hist)[0] is False
    assert "proxy of the measure" in scoring_mode(ScanConfig(), hist)[1]
    assert scoring_mode(ScanConfig(per_class=True), hist)[0] is True
    assert scoring_mode(ScanConfig(), other)[0] is True
    assert scoring_mode(ScanConfig(per_class=False), other)[0] is False


def test_janowczyk_family_declares_pooled_scoring(tmp_path):
    from _data_fixtures import write_janowczyk_tree

    from rcvcore.data import load_dataset

    root = write_janowczyk_tree(tmp_path / "j", n_images=1, size=224)
    ds = load_dataset(f"janowczyk:{root}", cache_dir=tmp_path / "c", workers=1,
                      magnifications="20,40")
    assert ds.pooled_by_default and ds.label_name == "magnification"


def test_per_class_with_tiny_classes_fails_before_extraction(tmp_path, cache_dir, capsys):
    from conftest import make_scale_folder

    folder = make_scale_folder(tmp_path / "cls", n=30, classes=["a", "b", "c", "d", "e"],
                               groups=False)
    assert main(_args(folder, cache_dir, "--per-class")) == 2
    err = capsys.readouterr().err
    assert "class 'a'" in err and "test set would hold 2 images" in err
    assert "--no-per-class" in err and "Traceback" not in err
    assert not (cache_dir / "activations").exists()


def test_scan_config_is_hashable_with_dataset_options():
    a = ScanConfig(arch="resnet18", dataset_options={"protocol": "across-photos"})
    b = ScanConfig(arch="resnet18", dataset_options={"protocol": "across-photos"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(a) != hash(ScanConfig(arch="resnet18"))


def test_skipped_files_are_typed_warnings(tmp_path):
    import warnings as _w

    from rcvcore.errors import Notice, SkippedFile

    root = make_scale_folder(tmp_path / "d", n=20, size=48)
    (root / "img_000.png").write_bytes(b"broken")
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        load_dataset(f"folder:{root}", cache_dir=tmp_path / "c")
    skipped = [w for w in caught if issubclass(w.category, SkippedFile)]
    assert len(skipped) == 1 and issubclass(SkippedFile, Notice)
    assert "img_000.png" in str(skipped[0].message)


def test_progress_names_each_pass_and_never_goes_back(scale_folder, cache_dir):
    seen = []
    run_scan(ScanConfig(arch="resnet18", weights="random", dataset=f"folder:{scale_folder}",
                        layers="add_1,add_8", repeats=2, permutations=0, cache_dir=str(cache_dir)),
             progress=lambda f, msg: seen.append((f, msg)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # the image count restarts with the control's pass: each message says which pass it is
    counts = [m for _, m in seen if "extracted" in m]
    assert counts and all(m.startswith(("pass 1/2 (network): ",
                                        "pass 2/2 (random-weights control): ")) for m in counts)
    assert any(m.startswith("pass 2/2") for m in counts)
    assert any(m.startswith("fitting: ") for _, m in seen)


def test_the_last_feature_layer_is_never_suggested_as_a_cut():
    from rcvcore.rcv import LayerScore
    from rcvcore.scan import ScanResult

    # efficientnet_lite0's "head" is its last feature map: cut there, it is the full network
    layers = (LayerScore("block5.0", 8, (0.5, 0.52)), LayerScore("block6.0", 8, (0.6, 0.62)),
              LayerScore("head", 8, (0.9, 0.92)), LayerScore("pre_softmax", 8, (0.95, 0.97)))
    tests = {s.layer: {"p_shuffled": 0.001, "p_random_weights": 0.001} for s in layers}
    res = ScanResult(config=ScanConfig(arch="efficientnet_lite0"), dataset="x",
                     measure_name="m", n_images=10, skipped=(), layers=layers, controls={},
                     depth={}, tests=tests, test_info={"permutations": 999})
    assert res.full_layers() == {"head"}
    assert res.suggest_cut()[0] == "block6.0"

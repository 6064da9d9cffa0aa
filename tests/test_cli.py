"""The command-line entry point: every command module is registered, none is lost silently."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rcvcore.cli as cli

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {"models", "layers", "datasets", "inspect", "scan", "train", "compare", "predict",
            "runs", "cancel", "cache"}


def test_every_command_is_registered():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert COMMANDS <= set(sub.choices)


def test_a_missing_command_module_is_an_error(monkeypatch):
    # a renamed or deleted command module must fail loudly, not drop its commands
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "no_such_command"])
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


@pytest.mark.parametrize("command", ["", "scan", "train", "compare", "runs", "demo", "layers"])
def test_help_imports_no_torch(command):
    # `--help` must be instant: the commands import torch, timm and the registry only to run
    code = ("import sys, contextlib, io\nfrom rcvcore.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    try: main({[c for c in (command, '--help') if c]!r})\n"
            "    except SystemExit: pass\n"
            "assert 'usage:' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_train_and_compare_defaults_are_the_dashboards():
    from rcvcore.cli.train import _config_from
    from rcvcore.models import weights_available

    for argv in (["train", "--run-dir", "r"], ["compare", "--cuts", "none,block3.0",
                                                "--run-dir", "r"]):
        cfg = _config_from(cli.build_parser().parse_args(argv))
        # the dashboard's architecture, whose ImageNet weights install offline; a step line
        # per step as the dashboard's runs; the full network when no cut is given
        assert (cfg.arch, cfg.log_every, cfg.cut) == ("efficientnet_lite0", 1, "none")
        assert weights_available(cfg.arch)[0]


@pytest.mark.parametrize("argv, message", [
    (["train", "--cut", "head"], "equals the full network"),
    (["compare", "--cuts", "none,head"], "equals the full network"),
    (["compare", "--cuts", "none,none"], "names none twice"),
    (["compare", "--arch", "inception_v3", "--cuts", "none,mixed10"], "equals the full network"),
])
def test_a_pruned_model_equal_to_the_full_one_is_refused(tmp_path, capsys, argv, message):
    code = cli.main([*argv, "--weights", "random", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "--cut none" in err or "twice" in err
    # refused before any run was written (train only claims its folder)
    assert not list((tmp_path / "r").rglob("*.json"))


@pytest.mark.slow
def test_vit_scan_then_a_pruned_one_epoch_run_then_predict_from_the_cli(tmp_path):
    """Issue 24: a random-weights ViT scan, a ViT pruned at a block trained for one epoch, and
    a prediction with it, all through the CLI (a tiny ViT: 32 px, 2 blocks)."""
    import json

    from rcvcore.cli import main

    arch = "timm:vit_tiny_patch16_224[img_size=32,depth=2]"
    out = tmp_path / "scan.json"
    assert main(["scan", "--arch", arch, "--weights", "random", "--dataset", "demo-histology",
                 "--n", "24", "--repeats", "2", "--permutations", "0", "--controls", "none",
                 "--token-pool", "cls", "--quiet", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["layers"]][:3] == ["block0", "block1", "head"]
    assert all(r["n_features"] == 192 for r in res["layers"][:3])    # pooled, not 5 x 192
    assert res["config"]["token_pool"] == "cls"
    run = tmp_path / "run"
    assert main(["train", "--arch", arch, "--weights", "random", "--cut", "block0",
                 "--dataset", "demo-histology", "--n", "24", "--epochs", "1", "--batch-size", "8",
                 "--quiet", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["token_pool"] == "mean"
    result = json.loads((run / "result.json").read_text())
    assert result["model"]["pruned_params"] < result["model"]["full_params"]
    test = result["test_predictions"][0]
    pred = tmp_path / "pred.json"
    assert main(["predict", "--run", str(run), "--json", str(pred), test["path"]]) == 0
    got = json.loads(pred.read_text())
    assert abs(got[0]["nuclei_area"] - test["prediction"]) < 1e-3 * max(1, abs(test["prediction"]))


def test_scan_defaults_to_the_dashboards_first_screen():
    """`python -m rcvcore scan` with no flags scans what the Scan page opens on (issue 23.6:
    same defaults), instead of stopping at a missing --arch."""
    from rcvcore.cli import build_parser

    args = build_parser().parse_args(["scan"])
    assert (args.arch, args.dataset, args.weights) == ("efficientnet_lite0", "demo-scale",
                                                      "imagenet")

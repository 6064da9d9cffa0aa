"""The command-line entry point: every command module is registered, none is lost silently."""
from __future__ import annotations

import pytest

import rcvcore.cli as cli

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

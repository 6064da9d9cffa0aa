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

"""The public Python API: rcvcore.__all__, lazy imports, and the README's example."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import rcvcore

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_rcvcore_does_not_import_torch():
    code = "import sys, rcvcore; print('torch' in sys.modules, len(rcvcore.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) > 20


def test_every_public_name_resolves():
    for name in rcvcore.__all__:
        assert getattr(rcvcore, name) is not None, name
    assert set(dir(rcvcore)) >= set(rcvcore.__all__)


def test_entry_points_are_modules_and_functions(tmp_path):
    import pytest

    from rcvcore.errors import UserError

    assert rcvcore.train.TrainConfig is rcvcore.TrainConfig   # the package, and ...
    with pytest.raises(UserError, match="give a TrainConfig"):  # ... rcvcore.train.loop.train
        rcvcore.train(None, tmp_path / "r")
    with pytest.raises(UserError, match="--cuts is empty"):
        rcvcore.compare(rcvcore.TrainConfig(), "", 1, tmp_path / "c")
    with pytest.raises(UserError, match="no readable config.json"):
        rcvcore.predict(tmp_path / "nothing", [])
    assert callable(rcvcore.prune.prune)


def test_list_models_and_layers():
    assert {"resnet50", "inception_v3", "resnet18"} <= set(rcvcore.list_models())
    layers = rcvcore.list_layers("resnet50")
    assert layers[14] == "add_15" and layers[-1] == "softmax"
    assert len(rcvcore.list_layers("resnet50", all_layers=True)) >= len(layers)


def test_readme_example_uses_the_public_api():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 5
    used = set(re.findall(r"rcvcore\.(\w+)", block))
    assert used and used <= set(rcvcore.__all__), used - set(rcvcore.__all__)
    compile(block, "README.md", "exec")


def test_readme_documents_exactly_the_public_api():
    """The README's table of public names is ``rcvcore.__all__``, no more, no less."""
    text = README.read_text()
    table = text[text.index("| concern | names |"):]
    table = table[:table.index("\n\n")]
    documented = {n for row in table.splitlines()[2:] for n in
                  re.findall(r"`(\w+)`", row.split("|")[2])}
    assert documented == set(rcvcore.__all__)


def test_readme_layout_names_every_module_public_or_private():
    """Issue 21.5: each top-level module of rcvcore is either public (named in README's Layout
    without an underscore) or private (a leading underscore, listed as private); nothing in
    between, so the public face is exactly what README shows."""
    text = README.read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("app/")]
    public_part, private_part = block.split("private (leading underscore")
    named_public = set(re.findall(r"(?<![\w(])([a-z][a-z_]*)(?:/|\b)(?= \(|\s·|\s*$| ·)",
                                  public_part, flags=re.M))
    named_private = set(re.findall(r"\b(_[a-z_]+)\b", private_part))
    pkg = Path(rcvcore.__file__).parent
    modules = {p.stem if p.is_file() else p.name for p in pkg.iterdir()
               if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
               and not p.name.startswith("__")}
    public = {m for m in modules if not m.startswith("_")}
    private = modules - public
    assert public <= named_public, public - named_public       # every public module documented
    assert private == named_private, private ^ named_private   # every private one listed

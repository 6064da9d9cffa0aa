"""The import graph of rcvcore, read with ``ast``: no cycle, no hidden function-level imports.

An import inside a function hides a dependency from the reader and usually hides a cycle; the
only ones allowed are listed below, each with its reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rcvcore"

#: (importing module, imported module) pairs allowed inside a function, and why.
FUNCTION_LEVEL_ALLOWED = {
    # Deferred imports in modules other engineers are rewriting now (no cycle behind any of
    # them; each is to be hoisted to the top of its module when that work is merged):
    ("rcvcore._extract", "rcvcore.data"),            # extract._ImageFiles (lead)
    ("rcvcore._extract", "rcvcore.data.images"),
    ("rcvcore.scan", "rcvcore.data"),               # ScanConfig.validate (stats)
    ("rcvcore.scan", "rcvcore.data.options"),
    ("rcvcore.cli.scan", "rcvcore.data"),           # cli/scan.py (stats)
    ("rcvcore.cli.scan", "rcvcore.data.options"),
    ("rcvcore.data.registry", "rcvcore.data.options"),   # data loaders (reliab)
    # On purpose, for good (issue 23): a configuration loads without torch, so `--help`, which
    # shows its defaults, is instant; validation needs the registry and the cut
    ("rcvcore.runs.config", "rcvcore.models"),
    ("rcvcore.runs.config", "rcvcore.prune"),
    ("rcvcore.runs.config", "rcvcore.models.pooling"),
}
#: Modules whose functions may import rcvcore: each command of the CLI imports what it runs
#: (torch, timm, SciPy) when it runs, so that building the parser (`--help`) imports none of
#: them (tests/test_cli.py::test_help_imports_no_torch checks it).
DEFERRING_MODULES = ("rcvcore.cli.",)

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The rcvcore modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "rcvcore"]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "rcvcore":
        return []
    # ``from pkg import name``: name may be a submodule of pkg
    return [target] + [f"{target}.{a.name}" for a in node.names]


def _imports(modules: dict[str, Path]):
    """``{module: [(imported module, at module level?, line)]}`` (rcvcore modules only)."""
    out = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        found = []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            in_function, p = False, parents.get(node)
            while p is not None:
                if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    in_function = True
                p = parents.get(p)
            for target in _resolve(name, path.name == "__init__.py", node):
                # importing a.b.c runs a/__init__ and a/b/__init__ too, except the packages
                # that hold the importing module (already initialised before it runs)
                parts = target.split(".")
                for k in range(2, len(parts) + 1):
                    t = ".".join(parts[:k])
                    if t in modules and t != name and not name.startswith(t + "."):
                        found.append((t, not in_function, node.lineno))
        out[name] = found
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_the_parser_sees_imports():
    """The checks below are only as good as the parser: it must find known edges."""
    imports = _imports(_modules())
    top = {t for t, at_top, _ in imports["rcvcore.train.loop"] if at_top}
    # absolute-style relative imports, a package and its submodule, a parenthesised list
    assert {"rcvcore.runs", "rcvcore.runs.directory", "rcvcore.runs.config",
            "rcvcore._shared"} <= top
    # every allowed deferred import still exists (a stale entry would hide a new one)
    nested = {(m, t) for m, found in imports.items() for t, at_top, _ in found if not at_top}
    assert FUNCTION_LEVEL_ALLOWED <= nested, FUNCTION_LEVEL_ALLOWED - nested
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle():
    imports = _imports(_modules())
    # every import counts, deferred or not: a cycle hidden in a function is still a cycle,
    # except the allowed ones (each is a known cycle being removed elsewhere)
    graph = {m: {t for t, _, _ in found if (m, t) not in FUNCTION_LEVEL_ALLOWED}
             for m, found in imports.items()}
    assert _cycles(graph) == []


def test_no_function_level_import_of_rcvcore_modules():
    bad = [f"{m}:{line} imports {t} inside a function"
           for m, found in _imports(_modules()).items()
           for t, at_top, line in found
           if not at_top and (m, t) not in FUNCTION_LEVEL_ALLOWED
           and not m.startswith(DEFERRING_MODULES)]
    assert bad == []


#: Layers that must never import the ones named: the run concept sits below training and the
#: Table 2 entry points, the ground floor below everything.
MUST_NOT_IMPORT = {
    "rcvcore.runs": ("rcvcore.train", "rcvcore.compare", "rcvcore.predict", "rcvcore.cli",
                     "rcvcore.demo", "rcvcore.scan"),
    "rcvcore._shared": ("rcvcore.",),
    "rcvcore.errors": ("rcvcore.",),
    "rcvcore.comparison": ("rcvcore.prune", "rcvcore._extract", "rcvcore.models", "rcvcore.runs",
                           "rcvcore.train"),
    "rcvcore.models": ("rcvcore.data", "rcvcore.train", "rcvcore.runs", "rcvcore.scan"),
}


def _forbidden_edges(imports, rules) -> list[str]:
    bad = []
    for module, found in imports.items():
        for layer, banned in rules.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for target, _, line in found:
                if any(target == b.rstrip(".") or target.startswith(b.rstrip(".") + ".")
                       for b in banned) and target != "rcvcore.errors":
                    bad.append(f"{module}:{line} imports {target}")
    return bad


def test_imports_run_one_way():
    """Training imports the run concept, never the reverse; the ground floor imports nothing
    of rcvcore but the errors."""
    imports = _imports(_modules())
    assert _forbidden_edges(imports, MUST_NOT_IMPORT) == []
    # the rule finds a violation when there is one (it is not vacuous)
    fake = {**imports, "rcvcore.runs.groups": [("rcvcore.train.loop", True, 1)]}
    assert _forbidden_edges(fake, MUST_NOT_IMPORT) == [
        "rcvcore.runs.groups:1 imports rcvcore.train.loop"]


def _loaded_after(code: str) -> set[str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; "
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=PKG.parent).stdout
    return set(out.split())


def test_reading_a_run_imports_neither_torch_nor_training():
    loaded = _loaded_after("from rcvcore.runs import read_run, find_runs, runs_root, RESULT")
    assert "rcvcore.runs.directory" in loaded
    assert not {m for m in loaded if m.startswith("rcvcore.train")}
    assert "torch" not in loaded and "torchvision" not in loaded


def test_shared_names_come_without_torchvision():
    """The cut name, the hint and the Table 2 summary do not pull in the network code."""
    loaded = _loaded_after("from rcvcore._shared import NONE, closest, Extraction; "
                           "import rcvcore.comparison")
    assert "torch" not in loaded and "torchvision" not in loaded
    assert "rcvcore.prune" not in loaded


# ------------------------------------------------------------------------------ app/ (issue 21)

APP = PKG.parent / "app"
#: the layers of app/, top to bottom: a module imports only from its own layer or below, and
#: no cycle (pages -> services -> {auth, guard, uploads, state, charts} -> rcvcore)
APP_LAYERS = {"app.main": 3, "app.gateway": 3, "app.serve": 3, "app.widgets": 3,
              "app.services": 2, "app.auth": 1, "app.guard": 1, "app.uploads": 1,
              "app.state": 1, "app.charts": 1, "app.prediction_view": 1, "app.tracker": 1,
              "app.browser_harness": 0, "app": 0}


def _app_modules() -> dict[str, Path]:
    out = {}
    for p in sorted(APP.rglob("*.py")):
        parts = list(p.relative_to(APP.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _app_imports() -> dict[str, set[str]]:
    """``{app module: {app modules it imports, anywhere in it}}``."""
    modules = _app_modules()
    out = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t not in ("app", name)}
        out[name] = found
    return out


def _app_layer(module: str) -> int:
    return 3 if module.startswith("app.pages") else APP_LAYERS[module]


def test_app_has_no_import_cycle_and_imports_one_way():
    imports = _app_imports()
    assert {"app.auth", "app.guard", "app.uploads", "app.state"} <= imports["app.services"]
    assert _cycles({m: set(t) for m, t in imports.items()}) == []
    upward = [f"{m} imports {t}" for m, ts in imports.items() for t in ts
              if _app_layer(t) > _app_layer(m)]
    assert upward == []
    assert _cycles({"app.a": {"app.b"}, "app.b": {"app.a"}}) == [["app.a", "app.b"]]


def test_the_shell_and_the_sign_in_do_not_import_torch(tmp_path):
    """What a served dashboard draws first (the HTTP gate's sign-in, or the page gate of a bare
    ``streamlit run``) loads neither torch nor scipy: app/main.py's shell, app/auth.py and
    app/gateway.py import only streamlit."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "import app.auth, app.gateway\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('app/main.py', default_timeout=60).run()\n"
            "assert not at.exception and at.text_input, at\n"
            "print(sorted(m for m in ('torch', 'scipy', 'rcvcore.runs') if m in sys.modules))")
    env = {**os.environ, "RCV_DASHBOARD_PASSWORD": "a password long enough",
           "RCV_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(PKG.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

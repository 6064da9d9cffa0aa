"""Run groups: a folder of runs ``<cut>_seed<seed>`` planned by ``group.json``.

``group.json`` holds the ``base`` configuration, ``cuts``, ``seeds``, ``max_parallel``,
``cancelled`` and ``created``; rcvcore adds ``state``, ``error`` and ``finished``. A group is the
dashboard's "launch" and ``compare --parallel N``; :class:`rcvcore.runs.scheduler.Scheduler`
starts its runs, and when the last one ends the group's ``comparison.json`` (the paper's Table 2,
as ``python -m rcvcore compare`` writes it) is written from :func:`group_comparison`.
"""
from __future__ import annotations

import time
from pathlib import Path

from .._files import read_json, write_json
from ..comparison import COMPARISON, Comparison, summarise
from ..errors import UserError
from ..evidence import check_cut_of, check_replicate
from .config import TrainConfig
from .directory import ACTIVE, GROUP, RunState, is_run_dir, read_run, runs_root


def run_dir_of(group, cut: str, seed: int) -> Path:
    """``<group>/<cut>_seed<seed>``: the layout of every group and comparison."""
    return Path(group) / f"{cut}_seed{int(seed)}"


def read_group(group) -> dict | None:
    """The plan of a group (``group.json``), or None."""
    plan = read_json(Path(group) / GROUP)
    return plan if isinstance(plan, dict) and "cuts" in plan and "seeds" in plan else None


def update_group(group, **changes) -> dict | None:
    plan = read_group(group)
    if plan is not None:
        plan.update(changes)
        write_json(Path(group) / GROUP, plan)
    return plan


def plan_group(group, base: TrainConfig, cuts, seeds, max_parallel: int = 1,
               replicate: str = "split", cut_of: dict | None = None) -> Path:
    """Write ``group.json`` for one run per (cut, seed) of ``base`` into the folder ``group``;
    ``replicate`` (:mod:`rcvcore.evidence`): ``split`` gives each seed its own data split.

    Runs are ordered seed-major, as in :func:`rcvcore.compare.compare`: an interrupted group
    still has paired runs. Nothing is started (see :meth:`Scheduler.advance`). ``cut_of``
    (:func:`rcvcore.compare.compare`): rows cut at a layer chosen per replicate.
    """
    cuts = list(dict.fromkeys(cuts))
    if not cuts or not seeds:
        raise UserError("A run group needs at least one cut and one seed.")
    if int(max_parallel) < 1:
        raise UserError(f"--parallel must be >= 1, got {max_parallel}.")
    cut_of = check_cut_of(base, cuts, seeds, cut_of)      # and every layer of every run
    group = Path(group)
    group.mkdir(parents=True, exist_ok=True)
    plan = read_group(group)
    new = {"base": base.to_dict(), "cuts": cuts, "seeds": [int(s) for s in seeds],
           "max_parallel": int(max_parallel), "cancelled": False,
           "created": (plan or {}).get("created") or time.time(), "state": "running",
           "error": None, "replicate": check_replicate(replicate),
           **({"cut_of": cut_of} if cut_of else {})}
    write_json(group / GROUP, new)
    return group


def new_group_dir(root, config: TrainConfig) -> Path:
    """A fresh ``<root>/<date>-<arch>-<cut>`` folder name (``~2``, ``~3`` ... when taken)."""
    group = runs_root(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.arch}-{config.cut}"
    k = 1
    while group.exists():
        k += 1
        group = group.with_name(f"{group.name.split('~')[0]}~{k}")
    return group


def group_runs(group) -> list[tuple[str, int, Path, RunState | None]]:
    """``(cut, seed, run dir, state or None when not started)`` of each planned run."""
    plan = read_group(group) or {"cuts": [], "seeds": []}
    out = []
    for seed in plan["seeds"]:
        for cut in plan["cuts"]:
            d = run_dir_of(group, cut, seed)
            out.append((cut, int(seed), d, read_run(d) if d.exists() else None))
    return out


def group_comparison(group) -> Comparison | None:
    """The Table 2 summary of the finished runs of ``group``, or None when none has finished.
    Reads only (the group's completion writes ``comparison.json``)."""
    plan = read_group(group)
    if not plan:
        return None
    results, states = {}, {}
    for cut, seed, _, st in group_runs(group):
        results[(cut, seed)] = st.result if st is not None and st.state == "done" else None
        states[(cut, seed)] = st.state if st is not None else "waiting"
    if not any(results.values()):
        return None
    return summarise(TrainConfig.from_dict(plan["base"]), plan["cuts"], plan["seeds"], results,
                     states, group, "cancelled" if plan.get("cancelled") else "done",
                     cut_of=plan.get("cut_of"))


def read_comparison(run_dir) -> dict | None:
    """``comparison.json`` of a comparison directory or group, or None."""
    return read_json(Path(run_dir) / COMPARISON)


def group_state(group) -> str:
    """``waiting`` / ``running`` while runs remain, then ``done`` or ``cancelled``."""
    plan = read_group(group)
    if plan is None:
        return "missing"
    if plan.get("finished"):
        return plan.get("state") or "done"
    runs = group_runs(group)
    if any(st is not None and st.state in ACTIVE for *_, st in runs):
        return "running"
    return "cancelled" if plan.get("cancelled") else "waiting"


def list_groups(root=None) -> dict[str, list[Path]]:
    """Run groups under the runs root, newest first: ``{group name: [run dirs that exist]}``.

    A run directory directly under the root (e.g. from the CLI) is its own group.
    """
    root = runs_root(root)
    if not root.is_dir():
        return {}
    groups: list[tuple[float, str, list[Path]]] = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(("_", ".")):
            continue
        if is_run_dir(d):
            groups.append((d.stat().st_mtime, d.name, [d]))
            continue
        runs = sorted((r for r in d.iterdir() if r.is_dir() and is_run_dir(r)),
                      key=lambda p: p.name)
        plan = read_group(d)
        if runs or plan:
            groups.append(((plan or {}).get("created") or d.stat().st_mtime, d.name, runs))
    groups.sort(key=lambda g: (g[0], g[1]), reverse=True)
    return {name: runs for _, name, runs in groups}

"""``runs``, ``cancel`` and ``cache``: the dashboard's run list and Cancel button, headless,
and the cache's housekeeping.

Run groups and comparisons (SciPy) and the scan (torch) are imported inside the commands, so
``--help`` stays instant.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .._cache import SECTIONS, STORE_SECTION, Store, cache_usage, clear_cache
from ..data.base import default_cache_dir
from ..errors import UserError
from ..metrics import METRICS, metric_names
from ..runs.directory import FINISHED, find_runs, is_group_dir, is_run_dir, read_run, runs_root
from ..runs.process import cancel
from ..runs.tracker import CURVE_FIELDS, curves
from ._types import number


def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="list training runs with their state and test metrics",
                       description="List every run directory under ROOT (a run, a folder of "
                                   "runs, or a folder of comparisons / dashboard groups): "
                                   "state, architecture, cut, target, seed, epochs and test "
                                   "metrics. Comparisons with a comparison.json are listed "
                                   "with their Table 2; run groups (dashboard launches, "
                                   "`compare --parallel`) with their state and waiting runs.")
    p.add_argument("root", nargs="?", default=None,
                   help="folder to search (default $RCV_RUNS_DIR or ./runs)")
    p.add_argument("--json", metavar="FILE", help="also write the list as JSON")
    p.add_argument("--tables", action="store_true",
                   help="print the Table 2 summary of every comparison found")
    p.add_argument("--curves", metavar="FILE",
                   help="write every curve point of every run found to FILE (CSV: run, cut, "
                        "seed, kind, metric, step, epoch, value), as the dashboard exports it")
    p.set_defaults(func=_runs)
    c = sub.add_parser("cancel", help="cancel a running training run or run group (SIGTERM; "
                                      "resumable)",
                       description="Send SIGTERM to the process of a running run: it finishes "
                                   "its step, writes a checkpoint and marks itself cancelled. "
                                   "Resume it later with `train --resume --run-dir DIR`. Given "
                                   "a run group (a folder with group.json), cancel every active "
                                   "run of it and drop the runs not started yet.")
    c.add_argument("run_dir", help="the run directory, or a run group folder")
    c.add_argument("--wait", type=number(0), default=60.0,
                   help="seconds to wait for the run to stop (default 60)")
    c.set_defaults(func=_cancel)
    k = sub.add_parser("cache", help="show the cache's size, or clear part of it",
                       description="Size of each part of the cache (activations and saved scan "
                                   "results, generated datasets, histology patches); --clear "
                                   "removes one part (everything is regenerated when needed).")
    k.add_argument("--cache-dir", default=None,
                   help="cache root (default $RCV_CACHE_DIR or the user cache dir)")
    k.add_argument("--clear", choices=["results", *SECTIONS, "all"],
                   help="results: saved scan results only (activations stay)")
    k.set_defaults(func=_cache)


def _row(rs, root: Path) -> dict:
    cfg = rs.config or {}
    epochs = rs.epochs
    test = (rs.result or {}).get("test") or {}
    try:
        rel = str(Path(rs.run_dir).relative_to(root)) or "."
    except ValueError:
        rel = rs.run_dir
    return {"run_dir": rs.run_dir, "name": rel, "state": rs.state,
            "error": rs.status.get("error"), "arch": cfg.get("arch"), "cut": cfg.get("cut"),
            "target": cfg.get("target"), "seed": cfg.get("seed"), "dataset": cfg.get("dataset"),
            "epochs_done": len(epochs), "epochs": cfg.get("epochs"),
            "test": {k: test.get(k) for k in METRICS if test.get(k) is not None}}


def _width(heading: str) -> int:
    return max(len(heading), 8)


def _runs(args) -> int:
    from ..runs.groups import read_comparison

    root = runs_root(args.root)
    if args.root is None and not root.exists():   # a new user: no run yet, not an error
        print(f"no runs yet: {root} does not exist (runs are written there by `train --run-dir` "
              "and the dashboard)")
        return 0
    rows = [_row(rs, root) for rs in find_runs(root)]
    if not rows:
        print(f"no runs under {root}")
    else:
        w = max(len(r["name"]) for r in rows)
        listed = [METRICS[n] for n in metric_names(listed=True)]
        # the MAE's heading in the unit of the listed runs' measure (px, log2 µm/px)
        heads = {m.name: m.label_for([r["target"] for r in rows], short=True) for m in listed}
        print(f"{'run':<{w}}  {'state':<11} {'arch':<14} {'cut':<9} {'target':<13} {'seed':>5} "
              f"{'epoch':>7}  " + " ".join(f"{heads[m.name]:>{_width(heads[m.name])}}"
                                          for m in listed))
        for r in rows:
            t = r["test"]
            print(f"{r['name']:<{w}}  {r['state']:<11} {str(r['arch']):<14} {str(r['cut']):<9} "
                  f"{str(r['target']):<13} {str(r['seed']):>5} "
                  f"{r['epochs_done']:>3}/{str(r['epochs'] or '?'):<3}  "
                  + " ".join(f"{m.format(t.get(m.name)):>{_width(heads[m.name])}}"
                           for m in listed))
            if r["state"] == "failed" and r["error"]:
                print(f"{'':<{w}}  error: {str(r['error']).splitlines()[0][:200]}")
    groups = _groups(root)
    for g in groups:
        print(f"\ngroup {g['name']}: {g['state']}, {g['ended']}/{g['planned']} runs ended, "
              f"{g['waiting']} waiting ({g['max_parallel']} at a time)"
              + (f"; error: {g['error']}" if g["error"] else ""))
    comparisons = {}
    for d in sorted({Path(r["run_dir"]).parent for r in rows} | {root}):
        comp = read_comparison(d)
        if comp:
            comparisons[str(d)] = comp
    if args.tables:
        for d, comp in comparisons.items():
            print(f"\n{d}  ({comp.get('state', 'done')})\n{comp.get('table', '')}")
    elif comparisons:
        print(f"\n{len(comparisons)} comparison(s) with a comparison.json; --tables prints them.")
    if args.curves:
        _write_curves(args.curves, find_runs(root), root)
    if args.json:
        Path(args.json).write_text(json.dumps({"root": str(root), "runs": rows,
                                               "comparisons": sorted(comparisons),
                                               "groups": groups}, indent=2))
    return 0


def _write_curves(path, runs, root: Path) -> None:
    """Every point of every run's curves (:func:`rcvcore.runs.tracker.curves`) as CSV."""
    runs = list(runs)
    cols = ("run", "cut", "seed", "kind", "metric", "label", "step", "epoch", "value")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for kind in CURVE_FIELDS:
            w.writerows({**r, "kind": kind} for r in curves(runs, kind, root=root))
    print(f"curves written to {path}")


def _groups(root: Path) -> list[dict]:
    """The run groups at ``root`` (itself, or its sub-folders): plan and progress."""
    from ..runs.groups import group_runs, group_state, read_group

    dirs = [root] if is_group_dir(root) else sorted(
        d for d in root.iterdir() if d.is_dir() and is_group_dir(d))
    out = []
    for g in dirs:
        plan = read_group(g) or {}
        runs = group_runs(g)
        out.append({"group_dir": str(g), "name": g.name, "state": group_state(g),
                    "planned": len(runs),
                    "ended": sum(1 for *_, st in runs if st is not None and st.state in FINISHED),
                    "waiting": sum(1 for *_, st in runs if st is None),
                    "max_parallel": plan.get("max_parallel", 1), "error": plan.get("error")})
    return out


def _cancel(args) -> int:
    from ..runs.groups import group_state
    from ..runs.scheduler import Scheduler

    d = Path(args.run_dir)
    if is_group_dir(d):
        before = group_state(d)
        if before in ("done", "cancelled"):
            print(f"{d}: group {before}; nothing to cancel")
            return 0
        after = Scheduler(d.parent).cancel_group(d, wait=args.wait)
        print(f"{d}: group {after}" + ("; resume it with `python -m rcvcore compare "
                                       f"--parallel N --run-dir {d}` and the same --cuts/--seeds"
                                       if after == "cancelled" else ""))
        return 0 if after in ("cancelled", "done") else 1
    if not is_run_dir(d):
        raise UserError(f"{str(d)!r} is not a run directory (no config.json or status.json) "
                        "nor a run group (no group.json).")
    before = read_run(d).state
    if before != "running":
        print(f"{d}: {before}; nothing to cancel")
        return 0 if before in ("done", "cancelled") else 1
    after = cancel(d, wait=args.wait)
    print(f"{d}: {after}" + ("; resume with `python -m rcvcore train --resume --run-dir "
                             f"{d}`" if after == "cancelled" else ""))
    return 0 if after in ("cancelled", "done") else 1


def _cache(args) -> int:
    from ..scan import RESULT_PREFIX

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if args.clear == "results":   # the scan's saved results only: its key prefix in the store
        n = 0
        if (root / STORE_SECTION).is_dir():
            with Store(root / STORE_SECTION) as store:
                n = store.clear(RESULT_PREFIX)
        print(f"removed: {n} saved scan results")
    elif args.clear:
        removed = clear_cache(root, args.clear)
        print("removed: " + (", ".join(removed) if removed else "nothing (already empty)"))
    total = 0
    print(f"cache root: {root}")
    for row in cache_usage(root):
        if row["section"] == "datasets" and not row["files"]:
            continue   # the old layout, shown only when present
        total += row["bytes"]
        extra = (f", {row['prefixes'].get(RESULT_PREFIX, 0)} saved scan results"
                 if "prefixes" in row else "")
        print(f"  {row['section']:<18} {row['bytes'] / 2**20:>9.1f} MiB  {row['files']:>6} files"
              f"{extra}  ({row['what']})")
    print(f"  {'total':<18} {total / 2**20:>9.1f} MiB")
    return 0

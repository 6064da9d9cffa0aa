"""``python -m rcvcore datasets`` and ``python -m rcvcore inspect --dataset D [--json FILE]``.

``inspect`` resolves a dataset (generating histology patches into the cache when needed, but
extracting no activations) and summarises it. Its JSON is a contract other tools rely on::

    {"dataset": str, "n_items": int, "skipped": [{"path": str, "reason": str}],
     "classes": {name: count}, "measure": {"name": str, "by_class": {name: {"count", "mean",
     "min", "max"}}}, "splits": {"train": int, "val": int, "test": int}}

A dataset without labels reports its items under the single class ``all``.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ..data.base import Dataset, DatasetError, default_cache_dir
from ..data.options import parse_options
from ..data.registry import list_datasets, load_dataset, loader_options
from ._types import COUNT, SEED

UNLABELLED = "all"


def summarize(ds: Dataset) -> dict:
    """The ``inspect`` JSON of a dataset (see the module docstring)."""
    measures = ds.measures
    labels = ds.labels
    if labels is None:
        classes = [UNLABELLED]
        labels = np.full(len(ds), UNLABELLED)
    else:
        classes = ds.classes
    by_class = {}
    counts = {}
    for c in classes:
        m = measures[labels == c]
        counts[c] = int(m.size)
        by_class[c] = {"count": int(m.size),
                       "mean": float(m.mean()) if m.size else None,
                       "min": float(m.min()) if m.size else None,
                       "max": float(m.max()) if m.size else None}
    splits = {s: int(sum(1 for x in ds.samples if x.split == s)) for s in ("train", "val", "test")}
    return {"dataset": ds.name, "n_items": len(ds),
            "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped],
            "classes": counts,
            "measure": {"name": ds.measure_name, "by_class": by_class},
            "splits": splits}


def format_summary(summary: dict, max_skipped: int = 10) -> str:
    """A readable text version of :func:`summarize`'s output."""
    lines = [f"dataset   {summary['dataset']}", f"items     {summary['n_items']}"]
    sp = summary["splits"]
    if any(sp.values()):
        lines.append(f"splits    train {sp['train']}, val {sp['val']}, test {sp['test']}")
    else:
        lines.append("splits    none fixed by the dataset")
    name = summary["measure"]["name"]
    width = max([5] + [len(c) for c in summary["classes"]])
    lines.append("")
    lines.append(f"{'class':<{width}}  {'count':>6}  {name + ' mean':>22}  {'min':>10}  "
                 f"{'max':>10}")
    for c, st in summary["measure"]["by_class"].items():
        if st["count"]:
            lines.append(f"{c:<{width}}  {st['count']:>6}  {st['mean']:>22.4g}  "
                         f"{st['min']:>10.4g}  {st['max']:>10.4g}")
        else:
            lines.append(f"{c:<{width}}  {0:>6}")
    skipped = summary["skipped"]
    lines.append("")
    lines.append(f"skipped   {len(skipped)}")
    for s in skipped[:max_skipped]:
        lines.append(f"  {s['path']}: {s['reason']}")
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more (see --json)")
    return "\n".join(lines)


def _cmd_datasets(args) -> int:
    kinds = list_datasets()
    width = max(len(k.name) + (5 if k.needs_path else 0) for k in kinds)

    show = getattr(args, "options", False)
    for k in kinds:
        spec = k.name + (":PATH" if k.needs_path else "")
        print(f"{spec:<{width}}  {k.description}")
        opts = loader_options(k.name) if show else {}
        if opts:
            print(f"{'':<{width}}  --opt: " + ", ".join(f"{o}={v!r}" for o, v in opts.items()))
    if not show:
        print("\n`python -m rcvcore datasets --options` also lists each loader's --opt KEY=VALUE "
              "options (for inspect, scan, train, compare).")
    return 0


def _cmd_inspect(args) -> int:
    options = parse_options(args.opt)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()

    show = not args.quiet and sys.stderr.isatty()

    def progress(fraction: float, message: str) -> None:
        if show:
            print(f"\r{message or 'loading'}: {100 * fraction:5.1f}%", end="", file=sys.stderr,
                  flush=True)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = load_dataset(args.dataset, n=args.n, seed=args.seed, cache_dir=cache_dir,
                              progress=progress, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise DatasetError(f"--opt: {e}. See the loader's options in "
                               "`python -m rcvcore datasets` and its docstring.") from None
        raise
    finally:
        if show:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    listed = {s.path for s in ds.skipped}
    for w in caught:
        text = str(w.message)
        # skips are listed in the summary below; everything else (encoding, merged rows) here
        if not any(text.startswith(f"{verb} {p}:") for verb in ("skipped", "Skipping")
                   for p in listed):
            print(f"warning: {text}", file=sys.stderr)
    summary = summarize(ds)
    if args.json:
        out = Path(args.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            raise DatasetError(f"--json: cannot write {out} ({e}).") from None
    print(format_summary(summary))
    return 0


def add_parser(subparsers) -> None:
    """Add the ``datasets`` and ``inspect`` commands."""
    p = subparsers.add_parser("datasets", help="list the dataset kinds",
                              description="List every --dataset kind with a one-line description.")
    p.add_argument("--options", action="store_true",
                   help="also list each loader's options (--opt KEY=VALUE) with their defaults")
    p.set_defaults(func=_cmd_datasets)

    p = subparsers.add_parser(
        "inspect", help="summarise a dataset (classes, scale measure, splits, skipped items)",
        description="Resolve a dataset and summarise it without extracting activations.")
    p.add_argument("--dataset", required=True,
                   help="KIND or KIND:PATH (see `python -m rcvcore datasets`)")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--n", type=COUNT, default=None, help="keep at most N items (stratified)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of generation and subsampling")
    p.add_argument("--cache-dir", default=None,
                   help="where generated patches are cached (default: the user cache dir, "
                        "or $RCV_CACHE_DIR)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="a loader option, repeatable, e.g. --opt classes=n02058221,n01608432 "
                        "--opt single_object=true")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_inspect)

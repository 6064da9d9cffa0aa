"""What an experiment tracker shows of runs, as plain data (the dashboard draws it, the CLI
exports it): curves in long form, TensorBoard's smoothing, mean ± std per cut over seeds, one
table of every run across groups with a text filter, and the difference of two configurations.

Nothing here draws or imports torch: records in, records out (lists of dicts, NumPy arrays).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..metrics import METRICS
from .directory import RunState, read_run

#: the curves of ``metrics.jsonl``: record kind -> the numeric fields drawn, in order
#: (``val_<metric>`` for every metric of the registry)
CURVE_FIELDS = {"step": ("loss",),
                "epoch": ("train_loss", "val_loss", *(f"val_{m}" for m in METRICS))}
#: configuration keys shown as columns of the runs table (the rest are in the config diff)
KEY_CONFIG = ("arch", "weights", "cut", "seed", "target", "dataset", "epochs", "lr",
              "batch_size", "protocol")


def metric_label(field: str, targets=None) -> str:
    """A curve's name as people read it: ``val_mae`` -> ``val MAE (px)`` (``val MAE (log2
    µm/px)`` with ``targets="mpp"``: see :meth:`rcvcore.metrics.Metric.label_for`), ``loss``
    -> ``loss``."""
    split, _, name = field.partition("_")
    if split in ("val", "test") and name in METRICS:
        return f"{split} {METRICS[name].label_for(targets)}"
    return field.replace("_", " ")


def run_key(run_dir, root=None) -> str:
    """The run's name in every chart and table: ``group/run`` (its path under ``root``)."""
    p = Path(run_dir)
    if root is not None:
        try:
            return str(p.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# ------------------------------------------------------------------------------------ colours
def colour_index(key: str, n_colours: int) -> int:
    """A colour slot for ``key`` that depends on the key alone (not on which runs are shown,
    nor on their number): the same run has the same colour in every chart and every session."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % n_colours


def assign_colours(keys: Sequence[str], palette: Sequence[str]) -> dict[str, str]:
    """A colour per key: its :func:`colour_index` slot, or the next free slot when an earlier
    key already holds it (distinct colours while there are colours left). Give every run
    there is, oldest first, not only the runs shown: a run's colour then never changes when
    other runs are shown or hidden, nor when newer runs are added."""
    taken: dict[int, str] = {}
    out: dict[str, str] = {}
    for k in dict.fromkeys(keys):
        slot = colour_index(k, len(palette))
        for i in range(len(palette)):
            s = (slot + i) % len(palette)
            if s not in taken:
                slot = s
                break
        taken.setdefault(slot, k)
        out[k] = palette[slot]
    return out


# ------------------------------------------------------------------------------------ curves
def curves(runs: Iterable[RunState], kind: str = "step", *, root=None,
           fields: Sequence[str] | None = None) -> list[dict]:
    """The curves of ``runs`` in long form: one record per (run, metric, point):
    ``{"run", "cut", "seed", "metric", "label", "step", "epoch", "value"}``; ``step`` is the
    global step (epoch records are placed at their last step), ``kind`` is ``step`` or
    ``epoch``. Non-numeric and non-finite values are skipped."""
    if kind not in CURVE_FIELDS:
        raise ValueError(f"kind must be one of {tuple(CURVE_FIELDS)}, got {kind!r}")
    fields = CURVE_FIELDS[kind] if fields is None else tuple(fields)
    out = []
    for rs in runs:
        key, cfg = run_key(rs.run_dir, root), rs.config or {}
        for rec in rs.metrics:
            if rec.get("kind") != kind:
                continue
            for f in fields:
                v = rec.get(f)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    continue
                out.append({"run": key, "cut": cfg.get("cut"), "seed": cfg.get("seed"),
                            "metric": f, "label": metric_label(f, cfg.get("target")),
                            "step": rec.get("global_step"), "epoch": rec.get("epoch"),
                            "value": float(v)})
    return out


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with ``weight`` in [0, 1)
    (0: none), debiased so that the first points are not pulled towards 0; non-finite values
    pass through unchanged and do not enter the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    v = np.asarray(values, float)
    out = v.copy()
    last, n = 0.0, 0
    for i, x in enumerate(v):
        if not math.isfinite(x):
            continue
        last = last * weight + (1 - weight) * x
        n += 1
        out[i] = last / (1 - weight ** n)
    return out


def smooth(records: list[dict], weight: float) -> list[dict]:
    """``records`` of :func:`curves` with ``value`` smoothed per (run, metric) along ``step``
    (the raw value kept as ``raw``)."""
    if weight <= 0:
        return [dict(r, raw=r["value"]) for r in records]
    series: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        series.setdefault((r["run"], r["metric"]), []).append(i)
    out = [dict(r, raw=r["value"]) for r in records]
    for idx in series.values():
        idx = sorted(idx, key=lambda i: (records[i]["step"] is None, records[i]["step"] or 0))
        for i, s in zip(idx, ema([records[i]["value"] for i in idx], weight)):
            out[i]["value"] = float(s)
    return out


def band(records: list[dict], by: Sequence[str] = ("cut",)) -> list[dict]:
    """Mean ± sample std over seeds: one record per (``by``..., metric, step):
    ``{**by, "metric", "label", "step", "mean", "std", "n"}`` (``std`` None when n < 2)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        k = (*(r.get(b) for b in by), r["metric"], r["label"], r["step"])
        groups.setdefault(k, []).append(r["value"])
    out = []
    for k, vals in groups.items():
        a = np.asarray(vals, float)
        out.append({**dict(zip(by, k[:len(by)])), "metric": k[-3], "label": k[-2],
                    "step": k[-1], "mean": float(a.mean()),
                    "std": float(a.std(ddof=1)) if len(a) > 1 else None, "n": int(len(a))})
    return sorted(out, key=lambda r: (*(str(r[b]) for b in by), r["metric"],
                                      r["step"] if r["step"] is not None else -1))


# ------------------------------------------------------------------------------------ table
def runs_table(groups: dict[str, list], read=None, *, state_of=None) -> list[dict]:
    """One row per run of every group (``{group: [run dirs]}``, e.g. :func:`list_groups`):
    ``{"run", "group", "state", "epochs_done", <KEY_CONFIG>..., "test_<metric>"...,
    "run_dir"}``. ``read`` reads a run (default :func:`read_run`), ``state_of`` maps a
    :class:`RunState` to the state shown (default its ``state``)."""
    read = read or read_run
    rows = []
    for group, dirs in groups.items():
        for d in dirs:
            rs = read(d)
            cfg, test = rs.config or {}, (rs.result or {}).get("test") or {}
            rows.append({"run": f"{group}/{Path(rs.run_dir).name}"
                         if Path(rs.run_dir).name != group else group,
                         "group": group,
                         "state": state_of(rs) if state_of else rs.state,
                         "epochs_done": len(rs.epochs),
                         **{k: cfg.get(k) for k in KEY_CONFIG},
                         **{f"test_{m}": test.get(m) for m in METRICS},
                         "run_dir": rs.run_dir})
    return rows


def filter_rows(rows: list[dict], text: str = "", *, states: Iterable[str] | None = None,
                columns: Sequence[str] | None = None) -> list[dict]:
    """Rows whose ``state`` is in ``states`` (all when None) and that contain every
    whitespace-separated word of ``text`` (case-insensitive) in one of ``columns`` (default:
    every column but ``run_dir``)."""
    words = text.lower().split()
    keep = None if states is None else set(states)
    out = []
    for r in rows:
        if keep is not None and r.get("state") not in keep:
            continue
        cols = columns or [c for c in r if c != "run_dir"]
        hay = " ".join("" if r.get(c) is None else str(r.get(c)) for c in cols).lower()
        if all(w in hay for w in words):
            out.append(r)
    return out


# ------------------------------------------------------------------------------------ diff
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def config_diff(a: dict | None, b: dict | None, *, only_different: bool = False) -> list[dict]:
    """Side-by-side configurations: ``{"key", "a", "b", "same"}`` per key of either (nested
    dicts flattened as ``outer.inner``), differing keys first, then alphabetical."""
    fa, fb = _flatten(a or {}), _flatten(b or {})
    rows = []
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k), fb.get(k)
        same = k in fa and k in fb and va == vb
        if only_different and same:
            continue
        rows.append({"key": k, "a": va, "b": vb, "same": same})
    return sorted(rows, key=lambda r: (r["same"], r["key"]))

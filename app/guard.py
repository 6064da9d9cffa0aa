"""What a served dashboard lets a signed-in user do: which paths it reads, how much work one
user and the whole server may start, and what an error may show (README "Serving the
dashboard").

- Path fields (dataset folders, checkpoint paths, the path options each dataset kind declares)
  only reach files under ``RCV_DATA_ROOT`` (relative paths are read from it; without it, paths
  are turned off and only the embedded demos and uploads work); options a dataset kind declares
  as widening what it reads (``folder``'s ``allow_outside``) are refused.
- Training runs, queued scans and uploads have limits (:class:`Limits`, from the environment),
  per user where a user can fill them and per server; counts are given by the caller
  (app/services.py), which knows the jobs and runs.
- Streamlit shows no exception details, and the app's own messages show no traceback and no
  server folder (:func:`redact`).

Outside served mode nothing here refuses anything.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from app import state
from app.auth import DATA_ROOT_ENV, README_HINT, served

NAMED_WEIGHTS = frozenset({"imagenet", "random"})


class Refused(ValueError):
    """A request the served dashboard does not carry out; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# paths


def data_root() -> Path | None:
    """``$RCV_DATA_ROOT`` resolved (symlinks followed), or None when unset."""
    root = os.environ.get(DATA_ROOT_ENV)
    return Path(os.path.realpath(Path(root).expanduser())) if root else None


def vet_path(text: str, what: str, *, uploads: bool = False) -> str:
    """The path a served dashboard may pass to rcvcore for ``text`` (unchanged when not served).

    Relative paths are read from the data root; the result (symlinks and ``..`` resolved) must
    lie under it, or be a stored upload when ``uploads``. Refusals never say whether the path
    exists, nor where the data root is.

    Raises:
        Refused: outside the data root, or no data root configured.
    """
    if not served():
        return text
    p = Path(text).expanduser() if not text.startswith("~") else Path(text)
    if uploads:
        real = Path(os.path.realpath(p))
        if real.parent == Path(os.path.realpath(state.uploads_dir())):
            return str(real)
    root = data_root()
    if root is None:
        raise Refused(f"{what}: paths are turned off on this server (no {DATA_ROOT_ENV} set): "
                      "use an embedded demo dataset" + (" or an upload" if uploads else "")
                      + ". " + README_HINT)
    real = Path(os.path.realpath(p if p.is_absolute() else root / p))
    if not real.is_relative_to(root):
        raise Refused(f"{what}: {text!r} is outside this server's data folder. Give a path "
                      "inside it (relative paths are read from it).")
    return str(real)


def _kind(spec: str | None):
    """The registered dataset kind of ``KIND[:PATH]``, or None (rcvcore refuses it later)."""
    from rcvcore.data.registry import KINDS

    return KINDS.get((spec or "").partition(":")[0])


def vet_dataset(spec: str | None, options: dict) -> tuple[str | None, dict]:
    """``KIND:PATH`` and loader options as a served dashboard may pass them on: the kind says
    which of its options are paths (vetted like the path) and which widen what it reads
    (refused)."""
    if not served():
        return spec, options
    kind = _kind(spec)
    if options and kind is None:
        raise Refused("Dataset options need a known dataset kind: choose one of the listed "
                      "datasets.")
    bad = sorted(set(kind.widening_options if kind else ()) & set(options))
    if bad:
        raise Refused(f"Dataset option {bad[0]!r} cannot be set on a served dashboard (it lets "
                      "a dataset read files outside its folder); use the command line.")
    out = dict(options)
    for key in set(kind.path_options if kind else ()) & set(options):
        out[key] = vet_path(str(options[key]), f"Dataset option {key}")
    if spec and ":" in spec:
        name, _, path = spec.partition(":")
        if path:
            spec = f"{name}:{vet_path(path, f'Path of the {name} dataset')}"
    return spec, out


def vet_config_kwargs(kwargs: dict) -> dict:
    """The keyword arguments of a ScanConfig / TrainConfig with every path vetted (served mode):
    the dataset and its options, and a checkpoint given as ``weights``."""
    if not served():
        return kwargs
    out = dict(kwargs)
    spec, opts = vet_dataset(out.get("dataset"), dict(out.get("dataset_options") or {}))
    out["dataset"] = spec
    if "dataset_options" in out:
        out["dataset_options"] = opts
    weights = out.get("weights")
    if isinstance(weights, str) and weights not in NAMED_WEIGHTS:
        out["weights"] = vet_path(weights, "Checkpoint", uploads=True)
    for key in ("dataset_cache_dir", "cache_dir"):
        if out.get(key) is not None:
            raise Refused(f"{key} cannot be set on a served dashboard.")
    return out


# --------------------------------------------------------------------------------------------
# limits


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one served dashboard lets its users start (environment variable in brackets)."""

    max_epochs: int = 50          # RCV_MAX_EPOCHS: epochs of one run
    max_seeds: int = 10           # RCV_MAX_SEEDS: seeds of one launch
    max_parallel: int = 2         # RCV_MAX_PARALLEL: runs at a time of one launch
    max_active_runs: int = 4      # RCV_MAX_ACTIVE_RUNS: runs running or waiting, whole server
    max_queued_scans: int = 2     # RCV_MAX_QUEUED_SCANS: scans running or queued, whole server
    max_user_scans: int = 1       # RCV_MAX_USER_SCANS: scans running or queued, one user
    uploads_mb: int = 1024        # RCV_UPLOADS_MB: disk of all stored uploads (MB)
    user_uploads_mb: int = 512    # RCV_USER_UPLOADS_MB: bytes one user may upload per hour (MB)
    upload_megapixels: int = 64   # RCV_UPLOAD_MEGAPIXELS: decoded pixels of one request (M)

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(**{f.name: _env_int(f"RCV_{f.name.upper()}", getattr(d, f.name))
                      for f in dataclasses.fields(cls)})


def limits() -> Limits | None:
    """The limits in force: None when not served (a local user may use the whole machine)."""
    return Limits.from_env() if served() else None


def check_training(n_seeds: int, epochs: int, parallel: int, n_runs: int, busy: int) -> None:
    """Refuse a launch beyond the limits (served mode only); ``busy``: runs running or waiting
    on the server."""
    lim = limits()
    if lim is None:
        return
    if n_seeds > lim.max_seeds:
        raise Refused(f"{n_seeds} seeds: this server takes at most {lim.max_seeds} per launch.")
    if epochs > lim.max_epochs:
        raise Refused(f"{epochs} epochs: this server takes at most {lim.max_epochs} per run.")
    if parallel > lim.max_parallel:
        raise Refused(f"{parallel} runs at a time: this server allows at most "
                      f"{lim.max_parallel}.")
    if busy + n_runs > lim.max_active_runs:
        raise Refused(f"{busy} run(s) are running or waiting on this server and it takes at "
                      f"most {lim.max_active_runs}: wait for them to end (or cancel some), or "
                      "launch fewer runs.")


def check_scan_queue(busy: int, busy_user: int) -> None:
    """Refuse one more scan when the server (``busy`` running or queued) or this user
    (``busy_user``) is at its limit (served mode only)."""
    lim = limits()
    if lim is None:
        return
    if busy_user >= lim.max_user_scans:
        raise Refused(f"You have {busy_user} scan(s) running or queued (at most "
                      f"{lim.max_user_scans} per user on this server): wait for it to end or "
                      "cancel it.")
    if busy >= lim.max_queued_scans:
        raise Refused(f"{busy} scans are running or queued on this server (at most "
                      f"{lim.max_queued_scans}): wait for one to end.")


# --------------------------------------------------------------------------------------------
# error messages


def redact(text: str) -> str:
    """``text`` as the browser may see it: in served mode, server folders replaced by names."""
    if not served() or not text:
        return text
    subs = []
    folders = (("<data>", data_root()), ("<runs>", state.runs_root(create=False)),
               ("<home>", Path.home()), ("<app>", Path(__file__).resolve().parent.parent))
    for name, folder in folders:
        if folder is not None:
            subs.append((str(Path(os.path.realpath(folder))), name))
            subs.append((str(Path(folder).absolute()), name))
    for path, name in sorted(set(subs), key=lambda s: -len(s[0])):
        if len(path) > 1:
            text = text.replace(path, name)
    return text


def failure_message(what: str, exc: BaseException) -> str:
    """What the browser is told of an unexpected failure in served mode (the traceback goes to
    the server log only)."""
    logging.getLogger("rcvcore.app").error("%s failed", what, exc_info=exc)
    return f"{what} failed ({type(exc).__name__}). The details are in the server log."


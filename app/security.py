"""Serving the dashboard beyond this machine, safely: the mode, authentication, the data root,
limits, uploads and what an error may show (README "Serving the dashboard").

**Served mode** is on when the server listens on anything but a loopback address (an unset
``server.address`` listens on every interface), when authentication is configured (a password
means other people reach this server, e.g. through a reverse proxy on 127.0.0.1), or when
``RCV_DASHBOARD_SERVED=1``. In served mode:

- every page asks for the password (``RCV_DASHBOARD_PASSWORD`` in the environment or in
  ``.streamlit/secrets.toml``, 12 characters or more) or Streamlit's own login (``[auth]`` in
  secrets.toml); without either the server refuses to start (``python -m app.serve``) and every
  page refuses to draw (a bare ``streamlit run``);
- path fields (dataset folders, checkpoint paths, path-valued loader options) only reach files
  under ``RCV_DATA_ROOT`` (relative paths are read from it; without it, paths are turned off and
  only the embedded demos and uploads work); loader options that widen what a dataset may read
  (``allow_outside``) are refused;
- training runs, queued scans and uploads have limits (:class:`Limits`, from the environment);
- Streamlit shows no exception details, and the app's own messages show no traceback.

Uploads are deleted when no longer needed in every mode: a checkpoint whose scan failed at once,
the others once unused for ``RCV_UPLOAD_TTL_HOURS`` (and never while a scan or run uses them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

from app import state

PASSWORD_ENV = "RCV_DASHBOARD_PASSWORD"
SERVED_ENV = "RCV_DASHBOARD_SERVED"
DATA_ROOT_ENV = "RCV_DATA_ROOT"
MIN_PASSWORD_LENGTH = 12
AUTH_KEY = "rcv_authenticated"
# loader options a served dashboard never passes on: they widen what a dataset may read
FORBIDDEN_OPTIONS = frozenset({"allow_outside"})
# loader options whose value is a path (checked against the data root like the path fields)
PATH_OPTIONS = frozenset({"annotations"})
NAMED_WEIGHTS = frozenset({"imagenet", "random"})
README_HINT = 'See README "Serving the dashboard".'


class Refused(ValueError):
    """A request the served dashboard does not carry out; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# the mode


def is_loopback(address: str | None) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, ``localhost``).

    An unset or empty address is *not* loopback: Streamlit then listens on every interface.
    A host name other than ``localhost`` is not resolved and counts as non-loopback.
    """
    if not address:
        return False
    a = address.strip().strip("[]").lower()
    if a in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


def bind_address() -> str | None:
    from streamlit import config

    return config.get_option("server.address")


def _secret(name: str):
    """A top-level value of Streamlit's secrets (``.streamlit/secrets.toml``), or None."""
    from streamlit import config

    if not any(os.path.isfile(f) for f in config.get_option("secrets.files") or ()):
        return None  # (cheap: this is asked several times per page run)
    try:
        return st.secrets.get(name) if name in st.secrets else None
    except Exception:  # noqa: BLE001  a secrets file that does not parse: nothing configured
        return None


def password() -> str | None:
    """The dashboard password: ``$RCV_DASHBOARD_PASSWORD``, else the secret of that name."""
    value = os.environ.get(PASSWORD_ENV)
    if value is None:
        value = _secret(PASSWORD_ENV)
    return None if value is None else str(value)


#: keys Streamlit's login needs under ``[auth]``, and for each identity provider (its keys
#: directly under ``[auth]`` for the default provider, or an ``[auth.NAME]`` table per provider)
AUTH_KEYS = ("redirect_uri", "cookie_secret")
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
AUTHLIB_MIN = (1, 3, 2)   # what st.login requires


def _authlib_ok() -> bool:
    """Authlib (which ``st.login`` needs, at least :data:`AUTHLIB_MIN`) is installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("authlib")
    except PackageNotFoundError:
        return False
    parts = []
    for p in found.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= AUTHLIB_MIN


def _auth_section():
    """The ``[auth]`` table of secrets.toml (a mapping), or None when there is none."""
    auth = _secret("auth")
    return auth if isinstance(auth, Mapping) else None


def login_providers() -> list[str | None]:
    """The identity providers of ``[auth]`` that ``st.login`` can use: None for the default one
    (its keys directly under ``[auth]``), then the name of each complete ``[auth.NAME]``."""
    auth = _auth_section() or {}
    out: list[str | None] = [None] if all(auth.get(k) for k in PROVIDER_KEYS) else []
    out += [name for name, v in auth.items() if isinstance(v, Mapping) and "_" not in name
            and all(v.get(k) for k in PROVIDER_KEYS)]
    return out


def streamlit_auth_problem() -> str | None:
    """Why the ``[auth]`` table of secrets.toml cannot give a working login, or None when it
    can (or when there is none)."""
    auth = _auth_section()
    if auth is None:
        return None
    missing = [k for k in AUTH_KEYS if not auth.get(k)]
    if missing:
        return (f"[auth] in .streamlit/secrets.toml lacks {' and '.join(missing)} (Streamlit's "
                "login needs redirect_uri, ending in /oauth2callback, and a random "
                "cookie_secret)")
    if not login_providers():
        return ("[auth] in .streamlit/secrets.toml names no identity provider: give "
                f"{', '.join(PROVIDER_KEYS)} under [auth] (one provider) or under [auth.NAME] "
                "(one table per provider, no underscore in NAME)")
    if not _authlib_ok():
        return ("Streamlit's login ([auth] in .streamlit/secrets.toml) needs Authlib "
                f">= {'.'.join(map(str, AUTHLIB_MIN))}, which is not installed: pip install "
                "'Authlib>=1.3.2' (or use RCV_DASHBOARD_PASSWORD instead)")
    return None


def streamlit_auth_configured() -> bool:
    """Streamlit's own OIDC login (``st.login``) is configured in secrets.toml (``[auth]``) and
    can work: its keys, at least one provider, and Authlib installed."""
    return _auth_section() is not None and streamlit_auth_problem() is None


def auth_problem() -> str | None:
    """Why authentication is not (properly) configured, or None when it is. An ``[auth]``
    table that cannot work is a problem even when a password is set: whoever wrote it expects
    that login, not the password."""
    if _auth_section() is not None:
        return streamlit_auth_problem()
    pw = password()
    if pw is None:
        return (f"no authentication is configured: set {PASSWORD_ENV} (at least "
                f"{MIN_PASSWORD_LENGTH} characters) in the environment or in "
                ".streamlit/secrets.toml, or configure Streamlit's login ([auth] in "
                ".streamlit/secrets.toml)")
    if len(pw) < MIN_PASSWORD_LENGTH:
        return (f"{PASSWORD_ENV} is too short ({len(pw)} characters): use at least "
                f"{MIN_PASSWORD_LENGTH}")
    return None


def auth_configured() -> bool:
    return auth_problem() is None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def served(address: str | None = ...) -> bool:
    """Served mode (see the module docstring); ``address`` defaults to the server's."""
    address = bind_address() if address is ... else address
    return (not is_loopback(address) or _flag(SERVED_ENV) or password() is not None
            or _auth_section() is not None)


def startup_problem(address: str | None) -> str | None:
    """Why a server about to listen on ``address`` must not start, or None."""
    where = address or "every interface (server.address unset)"
    if not served(address):
        return None
    problem = auth_problem()
    if problem:
        return (f"rcvcore dashboard: refusing to serve on {where} without authentication: "
                f"{problem}. Or serve this machine only: --server.address 127.0.0.1. "
                + README_HINT)
    root = os.environ.get(DATA_ROOT_ENV)
    if root and not Path(root).expanduser().is_dir():
        return (f"rcvcore dashboard: {DATA_ROOT_ENV}={root!r} is not a folder. Point it at the "
                "folder holding the datasets this server may read, or unset it (then only the "
                "embedded demos and uploads can be used). " + README_HINT)
    return None


def enforce_server_settings() -> None:
    """Settings that must hold however the server was started (``make app``, Docker, a bare
    ``streamlit run`` from another folder that never read .streamlit/config.toml).

    - ``runner.postScriptGC`` off: Streamlit's full ``gc.collect(2)`` after every script run
      costs ~0.2 s of the GIL with torch loaded; with the Scan page's progress fragment polling,
      it starved the scan thread (issue 15: 334 s instead of 47 s). Python's own generational
      collector still runs.
    - served mode: no exception details in the browser.
    """
    from streamlit import config

    if config.get_option("runner.postScriptGC"):
        config.set_option("runner.postScriptGC", False)
    if served() and config.get_option("client.showErrorDetails") != "none":
        st.set_option("client.showErrorDetails", "none")


# --------------------------------------------------------------------------------------------
# the gate


@dataclasses.dataclass
class _Failures:
    times: list[float] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


@st.cache_resource(show_spinner=False)
def _failures() -> _Failures:
    """Failed sign-ins of the last minute, one list per server (throttles guessing across
    sessions)."""
    return _Failures()


MAX_FAILURES_PER_MINUTE = 10


def check_password(given: str) -> bool:
    """Constant-time comparison with the configured password (False when none is)."""
    pw = password()
    if pw is None or len(pw) < MIN_PASSWORD_LENGTH:
        return False
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(pw.encode()).digest())


def gate() -> bool:
    """Draw the sign-in (or the refusal) and return False, or return True: draw the page.

    Called by app/main.py before any page. Outside served mode it returns True at once.
    """
    if not served():
        return True
    problem = auth_problem()
    if problem:
        st.error(f"This dashboard is served to other machines but {problem}. It draws no page "
                 "until then. " + README_HINT, icon=":material/lock:")
        return False
    if streamlit_auth_configured():
        if st.user.is_logged_in:
            st.sidebar.button("Log out", on_click=st.logout, key="rcv_logout")
            return True
        st.title("rcvcore dashboard")
        for provider in login_providers():
            if provider is None:
                st.button("Log in", on_click=st.login, type="primary", key="rcv_login")
            else:
                st.button(f"Log in with {provider}", on_click=st.login, args=(provider,),
                          type="primary", key=f"rcv_login_{provider}")
        return False
    if st.session_state.get(AUTH_KEY):
        if st.sidebar.button("Sign out", key="rcv_signout"):
            st.session_state.clear()
            st.rerun()
        return True
    st.title("rcvcore dashboard")
    with st.form("rcv_signin"):
        given = st.text_input("Password", type="password", key="rcv_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        fails = _failures()
        with fails.lock:
            now = time.monotonic()
            fails.times[:] = [t for t in fails.times if now - t < 60]
            throttled = len(fails.times) >= MAX_FAILURES_PER_MINUTE
        if throttled:
            st.error("Too many failed sign-ins on this server: try again in a minute.")
        elif check_password(given):
            st.session_state[AUTH_KEY] = True
            st.session_state.pop("rcv_password", None)
            st.rerun()
        else:
            with fails.lock:
                fails.times.append(time.monotonic())
            time.sleep(1.0)  # slows guessing from this session
            st.error("Wrong password.")
    return False


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
    p = Path(text).expanduser()
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


def vet_dataset(spec: str | None, options: dict) -> tuple[str | None, dict]:
    """``KIND:PATH`` and loader options as a served dashboard may pass them on."""
    if not served():
        return spec, options
    bad = sorted(FORBIDDEN_OPTIONS & set(options))
    if bad:
        raise Refused(f"Dataset option {bad[0]!r} cannot be set on a served dashboard (it lets "
                      "a dataset read files outside its folder); use the command line.")
    out = dict(options)
    for key, value in options.items():
        if isinstance(value, str) and (key in PATH_OPTIONS or os.sep in value):
            out[key] = vet_path(value, f"Dataset option {key}")
    if spec and ":" in spec:
        kind, _, path = spec.partition(":")
        if path:
            spec = f"{kind}:{vet_path(path, f'Path of the {kind} dataset')}"
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
    uploads_mb: int = 1024        # RCV_UPLOADS_MB: disk of all stored uploads (MB)

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(**{f.name: _env_int(f"RCV_{f.name.upper()}", getattr(d, f.name))
                      for f in dataclasses.fields(cls)})


def limits() -> Limits | None:
    """The limits in force: None when not served (a local user may use the whole machine)."""
    return Limits.from_env() if served() else None


def _active_or_waiting_runs() -> int:
    from app import services

    n = 0
    for group, dirs in services.list_groups().items():
        runs = services.read_runs(dirs)
        n += sum(services.run_state(r) in services.RUN_STATES_ACTIVE for r in runs)
        plan = services.read_group(state.runs_root() / group)
        if plan and not plan.get("cancelled"):
            n += max(0, len(plan["seeds"]) * len(plan["cuts"]) - len(dirs))
    return n


def check_training(n_seeds: int, epochs: int, parallel: int, n_runs: int) -> None:
    """Refuse a launch beyond the limits (served mode only)."""
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
    busy = _active_or_waiting_runs()
    if busy + n_runs > lim.max_active_runs:
        raise Refused(f"{busy} run(s) are running or waiting on this server and it takes at "
                      f"most {lim.max_active_runs}: wait for them to end (or cancel some), or "
                      "launch fewer runs.")


def check_scan_queue() -> None:
    lim = limits()
    if lim is None:
        return
    from app import services

    busy = len(services.running_jobs())
    if busy >= lim.max_queued_scans:
        raise Refused(f"{busy} scans are running or queued on this server (at most "
                      f"{lim.max_queued_scans}): wait for one to end.")


# --------------------------------------------------------------------------------------------
# uploads

UPLOAD_TTL_ENV = "RCV_UPLOAD_TTL_HOURS"


def _upload_ttl_s() -> float:
    try:
        return float(os.environ.get(UPLOAD_TTL_ENV, "24")) * 3600
    except ValueError:
        return 24 * 3600.0


def _in_uploads(path) -> Path | None:
    if not isinstance(path, str) or path in NAMED_WEIGHTS:
        return None
    real = Path(os.path.realpath(Path(path).expanduser()))
    return real if real.parent == Path(os.path.realpath(state.uploads_dir())) else None


def uploads_in_use() -> set[Path]:
    """Stored uploads a running or queued scan, or an active or waiting run, still reads."""
    from app import services

    used: set[Path] = set()
    for job in services.running_jobs():
        p = _in_uploads(job.config.get("weights"))
        if p:
            used.add(p)
    try:
        for group, dirs in services.list_groups().items():
            plan = services.read_group(state.runs_root() / group) or {}
            if plan and not plan.get("cancelled"):
                p = _in_uploads((plan.get("base") or {}).get("weights"))
                if p:
                    used.add(p)
            for r in services.read_runs(dirs):
                if services.run_state(r) in services.RUN_STATES_ACTIVE:
                    p = _in_uploads((r.config or {}).get("weights"))
                    if p:
                        used.add(p)
    except OSError:
        pass
    return used


def sweep_uploads(now: float | None = None) -> list[Path]:
    """Delete stored uploads unused for ``RCV_UPLOAD_TTL_HOURS`` (default 24) and not in use,
    and half-written ``.part`` files older than an hour. Returns what was deleted."""
    now = time.time() if now is None else now
    ttl = _upload_ttl_s()
    gone: list[Path] = []
    files = [p for p in state.uploads_dir().iterdir() if p.is_file()]
    if not files:
        return gone
    used = uploads_in_use()
    for p in files:
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        stale = age > (3600 if p.name.endswith(".part") else ttl)
        if stale and Path(os.path.realpath(p)) not in used:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


@st.cache_resource(show_spinner=False)
def _last_sweep() -> list[float]:
    return [0.0]


def maybe_sweep_uploads(every_s: float = 600.0) -> None:
    """:func:`sweep_uploads` at most every ``every_s`` per server (called on page runs)."""
    last = _last_sweep()
    if time.monotonic() - last[0] < every_s:
        return
    last[0] = time.monotonic()
    try:
        sweep_uploads()
    except OSError:  # a racing delete or a read-only folder must not break the page
        pass


def discard_upload(weights) -> bool:
    """Delete the stored upload ``weights`` (a rejected checkpoint) unless something else still
    reads it. Returns True when deleted."""
    p = _in_uploads(weights)
    if p is None or not p.exists():
        return False
    from app import services

    others = [j for j in services.running_jobs() if _in_uploads(j.config.get("weights")) == p]
    if len(others) > 1:  # the failing job itself may still count as running
        return False
    p.unlink(missing_ok=True)
    return True


def uploads_bytes() -> int:
    return sum(p.stat().st_size for p in state.uploads_dir().iterdir() if p.is_file())


def keep_upload(uploaded, stored: dict) -> str | None:
    """Store an uploaded checkpoint once (under its hash) and return its path; store it again if
    it was deleted meanwhile. In served mode a full upload folder refuses it (with a message).

    Args:
        uploaded: the ``st.file_uploader`` value.
        stored: ``{file_id: path}`` kept in the session.
    """
    path = stored.get(uploaded.file_id)
    if path and Path(path).is_file():
        Path(path).touch()  # in use: not swept
        return path
    sweep_uploads()
    lim = limits()
    if lim is not None and uploads_bytes() + uploaded.size > lim.uploads_mb * 2**20:
        st.error(f"The upload folder of this server is full (at most {lim.uploads_mb} MB): "
                 "try again later, or scan with the imagenet or random weights.")
        return None
    path = str(state.store_upload(uploaded.getvalue(), Path(uploaded.name).suffix))
    stored[uploaded.file_id] = path
    return path


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
    import logging

    logging.getLogger("rcvcore.app").error("%s failed", what, exc_info=exc)
    return f"{what} failed ({type(exc).__name__}). The details are in the server log."

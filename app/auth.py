"""Who may use a served dashboard: the mode, the credentials, the sign-in and the HTTP gate
(README "Serving the dashboard").

**Served mode** is on when the server listens on anything but a loopback address (an unset
``server.address`` listens on every interface), when authentication is configured (a password
means other people reach this server, e.g. through a reverse proxy on 127.0.0.1), or when
``RCV_DASHBOARD_SERVED=1``. In served mode every request needs a credential:
``RCV_DASHBOARD_PASSWORD`` (environment or ``.streamlit/secrets.toml``, 12 characters or more)
or Streamlit's own login (``[auth]`` in secrets.toml); without either the server refuses to
start (``python -m app.serve``) and every page refuses to draw (a bare ``streamlit run``).

The credential is checked twice:

- **at the HTTP layer** (:class:`HttpGate`, an ASGI middleware that ``app/gateway.py`` puts in
  front of Streamlit through ``st.App``, which ``python -m app.serve`` runs): a request without
  a valid sign-in cookie never reaches Streamlit's websocket, upload, media, component or static
  endpoints (401, a refused websocket, or a redirect to the sign-in form for a page);
- **in the page** (:func:`gate`), for a bare ``streamlit run app/main.py`` that has no gateway.

State that guards the server (the sign-in throttle, the cookie key) lives in this module, not
in Streamlit's caches, so a client's ``clear_cache`` message cannot reset it.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import os
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

PASSWORD_ENV = "RCV_DASHBOARD_PASSWORD"
SERVED_ENV = "RCV_DASHBOARD_SERVED"
SECRET_ENV = "RCV_COOKIE_SECRET"
MIN_PASSWORD_LENGTH = 12
AUTH_KEY = "rcv_authenticated"
USER_KEY = "rcv_user"
README_HINT = 'See README "Serving the dashboard".'
DATA_ROOT_ENV = "RCV_DATA_ROOT"

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
# the sign-in: throttle, password check, signed cookie

COOKIE = "rcv_auth"
COOKIE_MAX_AGE_S = 12 * 3600
MAX_FAILURES_PER_MINUTE = 10
_PROCESS_KEY = secrets.token_bytes(32)


class _Throttle:
    """Failed sign-ins of the last minute, one record per server process (throttles guessing
    across sessions and across the HTTP form and the page form)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.lock = threading.Lock()

    def blocked(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self.lock:
            while self.times and now - self.times[0] >= 60:
                self.times.popleft()
            return len(self.times) >= MAX_FAILURES_PER_MINUTE

    def fail(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())


THROTTLE = _Throttle()


def check_password(given: str) -> bool:
    """Constant-time comparison with the configured password (False when none is)."""
    pw = password()
    if pw is None or len(pw) < MIN_PASSWORD_LENGTH:
        return False
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                               hashlib.sha256(pw.encode()).digest())


def _cookie_key() -> bytes:
    """The key that signs sign-in cookies: ``$RCV_COOKIE_SECRET`` (sign-ins survive a restart)
    or one random key per server process; mixed with the password, so changing the password
    signs everybody out."""
    base = os.environ.get(SECRET_ENV, "").encode() or _PROCESS_KEY
    return hashlib.sha256(base + b"\0" + (password() or "").encode()).digest()


def make_token(user: str | None = None, now: float | None = None) -> str:
    """A signed sign-in cookie value ``user.expiry.signature`` (``user``: a new random id)."""
    user = user or secrets.token_hex(8)
    expiry = int((time.time() if now is None else now) + COOKIE_MAX_AGE_S)
    body = f"{user}.{expiry}"
    sig = hmac.new(_cookie_key(), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{sig}"


def read_token(value: str | None, now: float | None = None) -> str | None:
    """The user id of a valid, unexpired sign-in cookie value, else None."""
    if not value or value.count(".") != 2:
        return None
    user, expiry, sig = value.split(".")
    want = hmac.new(_cookie_key(), f"{user}.{expiry}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, sig) or not expiry.isdigit():
        return None
    return user if int(expiry) > (time.time() if now is None else now) else None


def _streamlit_login_user(cookies: Mapping[str, str]) -> str | None:
    """The e-mail (or subject) in Streamlit's signed login cookie, or None."""
    import json

    from streamlit.auth_util import get_cookie_with_chunks
    from streamlit.web.server.starlette import starlette_app_utils as utils
    from streamlit.web.server.starlette.starlette_server_config import USER_COOKIE_NAME

    try:
        secret = str((_auth_section() or {}).get("cookie_secret") or "")

        def one(name: str) -> bytes | None:
            raw = cookies.get(name)
            return None if raw is None else utils.decode_signed_value(
                secret, name, raw.encode("latin-1"))

        raw = get_cookie_with_chunks(one, USER_COOKIE_NAME)
        info = json.loads(raw) if raw else {}
    except Exception:  # noqa: BLE001  a cookie that does not decode is no login
        return None
    if not isinstance(info, dict) or not info.get("is_logged_in"):
        return None
    return str(info.get("email") or info.get("sub") or "signed-in")


def user_from_cookies(cookies: Mapping[str, str]) -> str | None:
    """Who the request's cookies sign in (``pw:<id>`` for a password sign-in, ``oidc:<email>``
    for Streamlit's login), or None."""
    if streamlit_auth_configured():
        who = _streamlit_login_user(cookies)
        return f"oidc:{who}" if who else None
    user = read_token(cookies.get(COOKIE))
    return f"pw:{user}" if user else None


def session_user() -> str:
    """Who this page run acts for: ``local`` outside served mode, else the signed-in user (the
    one every job, progress bar, Cancel button and quota belongs to)."""
    if not served():
        return "local"
    try:
        who = user_from_cookies(st.context.cookies or {})
    except Exception:  # noqa: BLE001  no request context (tests, bare scripts)
        who = None
    if who is None and streamlit_auth_configured() and st.user.is_logged_in:
        who = f"oidc:{st.user.get('email') or st.user.get('sub') or 'signed-in'}"
    return who or st.session_state.setdefault(USER_KEY, f"page:{secrets.token_hex(8)}")


# --------------------------------------------------------------------------------------------
# the page gate (a bare `streamlit run app/main.py`; behind the HTTP gate it is signed in)


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
        return _login_gate()
    if user_from_cookies(st.context.cookies or {}):
        st.sidebar.link_button("Sign out", SIGNOUT_PATH, key="rcv_signout_link")
        return True
    if st.session_state.get(AUTH_KEY):
        if st.sidebar.button("Sign out", key="rcv_signout"):
            st.session_state.clear()
            st.rerun()
        return True
    return _password_form()


def _login_gate() -> bool:
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


def _password_form() -> bool:
    st.title("rcvcore dashboard")
    with st.form("rcv_signin"):
        given = st.text_input("Password", type="password", key="rcv_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if THROTTLE.blocked():
            st.error("Too many failed sign-ins on this server: try again in a minute.")
        elif check_password(given):
            st.session_state[AUTH_KEY] = True
            st.session_state.pop("rcv_password", None)
            st.rerun()
        else:
            THROTTLE.fail()
            time.sleep(1.0)  # slows guessing from this session
            st.error("Wrong password.")
    return False


# --------------------------------------------------------------------------------------------
# the HTTP gate (ASGI middleware in front of every Streamlit endpoint)

SIGNIN_PATH = "/_rcv/signin"
SIGNOUT_PATH = "/_rcv/signout"
LOGIN_PATHS = ("/auth/login", "/auth/logout", "/oauth2callback")   # Streamlit's own login
OPEN_PATHS = ("/_stcore/health", "/favicon.png")
MAX_FORM_BYTES = 4096


def _base() -> str:
    from streamlit import config

    return "/" + (config.get_option("server.baseUrlPath") or "").strip("/")


def _local(path: str, base: str) -> str:
    """``path`` without the server's base URL path (``/`` when it is the base itself)."""
    if base != "/" and (path == base or path.startswith(base + "/")):
        path = path[len(base):] or "/"
    return path


def _cookies(scope) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            c = SimpleCookie()
            try:
                c.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001, S112  a malformed cookie header signs nobody in
                continue
            jar.update({k: m.value for k, m in c.items()})
    return jar


def _header(scope, name: bytes) -> str:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return ""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><meta name='viewport' content='width=device-width'></head><body "
            "style='font-family:sans-serif;max-width:28em;margin:4em auto'>"
            f"<h1>rcvcore dashboard</h1>{body}</body></html>").encode()


def _signin_form(base: str, next_path: str, message: str = "") -> bytes:
    action = html.escape(base.rstrip("/") + SIGNIN_PATH)
    note = f"<p role='alert'>{html.escape(message)}</p>" if message else ""
    if streamlit_auth_configured():
        return _page("Log in", note + _login_links(base))
    return _page("Sign in", note + f"<form method='post' action='{action}'>"
                 f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
                 "<label>Password <input type='password' name='password' autofocus "
                 "autocomplete='current-password'></label> <button type='submit'>Sign in"
                 "</button></form>")


def _login_links(base: str) -> str:
    from streamlit.auth_util import encode_provider_token

    links = []
    for provider in login_providers():
        try:
            token = encode_provider_token(provider or "default")
        except Exception:  # noqa: BLE001, S112  a provider Streamlit cannot use: no link
            continue
        url = f"{base.rstrip('/')}/auth/login?provider={urllib.parse.quote(token)}"
        links.append(f"<p><a href='{html.escape(url)}'>Log in"
                     f"{' with ' + html.escape(provider) if provider else ''}</a></p>")
    return "".join(links) or "<p>No identity provider can be used.</p>"


def _safe_next(value: str, base: str) -> str:
    """A local path to return to after sign-in (never another site)."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return base
    return value


class HttpGate:
    """ASGI middleware: in served mode, requests without a valid sign-in never reach the app
    it wraps. Pages (GET asking for HTML) are sent to the sign-in form, other HTTP requests get
    401, websockets are refused before they open (the client sees 403). Outside served mode it
    passes everything through."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not served():
            await self.app(scope, receive, send)
            return
        base = _base()
        path = _local(scope.get("path") or "/", base)
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if auth_problem():
            await self._refuse(scope, send, 403, "authentication is not configured")
            return
        if path == SIGNIN_PATH and scope["type"] == "http" and not streamlit_auth_configured():
            await self._signin(scope, receive, send, base)
            return
        if path == SIGNOUT_PATH and scope["type"] == "http":
            await self._redirect(send, base.rstrip("/") + SIGNIN_PATH,
                                 f"{COOKIE}=; Max-Age=0; Path={base}; HttpOnly; SameSite=Lax")
            return
        if streamlit_auth_configured() and path in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        if user_from_cookies(_cookies(scope)):
            await self.app(scope, receive, send)
            return
        await self._unauthenticated(scope, send, base, path)

    async def _unauthenticated(self, scope, send, base: str, path: str) -> None:
        is_page = (scope["type"] == "http" and scope.get("method") == "GET"
                   and "text/html" in _header(scope, b"accept")
                   and not path.startswith(("/_stcore/", "/media/", "/component/",
                                            "/static/", "/app/static/")))
        if is_page:
            await self._send(send, 200, _signin_form(base, scope.get("path") or base),
                             "text/html; charset=utf-8")
        else:
            await self._refuse(scope, send, 401, "sign in first")

    async def _refuse(self, scope, send, status: int, why: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        await self._send(send, status, f"{status}: {why}.\n".encode(), "text/plain")

    async def _signin(self, scope, receive, send, base: str) -> None:
        if scope.get("method") != "POST":
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            nxt = _safe_next((query.get("next") or [base])[0], base)
            await self._send(send, 200, _signin_form(base, nxt), "text/html; charset=utf-8")
            return
        form = await _read_form(receive)
        nxt = _safe_next(((form or {}).get("next") or [base])[0], base)
        if form is None or THROTTLE.blocked():
            msg = ("Too many failed sign-ins on this server: try again in a minute."
                   if form is not None else "The form was too large.")
            await self._send(send, 429 if form is not None else 413,
                             _signin_form(base, nxt, msg), "text/html; charset=utf-8")
            return
        if not check_password((form.get("password") or [""])[0]):
            THROTTLE.fail()
            await self._send(send, 401, _signin_form(base, nxt, "Wrong password."),
                             "text/html; charset=utf-8")
            return
        secure = "; Secure" if (scope.get("scheme") == "https" or _header(
            scope, b"x-forwarded-proto") == "https") else ""
        await self._redirect(send, nxt, f"{COOKIE}={make_token()}; Max-Age={COOKIE_MAX_AGE_S}; "
                                        f"Path={base}; HttpOnly; SameSite=Lax{secure}")

    @staticmethod
    async def _send(send, status: int, body: bytes, content_type: str,
                    extra: list[tuple[bytes, bytes]] = ()) -> None:
        headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _redirect(self, send, location: str, cookie: str) -> None:
        await self._send(send, 303, b"", "text/plain",
                         [(b"location", location.encode("latin-1")),
                          (b"set-cookie", cookie.encode("latin-1"))])


async def _read_form(receive) -> dict[str, list[str]] | None:
    """The url-encoded body of a small form, or None when it is over :data:`MAX_FORM_BYTES`."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not msg.get("more_body"):
            break
    return urllib.parse.parse_qs(body.decode("utf-8", "replace"))

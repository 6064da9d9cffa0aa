"""Served mode with Streamlit's own login (``[auth]`` in .streamlit/secrets.toml; app/auth.py,
app/serve.py, README "Serving the dashboard"), as far as it can be checked without an identity
provider: when ``[auth]`` lets the server start beyond loopback, when it refuses (an ``[auth]``
that cannot work, and its absence), and what the gate draws for a logged-out and a logged-in
user. Servers started here bind 127.0.0.1 only; a refused start binds nothing.

Authlib (which ``st.login`` needs) is not installed here: where a test needs the login to be
usable it says Authlib is present (``auth._authlib_ok``), and one test checks the refusal
that its absence now gives.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit import config
from streamlit.testing.v1 import AppTest

from app import auth, browser_harness

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
from _app_env import ENV_KEYS, clean_app_env  # noqa: E402

PROVIDER = {"client_id": "rcv-test", "client_secret": "not-a-real-secret",
            "server_metadata_url": "https://id.invalid/.well-known/openid-configuration"}
AUTH = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "a-random-string-for-the-test-only", **PROVIDER}


def _toml(auth: dict) -> str:
    top = {k: v for k, v in auth.items() if not isinstance(v, dict)}
    lines = ["[auth]"] + [f'{k} = "{v}"' for k, v in top.items()]
    for name, table in auth.items():
        if isinstance(table, dict):
            lines += ["", f"[auth.{name}]"] + [f'{k} = "{v}"' for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    clean_app_env(tmp_path, monkeypatch)


@pytest.fixture
def secrets(tmp_path):
    """``write(auth)``: make ``auth`` the ``[auth]`` table of the only secrets.toml Streamlit
    reads (``secrets.files``), for this test."""
    saved = config.get_option("secrets.files")
    path = tmp_path / "secrets.toml"

    def write(auth: dict) -> Path:
        path.write_text(_toml(auth))
        config.set_option("secrets.files", [str(path)])
        st.secrets._reset()         # Streamlit parses secrets.toml once per process
        return path

    yield write
    config.set_option("secrets.files", saved)
    st.secrets._reset()


@pytest.fixture
def authlib(monkeypatch):
    monkeypatch.setattr(auth, "_authlib_ok", lambda: True)


# ------------------------------------------------------------------------------ the start check


def test_auth_lets_the_server_start_beyond_loopback(secrets, authlib):
    assert auth.startup_problem("0.0.0.0") is not None        # nothing configured: refused
    secrets(AUTH)
    assert auth.streamlit_auth_configured() and auth.login_providers() == [None]
    for address in ("0.0.0.0", "::", None, "192.168.1.20"):
        assert auth.startup_problem(address) is None, address
    assert auth.served("127.0.0.1")       # a login means other people reach this server


def test_named_providers_are_login_providers(secrets, authlib):
    secrets({k: AUTH[k] for k in auth.AUTH_KEYS} | {"google": PROVIDER, "okta": PROVIDER,
                                                         "bad_name": PROVIDER,
                                                         "partial": {"client_id": "x"}})
    assert auth.login_providers() == ["google", "okta"]
    assert auth.startup_problem("0.0.0.0") is None


@pytest.mark.parametrize("drop, message", [
    ("cookie_secret", "lacks cookie_secret"), ("redirect_uri", "lacks redirect_uri"),
    ("server_metadata_url", "names no identity provider")])
def test_an_auth_table_that_cannot_work_refuses_even_with_a_password(secrets, authlib,
                                                                     monkeypatch, drop,
                                                                     message):
    secrets({k: v for k, v in AUTH.items() if k != drop})
    monkeypatch.setenv("RCV_DASHBOARD_PASSWORD", "a long enough password")
    for address in ("0.0.0.0", "127.0.0.1"):     # [auth] present: served even on loopback
        problem = auth.startup_problem(address)
        assert problem and "refusing to serve" in problem and message in problem, problem
        assert AUTH["cookie_secret"] not in problem and PROVIDER["client_secret"] not in problem


def test_auth_without_authlib_refuses_and_names_it(secrets, monkeypatch):
    monkeypatch.setattr(auth, "_authlib_ok", lambda: False)
    secrets(AUTH)
    problem = auth.startup_problem("0.0.0.0")
    assert problem and "Authlib >= 1.3.2" in problem and "pip install" in problem


def test_authlib_check_reads_the_installed_version():
    from importlib.util import find_spec

    if find_spec("authlib") is None:
        assert auth._authlib_ok() is False
    else:
        import authlib

        parts = tuple(int(p) for p in authlib.__version__.split(".")[:3] if p.isdigit())
        assert auth._authlib_ok() is (parts >= auth.AUTHLIB_MIN)


def _serve(args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "app.serve", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_server_with_an_unusable_auth_table_refuses_to_start(tmp_path):
    """``python -m app.serve`` (what make app and Docker run) reads the same secrets.toml: with an
    ``[auth]`` lacking its cookie secret it exits 2 with one line before listening."""
    path = tmp_path / "secrets.toml"
    path.write_text(_toml({k: v for k, v in AUTH.items() if k != "cookie_secret"}))
    proc = _serve(["--server.address", "0.0.0.0", "--server.port",
                   str(browser_harness.free_port()), "--secrets.files", str(path)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    msg = proc.stderr.strip()
    assert len(msg.splitlines()) == 1 and "lacks cookie_secret" in msg and "[auth]" in msg
    assert "You can now view" not in proc.stdout and AUTH["client_id"] not in msg


# ------------------------------------------------------------------------------ the gate


def _titles(at) -> list[str]:
    return [t.value for t in at.title]


def test_gate_shows_login_until_logged_in(secrets, authlib):
    secrets(AUTH)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert not at.text_input and "Scale-covariance scan" not in _titles(at)

    at = AppTest.from_file(MAIN, default_timeout=60)
    at.user = {"is_logged_in": True, "email": "someone@example.org", "name": "Someone"}
    at.run()
    assert not at.exception, at.exception
    assert "Scale-covariance scan" in _titles(at)
    assert any(b.label == "Log out" for b in at.sidebar.button)


def test_gate_offers_one_login_per_named_provider(secrets, authlib):
    secrets({k: AUTH[k] for k in auth.AUTH_KEYS} | {"google": PROVIDER, "okta": PROVIDER})
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Log in with google", "Log in with okta"]


def test_gate_refuses_an_auth_table_that_cannot_work(secrets, authlib):
    """A bare ``streamlit run`` (no start check) with a broken [auth]: no page, the reason."""
    secrets({k: v for k, v in AUTH.items() if k != "cookie_secret"})
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.user = {"is_logged_in": True}
    at.run()
    assert not at.exception, at.exception
    assert any("draws no page" in e.value and "cookie_secret" in e.value for e in at.error)
    assert "Scale-covariance scan" not in _titles(at)

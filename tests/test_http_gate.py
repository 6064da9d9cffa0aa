"""The HTTP gate in front of Streamlit (app/auth.py ``HttpGate``, app/uploads.py
``UploadBudget``, put in front by app/gateway.py and ``python -m app.serve``): a served server
answers no Streamlit endpoint without a sign-in, and a client's ``clear_cache`` does not reset
what guards the server. One real server on 127.0.0.1 for the module."""
from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.parse
import urllib.request

import pytest
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg

from app import auth, browser_harness

PASSWORD = "correct horse battery staple"
#: one path per Streamlit endpoint family (the ids need not exist: the gate answers first)
ENDPOINTS = [("GET", "_stcore/host-config"), ("GET", "_stcore/metrics"),
             ("PUT", "_stcore/upload_file/session/file"),
             ("DELETE", "_stcore/upload_file/session/file"), ("GET", "media/abc.png"),
             ("GET", "component/some.component/index.html"),
             ("GET", "_stcore/bidi-components/x/y.js"), ("GET", "static/js/index.js"),
             ("GET", "app/static/x.png"), ("GET", "auth/login"), ("GET", "")]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def _request(url, method="GET", data=None, cookie=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=dict(headers or {}))
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _ws(url, cookie=None, messages=()) -> str:
    async def go():
        try:
            async with websockets.connect(url, subprotocols=["streamlit"], additional_headers=(
                    {"Cookie": cookie} if cookie else None), open_timeout=30) as ws:
                for m in messages:
                    await ws.send(m)
                await asyncio.sleep(0.5)
                return "open"
        except websockets.InvalidStatus as e:
            return str(e.response.status_code)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = browser_harness.Server(tmp_path_factory.mktemp("gate"), env={
        "RCV_DASHBOARD_PASSWORD": PASSWORD, "RCV_USER_UPLOADS_MB": "1",
        "RCV_DATA_ROOT": "", "RCV_DASHBOARD_SERVED": ""})
    srv.start(timeout=240)
    yield srv
    srv.stop()


def _sign_in(server, password=PASSWORD):
    body = urllib.parse.urlencode({"password": password, "next": "/"}).encode()
    return _request(server.url + "_rcv/signin", "POST", body,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})


@pytest.mark.slow
def test_no_streamlit_endpoint_answers_without_a_sign_in(server):
    for method, path in ENDPOINTS:
        status, _, body = _request(server.url + path, method, b"x" if method == "PUT" else None)
        assert status in (401, 403), (method, path, status)
        assert b"streamlit" not in body.lower(), path
    assert _ws(server.url.replace("http", "ws") + "_stcore/stream") == "403"
    status, _, page = _request(server.url, headers={"Accept": "text/html"})  # a browser
    assert status == 200 and b"name='password'" in page and b"<script" not in page
    assert _request(server.url + "_stcore/health")[0] == 200   # for load balancers


@pytest.mark.slow
def test_a_sign_in_opens_every_endpoint_and_a_forged_cookie_none(server):
    assert _sign_in(server, "a wrong password, long enough")[0] == 401
    status, headers, _ = _sign_in(server)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Lax" in headers["set-cookie"]
    assert _request(server.url + "_stcore/host-config", cookie=cookie)[0] == 200
    assert _ws(server.url.replace("http", "ws") + "_stcore/stream", cookie) == "open"
    name, _, value = cookie.partition("=")
    user, expiry, sig = value.split(".")
    for forged in (f"{name}={user}.{expiry}.{'0' * len(sig)}",
                   f"{name}={user}x.{expiry}.{sig}", f"{name}={user}.{int(expiry) + 1}.{sig}"):
        assert _request(server.url + "_stcore/host-config", cookie=forged)[0] == 401
        assert _ws(server.url.replace("http", "ws") + "_stcore/stream", forged) == "403"


@pytest.mark.slow
def test_uploads_count_against_the_users_budget(server):
    cookie = _sign_in(server)[1]["set-cookie"].split(";")[0]
    url = server.url + "_stcore/upload_file/no-session/no-file"
    # over RCV_USER_UPLOADS_MB=1: refused from the Content-Length header, before any body byte
    # is read (so the client sends only the headers: a full body would race the early answer)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("PUT", parts.path)
        conn.putheader("Cookie", cookie)
        conn.putheader("Content-Length", str(2 * 2**20))
        conn.endheaders()
        r = conn.getresponse()
        status, body = r.status, r.read()
    finally:
        conn.close()
    assert status == 413 and b"budget" in body
    small = b"0" * 1000  # within the budget: reaches Streamlit (which refuses the bad ids)
    assert _request(url, "PUT", small, cookie=cookie)[0] not in (401, 411, 413)


def test_tokens_expire_and_are_bound_to_the_password(monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_ENV, PASSWORD)
    token = auth.make_token("abc", now=1000.0)
    assert auth.read_token(token, now=1001.0) == "abc"
    assert auth.read_token(token, now=1000.0 + auth.COOKIE_MAX_AGE_S + 1) is None
    monkeypatch.setenv(auth.PASSWORD_ENV, PASSWORD + " changed")
    assert auth.read_token(token, now=1001.0) is None
    for bad in (None, "", "a.b", "a.b.c.d", "abc.notanumber.00"):
        assert auth.read_token(bad) is None


@pytest.mark.parametrize("value, expected", [
    ("/scan?x=1", "/scan?x=1"), ("//evil.example/", "/"), ("https://evil.example/", "/"),
    ("/\\evil", "/"), ("scan", "/")])
def test_sign_in_returns_only_to_a_local_path(value, expected):
    assert auth._safe_next(value, "/") == expected


@pytest.mark.slow
def test_a_browser_signs_in_through_the_form_and_gets_the_dashboard(server):
    """The sign-in form, its cookie, the websocket and the page gate together: a browser that
    signs in once sees the Scan page, with no second password asked by the page."""
    pytest.importorskip("playwright")
    with browser_harness.browser() as page:
        page.goto(server.url)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Run scan").wait_for(state="visible", timeout=180_000)
        assert page.get_by_role("link", name="Sign out").count() == 1
        assert page.get_by_label("Password").count() == 0


@pytest.mark.slow
def test_clear_cache_from_a_client_does_not_reset_the_sign_in_throttle(server):
    """Issue 25: ``clear_cache`` (a message any Streamlit client may send) used to reset the
    throttle, the scan queue and other users' progress. The throttle lives outside Streamlit's
    caches now; a signed-in client's clear_cache leaves it as it was. (Last in this module: it
    leaves the server throttled for a minute.)"""
    cookie = _sign_in(server)[1]["set-cookie"].split(";")[0]
    for _ in range(auth.MAX_FAILURES_PER_MINUTE):
        _sign_in(server, "a wrong password, long enough")
    assert _sign_in(server)[0] == 429   # throttled, even with the right password
    msg = BackMsg()
    msg.clear_cache = True
    assert _ws(server.url.replace("http", "ws") + "_stcore/stream", cookie,
               [msg.SerializeToString()]) == "open"
    assert _sign_in(server)[0] == 429

"""Start the dashboard server and drive it in headless Chromium (tests and benchmarks).

Uses Debian's ``/usr/bin/chromium`` through Python playwright (never ``playwright install``).
Waits are for content, never for time: the first page after a server start can be blank for a
moment while Streamlit connects and imports torch.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RCV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app/main.py`` on a free local port, with its own runs/cache folders."""

    def __init__(self, workdir: Path, env: dict | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, "RCV_NO_DOWNLOAD": "1",
                    "RCV_RUNS_DIR": str(self.workdir / "runs"),
                    "RCV_CACHE_DIR": str(self.workdir / "cache"),
                    "TORCH_HOME": str(self.workdir / "torch"), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.log = self.workdir / "server.log"

    def start(self, timeout: float = 90) -> float:
        """Start the server; return seconds until its health endpoint answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.serve",  # as `make app` starts it
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true"],
            cwd=ROOT, env=self.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started_at
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"streamlit did not answer on {self.url}: "
                           f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def browser(viewport=(1400, 1000)):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # a context of its own: ``page.context.new_page()`` opens a second tab (a new
            # Streamlit session sharing nothing with the first but the server's disk)
            context = b.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(60_000)
            yield context.new_page()
        finally:
            b.close()


# --------------------------------------------------------------------------- widget helpers


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished the current script run (no 'Running...' widget)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout)


def select(page, label: str, option: str) -> None:
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    choice = page.get_by_role("option", name=option, exact=True)
    for _ in range(3):   # a rerun that lands just after the click closes the open list
        wait_idle(page)
        box.click()
        try:
            choice.click(timeout=10_000)
            break
        except Exception:  # playwright's TimeoutError: open the list again
            page.keyboard.press("Escape")
    else:
        raise TimeoutError(f"select box {label!r} offered no option {option!r}")
    wait_idle(page)


def fill_number(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def fill_text(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    wait_idle(page)


def click_text(page, text: str) -> None:
    page.get_by_text(text, exact=True).first.click()
    wait_idle(page)


def open_app(page, url: str) -> float:
    """Open the app; return seconds until the Scan page is interactive (Run button enabled)."""
    t0 = time.perf_counter()
    page.goto(url)
    page.get_by_role("button", name="Run scan").wait_for(state="visible")
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some("
        "b => b.innerText.includes('Run scan') && !b.disabled)")
    return time.perf_counter() - t0


# some plotly chart on the page has laid out points (the Scan page's empty R² chart has none)
CHART_DRAWN = ("() => [...document.querySelectorAll('.js-plotly-plot')].some(gd => "
               "(gd.calcdata || []).some(cd => cd && cd.length))")


def wait_chart_drawn(page, timeout: float = 180_000, polling: int = 50) -> None:
    """Wait until a plotly chart with points is drawn (not merely an empty chart's axes)."""
    page.wait_for_function(CHART_DRAWN, timeout=timeout, polling=polling)


def plot_points(page) -> int:
    """Number of points drawn over every trace of every plotly chart on the page.

    Counts plotly's calcdata (what is drawn): trace ``x`` may be a base64 typed array.
    """
    return page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].reduce((n, gd) => n + "
        "(gd.calcdata || []).reduce((m, cd) => m + ((cd && cd.length) || 0), 0), 0)")


def tiny_scan_settings(page, n: int = 24) -> None:
    """resnet18, random weights, ``n`` demo-scale crops scored across photographs (``n`` is too
    few crops for the default per-photograph classes)."""
    select(page, "Architecture", "resnet18")
    click_text(page, "random (control)")
    fill_text(page, "Dataset options", "protocol=across-photos")
    page.get_by_text("Options", exact=True).click()
    fill_number(page, "Images (0 = all)", n)

"""Dashboard latency, measured in a real browser (headless Chromium driven by playwright).

1. ``streamlit run`` -> Scan page interactive (the Run button enabled), on a fresh server each
   time: server start (health endpoint answers) and the first page (which imports torch).
2. Press Run on a cached scan -> chart drawn (plotly has laid out its points), two ways:
   a. activations cached, scores not (the app's saved scans and rcvcore's saved results
      deleted, the page reloaded before each press): rcvcore reads every layer from its
      activation cache and refits R² for every layer, repeat and control.
   b. the same press again: rcvcore returns the result of this exact scan from its cache
      (nothing recomputed), measured until the toast says so and the chart is on the page.

    .venv/bin/python bench/bench_dashboard.py [--starts 3] [--presses 5] [--full]

``--full`` adds the README's default demo scan (resnet50, 160 demo images, paper layers,
10 repeats, both controls). Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import browser_harness as h  # noqa: E402
from rcvcore.cache import Store  # noqa: E402
from rcvcore.scan import RESULT_PREFIX  # noqa: E402


def _configure(page, arch: str, n: int) -> None:
    h.select(page, "Architecture", arch)
    h.click_text(page, "random (control)")
    page.get_by_text("Options", exact=True).click()
    h.fill_number(page, "Images (0 = all)", n)


def _press_and_wait_chart(page) -> float:
    t0 = time.perf_counter()
    page.get_by_role("button", name="Run scan").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(gd => "
        "(gd.calcdata || []).some(cd => cd && cd.length))", timeout=600_000, polling=20)
    return time.perf_counter() - t0


def bench_start(work: Path, repeats: int) -> list[tuple[float, float]]:
    out = []
    for i in range(repeats):
        srv = h.Server(work / f"start{i}")
        try:
            t0 = time.perf_counter()
            health = srv.start()
            with h.browser() as page:
                h.open_app(page, srv.url)
                out.append((health, time.perf_counter() - t0))
        finally:
            srv.stop()
    return out


def bench_cached_scan(work: Path, arch: str, n: int, presses: int
                      ) -> tuple[float, list[float], list[float]]:
    srv = h.Server(work / f"scan-{arch}-{n}")
    srv.start()
    try:
        with h.browser() as page:
            h.open_app(page, srv.url)
            _configure(page, arch, n)
            first = _press_and_wait_chart(page)  # fills the activation cache
            refit, saved = [], []
            for _ in range(presses):
                shutil.rmtree(srv.workdir / "runs" / "_scans", ignore_errors=True)
                with Store(srv.workdir / "cache" / "activations") as store:
                    assert store.clear(RESULT_PREFIX) >= 1
                page.reload()
                h.open_app(page, srv.url)
                page.get_by_text("No scan yet").first.wait_for()
                _configure(page, arch, n)
                refit.append(_press_and_wait_chart(page))
                h.wait_idle(page)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Run scan").click()
                page.get_by_text("nothing recomputed", exact=False).first.wait_for()
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.js-plotly-plot')].some(gd => "
                    "(gd.calcdata || []).some(cd => cd && cd.length))", polling=20)
                saved.append(time.perf_counter() - t0)
                page.wait_for_timeout(300)
            return first, refit, saved
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--presses", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="also the resnet50 160-image demo scan")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rcv-bench-dash-"))
    try:
        starts = bench_start(work, args.starts)
        configs = [("resnet18", 48)] + ([("resnet50", 160)] if args.full else [])
        scans = {c: bench_cached_scan(work, *c, args.presses) for c in configs}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, headless Chromium; load average at the end: "
          f"{os.getloadavg()[0]:.1f}")
    print()
    print("| measure | median | all runs (s) |")
    print("|---|---|---|")
    print(f"| `streamlit run` -> server health | {med(s for s, _ in starts):.2f} s | "
          + ", ".join(f"{s:.2f}" for s, _ in starts) + " |")
    print(f"| `streamlit run` -> Scan page interactive | {med(t for _, t in starts):.2f} s | "
          + ", ".join(f"{t:.2f}" for _, t in starts) + " |")
    for (arch, n), (first, refit, saved) in scans.items():
        print(f"| {arch}, {n} demo images, paper layers, 10 repeats, 2 controls: first scan "
              f"(cold cache) | {first:.2f} s | {first:.2f} |")
        print(f"| same scan, activations cached (R² refitted): press Run -> chart drawn | "
              f"{med(refit):.2f} s | " + ", ".join(f"{t:.2f}" for t in refit) + " |")
        print(f"| same scan, result cached: press Run -> chart drawn | {med(saved):.2f} s | "
              + ", ".join(f"{t:.2f}" for t in saved) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

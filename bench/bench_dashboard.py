"""Dashboard vs CLI, measured as a user sees it: a real browser (headless Chromium driven by
playwright) keeps the page open, and polling, for the whole job.

1. Start: ``python -m app.serve`` (what ``make app`` runs) -> health endpoint -> first page drawn
   (the Scan page's title) -> Scan page interactive (*Run scan* enabled); a fresh server each
   time, with and without the start-up import of torch and the registry (``RCV_PREWARM=0``).
2. Scans of the same configuration, the CLI (``python -m rcvcore scan``) and the dashboard
   alternately, each on its own fresh cache, three ways:
   - **cold**: nothing cached (the demo images are generated, every layer extracted);
   - **activations cached**: rcvcore's saved results cleared, R² refitted for every layer,
     repeat and control (the page reloaded first, as after changing a scoring setting);
   - **result cached**: the same scan again (rcvcore returns its saved result).
   Dashboard time: press *Run scan* -> the R² chart drawn (plotly has laid out its points). The
   page counts the progress updates it received (proof it was polling); the CPU time the server
   and the browser (every Chromium process) spent during the press is read from /proc, since on
   a small machine the browser's work competes with the scan. ``--reps N`` runs N pairs and
   prints the median ratios. CLI time: the whole
   process (``wall``) and the command itself after the imports (``cmd``: ``rcvcore.cli.main``
   timed in a process that imported torch and rcvcore first), the fairer reference since the
   dashboard has imported everything before the press.
3. Prediction (``--predict``): a tiny trained run; ``python -m rcvcore predict`` vs the Predict
   page (files set on the uploader -> every result and the CSV button drawn), same files.

    .venv/bin/python bench/bench_dashboard.py                      # resnet18, all 320 demo images
    .venv/bin/python bench/bench_dashboard.py --full --predict     # + resnet50 160 (README scan)

Prints Markdown tables for BENCHMARKS.md (section "Dashboard").
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import browser_harness as h  # noqa: E402

# counts every change of the progress bar's text: each one is a poll that reached the page
COUNT_PROGRESS = """() => {
  window.__rcvPolls = 0; let last = '';
  new MutationObserver(() => {
    const p = document.querySelector('[data-testid="stProgress"]');
    const t = p ? p.innerText : '';
    if (t && t !== last) { window.__rcvPolls += 1; last = t; }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
PRE_IMPORT = ("import time, torch, torchvision, rcvcore.models, rcvcore.scan, rcvcore._extract, "
              "rcvcore.predict, rcvcore.cli as c; t = time.perf_counter(); "
              "rc = c.main({argv!r}); print('RCV_CMD_S', time.perf_counter() - t); "
              "raise SystemExit(rc)")


def _env(work: Path) -> dict:
    return {**os.environ, "RCV_NO_DOWNLOAD": "1", "HF_HUB_OFFLINE": "1",
            "RCV_CACHE_DIR": str(work / "cache"), "RCV_RUNS_DIR": str(work / "runs"),
            "TORCH_HOME": str(work / "torch"), "PYTHONPATH": str(ROOT)}


def cli_once(argv: list[str], work: Path, *, wall: bool) -> float:
    env = _env(work)
    if wall:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rcvcore", *argv], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", PRE_IMPORT.format(argv=argv)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.split("RCV_CMD_S")[-1].split()[0])


def clear_results(work: Path) -> None:
    """Forget rcvcore's saved scan results (the activations stay)."""
    from rcvcore._cache import Store
    from rcvcore.scan import RESULT_PREFIX

    with Store(work / "cache" / "activations") as store:
        store.clear(RESULT_PREFIX)


# ------------------------------------------------------------------------------------ start


def bench_start(work: Path, prewarm: bool, delay: float = 0.0) -> tuple[float, float, float]:
    """(server health, first app content, Scan page interactive) in s after the server's start;
    the browser is already running (as a user's), and opens the page ``delay`` s after health."""
    srv = h.Server(work, env={"RCV_PREWARM": "1" if prewarm else "0"})
    try:
        with h.browser() as page:
            health = srv.start()
            time.sleep(delay)
            page.goto(srv.url)
            page.wait_for_function(  # the first app content: the shell's note or the page
                "() => /Loading: the first page|Scale-covariance scan/"
                ".test(document.body.innerText)", polling=20)
            paint = time.perf_counter() - srv.started_at
            h.open_app(page, srv.url)  # already there: returns when Run is enabled
            interactive = time.perf_counter() - srv.started_at
        return health, paint, interactive
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------- scan


def _configure(page, arch: str, n: int) -> None:
    h.select(page, "Architecture", arch)
    h.click_text(page, "random (control)")
    page.get_by_text("Options", exact=True).click()
    h.fill_number(page, "Images (0 = all)", n)


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    """(the server's, every Chromium process's) CPU time so far, in s, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    server = browser = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        t = sum(int(v) for v in fields.split()[11:13]) / tick  # utime + stime
        if int(d) == server_pid:
            server += t
        elif comm.startswith("chrom"):
            browser += t
    return server, browser


def _press(page, frames: list, server_pid: int) -> tuple[float, int, int, float, float]:
    """(press -> chart s, progress-bar changes seen, websocket messages received, server and
    browser CPU s during it)."""
    page.evaluate(COUNT_PROGRESS)
    n0 = len(frames)
    c0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Run scan").click()
    h.wait_chart_drawn(page, timeout=1_800_000)
    dt = time.perf_counter() - t0
    c1 = cpu_seconds(server_pid)
    return (dt, int(page.evaluate("() => window.__rcvPolls")), len(frames) - n0,
            c1[0] - c0[0], c1[1] - c0[1])


def dashboard_scans(work: Path, arch: str, n: int) -> dict[str, tuple]:
    """cold, activations cached (refit), result cached: :func:`_press`'s figures."""
    srv = h.Server(work)
    srv.start()
    frames: list = []
    try:
        with h.browser() as page:
            # every fragment rerun (a poll) sends messages over the page's websocket
            page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(1)))
            h.open_app(page, srv.url)
            _configure(page, arch, n)
            out = {"cold": _press(page, frames, srv.proc.pid)}
            h.wait_idle(page)
            shutil.rmtree(srv.workdir / "runs" / "_scans", ignore_errors=True)
            clear_results(srv.workdir)
            page.reload()
            h.open_app(page, srv.url)
            page.get_by_text("No scan yet").first.wait_for()
            _configure(page, arch, n)
            out["refit"] = _press(page, frames, srv.proc.pid)
            h.wait_idle(page)
            page.evaluate(COUNT_PROGRESS)
            c0 = cpu_seconds(srv.proc.pid)
            t0 = time.perf_counter()
            page.get_by_role("button", name="Run scan").click()
            page.get_by_text("nothing recomputed", exact=False).first.wait_for()
            h.wait_chart_drawn(page, polling=20)
            c1 = cpu_seconds(srv.proc.pid)
            out["saved"] = (time.perf_counter() - t0, 0, 0, c1[0] - c0[0], c1[1] - c0[1])
            return out
    finally:
        srv.stop()


def cli_scans(work: Path, arch: str, n: int) -> dict[str, tuple[float, float]]:
    """cold, refit, saved: (wall s, command s). Cold and refit each run twice (wall, then the
    command timed after the imports) on a cache prepared the same way."""
    argv = ["scan", "--arch", arch, "--weights", "random", "--dataset", "demo-scale",
            "--n", str(n), "--quiet", "--json", str(work / "scan.json")]
    out = {}
    cold_wall = cli_once(argv, work, wall=True)
    shutil.rmtree(work / "cache")
    cold_cmd = cli_once(argv, work, wall=False)
    out["cold"] = (cold_wall, cold_cmd)
    clear_results(work)
    refit_wall = cli_once(argv, work, wall=True)
    clear_results(work)
    refit_cmd = cli_once(argv, work, wall=False)
    out["refit"] = (refit_wall, refit_cmd)
    out["saved"] = (cli_once(argv, work, wall=True), cli_once(argv, work, wall=False))
    return out


# ---------------------------------------------------------------------------------- predict


def _patches(folder: Path, k: int, side: int, seed: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        arr = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        p = folder / f"patch{seed}_{i}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


def bench_predict(work: Path, k: int, side: int, reps: int) -> dict:
    run = work / "runs" / "bench" / "add_4_seed1"
    subprocess.run([sys.executable, "-m", "rcvcore", "train", "--run-dir", str(run),
                    "--arch", "resnet18", "--weights", "random", "--cut", "add_4",
                    "--dataset", "demo-histology", "--n", "32", "--epochs", "1",
                    "--batch-size", "8", "--device", "cpu", "--quiet"],
                   env=_env(work), check=True, stdout=subprocess.DEVNULL)
    sets = [_patches(work / "patches", k, side, seed) for seed in range(reps)]
    clis = []
    for files in sets:
        argv = ["predict", "--run", str(run), "--json", str(work / "p.json"),
                *map(str, files)]
        clis.append((cli_once(argv, work, wall=True), cli_once(argv, work, wall=False)))
    srv = h.Server(work)
    srv.start()
    dash = []
    try:
        with h.browser() as page:
            for files in sets:
                page.goto(srv.url + "predict")  # a new session: an empty uploader
                page.get_by_text("Trained run").first.wait_for()
                h.wait_idle(page)
                t0 = time.perf_counter()
                page.locator('input[type="file"]').set_input_files([str(p) for p in files])
                page.get_by_text(f"{k} of {k} predicted").first.wait_for(timeout=600_000)
                page.get_by_role("button", name="Download CSV").wait_for()
                dash.append(time.perf_counter() - t0)
                h.wait_idle(page)
    finally:
        srv.stop()
    return {"cli": clis, "dash": dash}


# ------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=2, help="server starts per variant")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--n", type=int, default=320,
                    help="demo-scale images (default all 320: per-photograph classes need them)")
    ap.add_argument("--reps", type=int, default=1, help="CLI/dashboard scan pairs")
    ap.add_argument("--full", action="store_true",
                    help="also the README's scan: resnet50, 160 demo images")
    ap.add_argument("--predict", action="store_true", help="also Predict page vs CLI")
    ap.add_argument("--no-scans", action="store_true", help="skip the scans")
    ap.add_argument("--predict-files", type=int, default=8)
    ap.add_argument("--predict-side", type=int, default=896,
                    help="side of each file (tiled into 224 px patches: 16 per 896 px file)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rcv-bench-dash-"))
    med = statistics.median

    def out(*lines: str) -> None:  # each table as soon as it is measured
        print("\n".join(lines), flush=True)

    out(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, headless Chromium on the same machine; load average "
        f"at the start: {os.getloadavg()[0]:.1f}")
    try:
        if args.starts:
            variants = {("on", 0.0): [], ("off", 0.0): [], ("on", 10.0): []}
            for i in range(args.starts):
                for (prewarm, delay), runs in variants.items():
                    runs.append(bench_start(work / f"start-{i}-{prewarm}-{delay}",
                                            prewarm == "on", delay))
            out("", "| start (fresh server, browser already open) | prewarm | page opened | "
                "median | runs (s) |", "|---|---|---|---:|---|")
            for (prewarm, delay), runs in variants.items():
                for j, what in enumerate(("server health", "first app content drawn",
                                          "Scan page interactive")):
                    if delay and j < 2:
                        continue
                    vals = [r[j] for r in runs]
                    out(f"| `python -m app.serve` -> {what} | {prewarm} | "
                        f"{'at health' if not delay else f'{delay:.0f} s after health'} | "
                        f"{med(vals):.2f} s | " + ", ".join(f"{v:.2f}" for v in vals) + " |")
        configs = [] if args.no_scans else (
            [(args.arch, args.n)] + ([("resnet50", 160)] if args.full else []))
        names = {"cold": "cold (nothing cached)", "refit": "activations cached, R² refitted",
                 "saved": "result cached"}
        if configs:
            out("", "| scan | CLI wall | CLI command | dashboard press -> chart | "
                "ratio vs command | ratio vs wall | progress updates / websocket messages seen | "
                "CPU during the press: server / browser |",
                "|---|---:|---:|---:|---:|---:|---:|---:|")
        for arch, n in configs:
            ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
            for r in range(args.reps):
                c = cli_scans(work / f"cli-{arch}-{n}-{r}", arch, n)
                d = dashboard_scans(work / f"dash-{arch}-{n}-{r}", arch, n)
                for kind in ("cold", "refit", "saved"):
                    (wall, cmd), (dash, polls, msgs, cpu_srv, cpu_br) = c[kind], d[kind]
                    ratios[kind].append((dash / cmd, dash / wall))
                    out(f"| {arch}, {n} demo images, random weights, paper layers, 10 repeats, "
                        f"2 controls: {names[kind]} | {wall:.2f} s | {cmd:.2f} s | "
                        f"{dash:.2f} s | {dash / cmd:.2f} | {dash / wall:.2f} | "
                        f"{polls} / {msgs} | {cpu_srv:.1f} s / {cpu_br:.1f} s |")
            if args.reps > 1:
                for kind, rs in ratios.items():
                    out(f"| **median of {args.reps} pairs**: {names[kind]} | | | | "
                        f"**{med(x for x, _ in rs):.2f}** | {med(y for _, y in rs):.2f} | | |")
        if args.predict:
            pred = bench_predict(work / "predict", args.predict_files, args.predict_side, 2)
            out("", f"| predict ({args.predict_files} files of {args.predict_side} px, "
                "resnet18 cut at add_4) | CLI wall | CLI command | Predict page | "
                "ratio vs command | ratio vs wall |", "|---|---:|---:|---:|---:|---:|")
            for i, ((wall, cmd), dash) in enumerate(zip(pred["cli"], pred["dash"])):
                what = ("first (page loads the model)" if i == 0
                        else "again, new files (model cached)")
                out(f"| {what} | {wall:.2f} s | {cmd:.2f} s | {dash:.2f} s | "
                    f"{dash / cmd:.2f} | {dash / wall:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out("", f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

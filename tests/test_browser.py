"""Real-browser test: the dashboard in headless Chromium, end to end on the embedded demo data.

One walk along the user's path (issue 23): a small scan (offline, random weights), a cut clicked on
its chart, the Train page opened in a new tab and prefilled from disk, 2 cuts x 2 seeds launched
and watched live, one run cancelled and resumed with its own buttons, Table 2, then Predict with
patches inside and outside the model's range and a broken file. Screenshots go to
test-artifacts/ (gitignored); with RCV_SCREENSHOTS=DIR the same walk, fuller, makes the README's.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

pytest.importorskip("playwright")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)

from app import browser_harness as h  # noqa: E402

OUTSIDE = "Outside the model's range"   # the marker a user sees on a card
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def server(tmp_path):
    srv = h.Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _shot(target, name: str) -> None:
    """A screenshot of a whole page, or of one element (a locator)."""
    ARTIFACTS.mkdir(exist_ok=True)
    whole = {"full_page": True} if hasattr(target, "set_viewport_size") else {}
    target.screenshot(path=str(ARTIFACTS / f"{name}.png"), **whole)


def _png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgb.astype(np.uint8)).save(path, "PNG")
    return path


@dataclass(frozen=True)
class Walk:
    """How big each step of the walk is: tiny for the test, fuller for the README's pictures."""
    scan_n: int          # crops scanned
    images: int          # images per training run
    epochs: int
    batch: int
    image_size: int      # the network input side while training
    extras: bool         # README only: an OLS scan overlaid


TEST_WALK = Walk(scan_n=24, images=40, epochs=2, batch=4, image_size=64, extras=False)
README_WALK = Walk(scan_n=80, images=64, epochs=3, batch=8, image_size=96, extras=True)

# the card of each uploaded image: the largest element around its thumbnail that holds no
# other thumbnail -> {file name: card text}
CARDS_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-testid="stImage"]')]
  .map(img => { let card = img;
    while (card.parentElement && card.parentElement.querySelectorAll(
           '[data-testid="stImage"]').length === 1) card = card.parentElement;
    return [img.innerText.trim(), card.innerText]; }))"""


def _walk(page, server, tmp_path: Path, w: Walk, shot) -> dict:
    """The user's path of issue 23: scan -> click a cut -> Train opened in a new tab, prefilled
    from disk -> launch 2 cuts x 2 seeds -> watch, cancel one run and resume it -> Table 2 ->
    Predict in-range and out-of-range patches. Returns what the last step saw."""
    h.open_app(page, server.url)
    # the first screen is a pretrained network whose weights ship with the install
    page.get_by_text("efficientnet_lite0").first.wait_for()
    assert page.get_by_text("Offline mode: no ImageNet weights").count() == 0
    shot(page, "first-run-offline")
    # progress bars jump instead of animating each change (the animation's CPU in the
    # browser was taken from the scan it reports on, issue 15)
    assert page.evaluate(
        "() => [...document.querySelectorAll('style')].some(s => "
        "s.textContent.includes(\"[data-testid='stProgress'] *\") && "
        "s.textContent.includes('transition: none'))")

    # --- scan: progress while extracting, then the chart
    h.tiny_scan_settings(page, n=w.scan_n)
    page.get_by_role("button", name="Run scan").click()
    page.locator('[data-testid="stProgress"]').first.wait_for(state="visible", timeout=60_000)
    # before the scan the page shows the R² chart's empty axes (plotly loads with the page)
    assert h.plot_points(page) == 0
    h.wait_chart_drawn(page, timeout=300_000)
    h.wait_idle(page)
    assert h.plot_points(page) > 0
    page.get_by_text("Prune point", exact=True).wait_for()
    page.get_by_role("button", name="CSV", exact=True).wait_for()
    shot(page, "scan")

    # --- cached re-run: the chart is drawn again quickly
    t0 = time.perf_counter()
    page.get_by_role("button", name="Run scan").click()
    h.wait_idle(page)
    page.locator(".js-plotly-plot").first.wait_for(state="visible")
    assert time.perf_counter() - t0 < 20

    # --- clicking a point of the curve chooses the cut (a random network has no
    # significant layer, so nothing is preselected)
    h.click_text(page, "Clip y at -1")  # unclip so that every point is on the plot
    target = "add_5"
    index = int(target.split("_")[1]) - 1
    marker = page.locator(".js-plotly-plot .scatterlayer .trace").nth(2) \
        .locator("path.point").nth(index)
    marker.wait_for(state="visible")  # the chart is redrawn after unclipping
    page.wait_for_timeout(500)
    point = marker.bounding_box()
    assert point is not None, "the point to click is not on the chart"
    page.mouse.move(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
    page.mouse.click(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
    page.get_by_role("link", name=f"Fine-tune resnet18 cut at {target}",
                     exact=False).wait_for(timeout=60_000)
    page.get_by_text("Parameters (pruned)").first.wait_for(timeout=60_000)
    h.wait_idle(page)

    # --- Train in a NEW tab, from its bare URL: the cut can only come from disk
    train = page.context.new_page()
    train.goto(server.url + "train")
    note = train.locator('[data-testid="stAlert"]').filter(has_text="From the Scan page")
    note.first.wait_for(timeout=120_000)
    text = note.first.inner_text()
    assert "saved with its scan" in text, text        # says where the cut comes from
    assert f"cut at {target}" in text and "demo-scale" in text and "resnet18" in text, text
    train.wait_for_url(f"**cut={target}**")           # and the link to share says so
    assert target in _select_text(train, "Cut after layer")
    assert "demo-scale" in _select_text(train, "Dataset")
    assert "protocol=across-photos" in train.get_by_label("Dataset options",
                                                          exact=True).input_value()
    h.fill_text(train, "Seeds", "1,2")
    h.fill_number(train, "Epochs", w.epochs)
    h.fill_number(train, "Batch size", w.batch)
    h.fill_number(train, "Images (0 = all)", w.images)
    h.fill_number(train, "Image size (0 = the network's)", w.image_size)
    h.fill_number(train, "Runs at a time", 2)
    h.select(train, "Device", "cpu")
    train.get_by_role("button", name="Launch 4 runs").click()

    # --- the monitor: the new group selected, the form folded, every run listed
    groups = server.workdir / "runs"
    train.get_by_role("button", name="Launch 4 runs").wait_for(state="hidden", timeout=60_000)
    group = next(g for g in groups.iterdir() if (g / "group.json").is_file())
    assert group.name in _select_text(train, "Runs")
    names = [f"{cut}_seed{seed}" for seed in (1, 2) for cut in ("none", target)]
    grid = train.locator('[data-testid="stDataFrame"]').first
    for name in names:   # the plan lists the waiting runs too
        grid.get_by_text(name, exact=True).first.wait_for(state="attached", timeout=60_000)

    # --- live: the curves grow; one run is cancelled with its own button, then resumed
    cancel = train.get_by_role("button", name=re.compile(r"Cancel (none|add_5)_seed\d"))
    cancel.first.wait_for(timeout=300_000)
    stopped = re.search(r"(none|add_5)_seed\d", cancel.first.inner_text()).group(0)
    cancel.first.click()
    resume = train.get_by_role("button", name=re.compile(f"Resume {stopped}"))
    resume.wait_for(timeout=120_000)
    assert json.loads((group / stopped / "status.json").read_text())["state"] == "cancelled"
    resume.click()
    seen, shot_live = [h.plot_points(train)], False
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not train.get_by_text(
            "Pruned vs full", exact=False).count():
        train.wait_for_timeout(500)
        seen.append(h.plot_points(train))
        if not shot_live and seen[-1] >= seen[0] + 12:   # a few steps of several runs
            shot(train, "train-live")
            shot_live = True
    train.get_by_text("Pruned vs full", exact=False).first.wait_for(timeout=60_000)
    train.get_by_role("button", name="Cancel all runs of this group").wait_for(
        state="detached", timeout=600_000)   # every run has ended
    h.wait_idle(train)
    grew = [b > a for a, b in zip(seen, seen[1:])]
    assert any(grew), f"the live curves never grew: {seen}"
    states = {n: json.loads((group / n / "status.json").read_text())["state"] for n in names}
    assert states == dict.fromkeys(names, "done"), states   # the resumed run finished too
    train.get_by_text("Test metrics", exact=True).wait_for()
    shot(train, "train-table2")
    # every run of every group, across the states it went through while watched
    panel = train.locator('[data-testid="stExpander"]').filter(has_text="All runs (every")
    panel.get_by_text("All runs (every group)", exact=False).first.click()
    panel.get_by_text("4 of 4 runs", exact=False).wait_for()
    panel.get_by_text("Compare two configurations", exact=True).wait_for()
    panel.scroll_into_view_if_needed()
    shot(panel, "train-all-runs")   # the panel alone

    # --- predict: crops of the training photographs (in range), a flat magenta square (out of
    # range: nothing like it in training), and a broken file
    train.get_by_role("link", name="Predict").first.click()
    train.get_by_text("Trained run").first.wait_for()
    crops = _training_crops(server.workdir / "cache" / "demo-scale", 3)
    flat = _png(tmp_path / "flat.png", np.full((256, 256, 3), (255, 0, 255)))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    train.locator('input[type="file"]').set_input_files(
        [str(p) for p in (*crops, flat, bad)])
    train.get_by_role("button", name="Download CSV").wait_for(timeout=180_000)
    train.locator('[data-testid="stImage"]').first.wait_for()
    h.wait_idle(train)
    train.get_by_text("4 of 5 predicted", exact=False).first.wait_for()
    train.get_by_text("broken.png:", exact=False).first.wait_for()
    with train.expect_download() as dl:
        train.get_by_role("button", name="Download CSV").click()
    table = pd.read_csv(dl.value.path())
    shot(train, "predict")
    if w.extras:   # last: the new scan would be the one shown on the Scan page
        _overlay_ols_scan(page, shot)
    return {"cards": train.evaluate(CARDS_JS), "table": table, "crops": [p.name for p in crops],
            "outside": train.get_by_text(OUTSIDE, exact=True).count(),
            "header": train.locator('[data-testid="stMarkdownContainer"]').filter(
                has_text="4 of 5 predicted").first.inner_text()}


def _select_text(page, label: str) -> str:
    """The option shown by the select box ``label``."""
    return page.locator(f'input[aria-label="{label}"]').first.input_value()


def _training_crops(folder: Path, k: int) -> list[Path]:
    """``k`` crops of different photographs from the demo-scale folder the runs trained on
    (the largest one: the scan's folder holds fewer crops)."""
    biggest = max(folder.iterdir(), key=lambda d: len(json.loads((d / "labels.json").read_text())))
    rows = json.loads((biggest / "labels.json").read_text())
    picked: dict[str, Path] = {}
    for r in rows:
        picked.setdefault(r["photo"], biggest / r["file"])
    return list(picked.values())[:k]


def _overlay_ols_scan(page, shot) -> None:
    """A second scan of the same activations (OLS, the paper's fit), overlaid (README)."""
    page.get_by_text("ols", exact=True).click()
    h.wait_idle(page)
    page.get_by_role("button", name="Run scan").click()
    page.wait_for_function(  # the new scan becomes the one shown
        "() => (document.querySelector('input[aria-label=\"Scan shown\"]') || {value: ''})"
        ".value.includes(' ols ')", timeout=120_000)
    h.wait_idle(page)
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Overlay").first
    box.click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    h.wait_idle(page)
    page.get_by_text("paper: ln(mean(exp R²))", exact=True).click()
    h.wait_idle(page)
    page.wait_for_timeout(1500)
    shot(page, "scan-overlay")


def test_user_path_end_to_end(server, tmp_path):
    """Issue 23's path in one walk (314 s on 2 cores at load 15)."""
    t0 = time.perf_counter()
    with h.browser(viewport=(1400, 1000)) as page:
        try:
            seen = _walk(page, server, tmp_path, TEST_WALK, _shot)
        except Exception:
            for i, tab in enumerate(page.context.pages):   # what each tab showed
                _shot(tab, f"failure-tab{i}")
            raise
    cards, table = seen["cards"], seen["table"].set_index("file")
    print(f"walk {time.perf_counter() - t0:.0f} s\n{table.to_string()}")
    marked = {name for name, text in cards.items() if OUTSIDE in text}
    # the page, its cards and its CSV agree on which patches are outside the model's range
    assert marked == set(table.index[table["out_of_range"]]), (marked, table)
    assert seen["outside"] == len(marked)
    assert f"{len(marked)} outside the model's range" in seen["header"]
    # nothing like a flat magenta square was in training: it is marked (its feature distance
    # was 2.9 against a threshold of 1.4 when written; uniform noise was not, since a network
    # with random weights does not tell noise from texture)...
    assert "flat.png" in marked, cards
    # ...and a crop of a training photograph is not (one of three, whatever the split; they
    # were at 0.9-1.1 when written)
    assert set(seen["crops"]) - marked, cards
    assert table.loc["broken.png", "error"]


@pytest.mark.skipif(not __import__("os").environ.get("RCV_SCREENSHOTS"),
                    reason="set RCV_SCREENSHOTS=DIR to regenerate the README screenshots")
def test_readme_screenshots(server, tmp_path):
    """The README's screenshots, taken along the walk of the test above with fuller settings."""
    import os

    out = Path(os.environ["RCV_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)

    def shot(target, name: str) -> None:
        page = getattr(target, "page", target)   # a locator's page, or the page itself
        h.wait_idle(page)
        # the page scrolls inside its own frame: a long page needs a tall window, from the top
        tall = {"train-table2": 2600, "predict": 2000}.get(name) if target is page else None
        if tall:
            page.set_viewport_size({"width": 1400, "height": tall})
            page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], "
                          "[data-testid=\"stAppViewContainer\"]').forEach(e => e.scrollTo(0, 0))")
        page.wait_for_timeout(1500)      # plotly's last redraw
        whole = {"full_page": True} if target is page else {}
        target.screenshot(path=str(out / f"{name}.png"), **whole)
        if tall:
            page.set_viewport_size({"width": 1400, "height": 1500})

    with h.browser(viewport=(1400, 1500)) as page:
        _walk(page, server, tmp_path, README_WALK, shot)

"""The evidence page and the bench report as a person sees them, in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` (``make browser``), driven by Selenium (the ``dev`` extra), load a
generated evidence page and a generated bench report and check what a reader would notice: no errors in the
console; the plots drawn, with the rejection region at least 2 px wide; no tick or axis label overlapping another;
the α-unreachable warning in the first screenful; a wide bench table scrolling inside its box instead of widening
the page. Skipped, with the reason, when Selenium or the browser is missing.

``COPYCATCH_SCREENSHOTS=1`` also writes the screenshots that ``docs/reading-evidence.md`` shows
(``docs/images/evidence-page.png``, ``docs/images/bench-report.png``); by default they go to the test's temporary
folder, so that a test run leaves the work tree as it was.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

import copycatch as cc
from copycatch.bench import ResultsStore
from copycatch.bench.grid import config_hash
from copycatch.bench.report import make_report
from copycatch.core.key import Key
from copycatch.schemes.margin import MarginWatermark
from copycatch.verification.report import (
    binomial_null_svg,
    calibration_svg,
    pvalue_svg,
    trajectory_svg,
    write_report,
)
from copycatch.verification.session import verify_suspect
from copycatch.verification.transcript import row_hashes

REPO = Path(__file__).resolve().parents[1]
WIDTH = 1000  # the window the screenshots are taken at: a laptop browser window

# Every <text> of every plot, as (plot index, text, left, top, right, bottom) in CSS pixels.
TEXT_BOXES_JS = """
const out = [];
document.querySelectorAll('svg.plot').forEach((svg, i) => svg.querySelectorAll('text').forEach(t => {
  const r = t.getBoundingClientRect();
  out.push([i, t.textContent, r.left, r.top, r.right, r.bottom]);
}));
return out;
"""


# ---------------------------------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={WIDTH},900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _open(driver, path: Path, width: int = WIDTH) -> None:
    driver.set_window_size(width, 900)
    driver.get_log("browser")  # read and so cleared: what an earlier page logged is not this page's
    driver.get(path.resolve().as_uri())


def _severe(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _overlaps(boxes: list[list]) -> list[tuple[str, str]]:
    """Pairs of labels in the same plot whose boxes intersect (half a pixel of anti-aliasing allowed)."""
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a[0] == b[0] and min(a[4], b[4]) - max(a[2], b[2]) > 0.5 and min(a[5], b[5]) - max(a[3], b[3]) > 0.5:
                found.append((a[1], b[1]))
    return found


def _screenshot(driver, name: str, height: int, tmp_path: Path) -> Path:
    """The top ``height`` CSS pixels of the page as a small PNG (64 colours): in docs/images when asked, else in
    ``tmp_path``."""
    from PIL import Image

    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}},
    )
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    folder = REPO / "docs" / "images" if os.environ.get("COPYCATCH_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image.quantize(colors=64).save(path, optimize=True)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# the pages, made through the project's own APIs
# ---------------------------------------------------------------------------------------------------------------------


class Thief(cc.Oracle):
    """A copy that learned half of the watermark: of every ten key inputs it gives five their secret label, three a
    wrong label of its own and two their true class."""

    def __init__(self, key: Key):
        super().__init__(4, (1, 8, 8), name="stolen-copy")
        x = key["trigger_x"].float() / 255
        rows = zip(row_hashes(x), key["trigger_true"].tolist(), key["trigger_label"].tolist())
        self.answer = {}
        for i, (h, true, secret) in enumerate(rows):
            other = next(c for c in range(4) if c not in (true, secret))
            self.answer[h] = secret if i % 10 in (0, 2, 4, 6, 8) else other if i % 10 in (1, 5, 7) else true

    def _answer(self, x):
        labels = [self.answer.get(h, 0) for h in row_hashes(x)]
        return torch.nn.functional.one_hot(torch.tensor(labels), 4).float()


def _key(splits, n_triggers: int, folder: Path) -> Path:
    scheme = MarginWatermark(n_triggers=n_triggers)
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(n_triggers))
    key = Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        meta={"num_classes": 4, "input_shape": [1, 8, 8], "dataset": "synthetic", "arch": "mlp"},
    )
    return key.save(folder / f"owner-{n_triggers}.cckey")


def _evidence_page(splits, folder: Path, n_triggers: int, **verify) -> Path:
    key = _key(splits, n_triggers, folder)
    run = verify_suspect(Thief(Key.load(key)), [key], transcript=folder / "transcript.jsonl", **verify)
    command = ["copycatch", "verify", "--key", key.name, "--suspect", "stolen-copy.onnx", "--report", "case"]
    return write_report(folder, run, command=command)["html"]


@pytest.fixture(scope="module")
def evidence_page(splits, tmp_path_factory):
    """A stolen copy verified against a 60-trigger margin key, sequentially: the null plot and the e-value path."""
    return _evidence_page(splits, tmp_path_factory.mktemp("evidence"), 60)


@pytest.fixture(scope="module")
def unreachable_page(splits, tmp_path_factory):
    """Five triggers at α = 1e-4: even a perfect copy gets p = (1/3)^5 ≈ 0.004, so "stolen" is out of reach."""
    return _evidence_page(splits, tmp_path_factory.mktemp("unreachable"), 5, alpha=1e-4, sequential=False)


def _metrics(scheme: int, budget: int, rate: float, seed: int) -> dict:
    """Plausible numbers for one cell: a larger budget makes a better copy, pruning erodes the watermark."""
    strength = budget / 1200 * (1 - rate) * (0.9 + 0.05 * seed + 0.1 * scheme)
    p = 10 ** (-12 * strength)
    ks = [10, 20, 40]
    return {
        "clean_acc": 0.91 + 0.004 * seed,
        "victim_acc": 0.90 - 0.01 * scheme,
        "victim_p": 1e-15,
        "suspect_acc": 0.70 + 0.1 * strength,
        "suspect_fidelity": 0.72 + 0.1 * strength,
        "suspect_stat": round(30 * strength),
        "statistic_name": "trigger hits among misclassified" if scheme == 0 else "eta = delta_org / delta_alt",
        "suspect_p": p,
        "suspect_decision": p <= 0.01,
        "innocent_p": 0.3 + 0.1 * seed,
        "innocent_decision": False,
        "clean_p": 0.5,
        "extraction_queries": budget,
        "seconds_cell": 40 + budget / 30,
        "cpu_seconds_cell": 70 + budget / 20,
        "suspect_power": {"queries": ks, "p": [min(1.0, p ** (k / 40)) for k in ks]},
        "innocent_power": {"queries": ks, "p": [0.6, 0.5, 0.3 + 0.1 * seed]},
    }


BENCH_GRID = """
name: browser
description: A fabricated grid for the browser test - two schemes, two budgets, two pruning rates, two seeds.
experiments:
  - name: prune-after-extraction
    description: The thief extracts a copy with a query budget, then prunes it.
"""


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    """A results store of 16 fabricated cells written through ResultsStore, and its report: 18 columns."""
    folder = tmp_path_factory.mktemp("bench")
    ids = []
    with ResultsStore(folder / "results") as store:
        run = store.start_run(
            "browser", grid_file=None, grid_text=BENCH_GRID, executor="serial", planned=16, done_before=0, versions={}
        )
        for scheme, name in enumerate(("margin", "dynamarks")):
            for budget in (300, 1200):
                for rate in (0.1, 0.5):
                    for seed in (0, 1):
                        config = {
                            "seed": seed,
                            "alpha": 0.01,
                            "data": {"name": "synthetic", "split_seed": 0},
                            "scheme": {"name": name, "params": {}},
                            "victim": {"arch": "mlp", "train": {"epochs": 8}},
                            "extraction": {"name": "soft-label", "arch": "mlp", "params": {"budget": budget}},
                            "removals": [{"name": "prune", "params": {"rate": rate}}],
                        }
                        cell = config_hash(config)
                        ids.append(cell)
                        metrics = _metrics(scheme, budget, rate, seed)
                        store.write_cell({"cell_id": cell, "status": "ok", "config": config, "metrics": metrics})
        store.set_plan("browser", {"prune-after-extraction": ids})
        store.finish_run(run, computed=16, failed=0)
    make_report(folder / "results", folder / "report")
    return folder / "report" / "report.html"


# ---------------------------------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------------------------------


def test_evidence_page_reads_well(browser, evidence_page, tmp_path):
    _open(browser, evidence_page)
    assert _severe(browser) == []
    summary = browser.find_element("id", "summary")
    assert summary.is_displayed() and "by luck" in summary.text and "stolen" in summary.text
    assert "questions built from the owner's secret margin key" in summary.text
    plots = browser.find_elements("css selector", "svg.plot")
    assert len(plots) == 2  # the null distribution and the sequential e-value path
    for plot in plots:
        assert plot.size["width"] > 300 and plot.size["height"] > 100
        assert len(plot.find_elements("css selector", "rect, polyline, circle")) >= 3  # something drawn
    regions = browser.find_elements("css selector", "svg.plot .rejection")
    assert len(regions) == 2 and all(r.rect["width"] >= 2 and r.rect["height"] >= 2 for r in regions)
    boxes = browser.execute_script(TEXT_BOXES_JS)
    assert len(boxes) >= 10 and all(b[4] > b[2] for b in boxes)  # every label rendered with a size
    assert _overlaps(boxes) == []
    assert browser.find_element("id", "glossary").is_displayed()
    assert "Technical name: p-value (p_value)" in browser.page_source
    for width in (WIDTH, 700):  # a laptop window and a narrow one: no sideways scrolling of the page
        _open(browser, evidence_page, width)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert _overlaps(browser.execute_script(TEXT_BOXES_JS)) == []
    _open(browser, evidence_page)
    bottom = browser.execute_script("return document.querySelector('figure').getBoundingClientRect().bottom")
    shot = _screenshot(browser, "evidence-page.png", int(bottom) + 16, tmp_path)
    assert 10_000 < shot.stat().st_size < 400_000


def test_unreachable_alpha_is_warned_in_the_first_screenful(browser, unreachable_page):
    _open(browser, unreachable_page)
    assert _severe(browser) == []
    alert = browser.find_element("id", "alpha-unreachable")
    assert alert.is_displayed() and "α cannot be reached" in alert.text and "0.00412" in alert.text
    assert alert.rect["y"] + alert.rect["height"] < 900  # seen without scrolling
    assert "inconclusive" in browser.find_element("id", "verdict").text
    assert _overlaps(browser.execute_script(TEXT_BOXES_JS)) == []


def test_bench_report_table_scrolls_inside_its_box(browser, bench_report, tmp_path):
    _open(browser, bench_report)
    assert _severe(browser) == []
    table = browser.find_element("css selector", ".table-wrap table")
    assert len(table.find_elements("css selector", "thead th")) == 18
    box = browser.execute_script(
        "const w = document.querySelector('.table-wrap'); const s = getComputedStyle(w);"
        "return [w.scrollWidth, w.clientWidth, s.overflowX, document.documentElement.scrollWidth, window.innerWidth,"
        "getComputedStyle(w.querySelector('thead th')).position, getComputedStyle(w.querySelector('td')).position]"
    )
    scroll_width, client_width, overflow, page_width, window_width, header, first_column = box
    assert scroll_width > client_width and overflow == "auto"  # the table is wider than its box, which scrolls
    assert page_width <= window_width  # the page itself does not
    assert header == "sticky" and first_column == "sticky"
    # scrolled sideways, the scheme column stays put while the others move under it
    lefts = "return [...document.querySelectorAll('.table-wrap tbody td')].map(c => c.getBoundingClientRect().left)"
    before = browser.execute_script(lefts)
    browser.execute_script("document.querySelector('.table-wrap').scrollLeft = 420")
    after = browser.execute_script(lefts)
    assert after[0] == before[0] and after[17] < before[17] - 400  # the first row's first and last cells
    images = browser.execute_script("return [...document.images].map(i => [i.naturalWidth, i.complete])")
    assert len(images) == 4 and all(w > 0 and done for w, done in images)  # 2 sweeps, trade-off and power plots
    bottom = browser.execute_script("return document.querySelector('.table-wrap').getBoundingClientRect().bottom")
    shot = _screenshot(browser, "bench-report.png", int(bottom) + 80, tmp_path)
    assert 5_000 < shot.stat().st_size < 400_000


# Plots at their extremes: a region at the far right edge, a suspect at 0, p underflowing to 0, references crowding
# the suspect, many queries, a 17-word statistic name.
EDGE_PLOTS = {
    "region at the edge of 2000 bars": lambda: binomial_null_svg(
        {"trials": 2000, "rate": 0.99, "observed": 1990}, 1e-3
    ),
    "suspect at 0": lambda: binomial_null_svg(
        {"trials": 100, "rate": 1 / 9, "observed": 0, "statistic_name": "hits " * 17}, 1e-3
    ),
    "suspect inside the region": lambda: binomial_null_svg({"trials": 30, "rate": 0.25, "observed": 17}, 1e-3),
    "p underflowed to 0": lambda: pvalue_svg(0.0, 0.05),
    "p just above alpha": lambda: pvalue_svg(0.0011, 1e-3),
    "calibration": lambda: calibration_svg([1.0, 0.5, 1e-5, 0.002], ["a", "b", "a", "c"], 1.2e-3, 1e-3),
    "long sequential run": lambda: trajectory_svg(
        {
            "trajectory": [{"queried": 256 * i, "max_e_value": 1.7**i} for i in range(1, 40)],
            "early_threshold": 2e-4,
        }
    ),
}


def test_plots_keep_labels_apart_and_regions_visible_at_their_extremes(browser, tmp_path):
    page = tmp_path / "plots.html"
    figures = "".join(f"<h2>{name}</h2><div style='width:640px'>{svg()}</div>" for name, svg in EDGE_PLOTS.items())
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{figures}</body></html>")
    _open(browser, page)
    assert _severe(browser) == []
    assert len(browser.find_elements("css selector", "svg.plot")) == len(EDGE_PLOTS)
    regions = browser.find_elements("css selector", "svg.plot .rejection")
    assert len(regions) == len(EDGE_PLOTS) and all(r.rect["width"] >= 2 and r.rect["height"] >= 2 for r in regions)
    assert _overlaps(browser.execute_script(TEXT_BOXES_JS)) == []

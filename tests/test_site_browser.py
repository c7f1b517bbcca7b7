"""The static leaderboard site in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): a header click reorders rows, a filter hides rows, every link on the index
and on a result page resolves to a file, no console error, and at 1,400 px the page itself does
not scroll sideways. Built from real tiny runs of the demo's backbones and tasks.

CI installs the browser (scripts/system-deps.sh) and runs this; elsewhere it is skipped only when
Chromium is missing and cannot be installed (not root). BRAINHARNESS_UPDATE_SCREENSHOT=1 saves
the index's screenshot to docs/leaderboard.png (the README's picture)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import require_installable
from site_fixtures import demo_like_site

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
WIDTH = 1400


def _tools() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_installable("selenium", False, "pip install -e '.[test]'")
    browser, chromedriver = _tools()
    if not (browser and chromedriver) and os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "scripts" / "system-deps.sh")], check=False)
        browser, chromedriver = _tools()
    require_installable("chromium / chromium-driver", bool(browser and chromedriver), "scripts/system-deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},1000", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=options)
    d.set_window_size(WIDTH, 1000)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site():
    return demo_like_site()[1]


def _open(driver, path: Path):
    driver.get(path.resolve().as_uri())
    driver.execute_script("return document.readyState")
    return driver


def _column(driver, table: str, col: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[1]].getAttribute('data-v') || r.cells[arguments[1]]"
        ".textContent.trim())", f"#{table}", col)


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_clicking_a_header_sorts_the_rows(driver, site):
    _open(driver, site / "index.html")
    heads = driver.find_elements("css selector", "#t-encoding thead th")
    col = next(n for n, h in enumerate(heads) if h.text.strip() == "all")
    before = _column(driver, "t-encoding", col)
    heads[col].click()
    up = _column(driver, "t-encoding", col)
    numbers = [float(v) for v in up if v]
    assert numbers == sorted(numbers) and up != before  # ascending, missing last
    assert heads[col].get_attribute("aria-sort") == "ascending"
    heads[col].click()
    down = [float(v) for v in _column(driver, "t-encoding", col) if v]
    assert down == sorted(numbers, reverse=True)
    model = next(n for n, h in enumerate(heads) if h.text.strip() == "backbone")
    heads[model].click()
    names = _column(driver, "t-encoding", model)
    assert names == sorted(names, key=str.lower)


def test_a_filter_hides_rows(driver, site):
    from selenium.webdriver.support.ui import Select

    _open(driver, site / "index.html")
    total = len(_column(driver, "t-encoding", 0))
    Select(driver.find_element("id", "filter-weights")).select_by_value("random-init")
    kinds = driver.execute_script("return Array.from(document.querySelectorAll('#t-encoding tbody tr'))"
                                  ".filter(r => !r.hidden).map(r => r.dataset.weights)")
    assert kinds and set(kinds) == {"random-init"} and len(kinds) < total
    count = driver.find_element("id", "t-encoding-count").text
    assert count == f"{len(kinds)} of {total} rows shown"
    driver.find_element("id", "reset-filters").click()
    assert len(_column(driver, "t-encoding", 0)) == total


def _links_resolve(driver, page: Path) -> int:
    _open(driver, page)
    targets = driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href], img[src], link[href], script[src]'))"
        ".map(e => e.href || e.src)")
    checked = 0
    for url in targets:
        parsed = urlparse(url)
        if parsed.scheme in ("data",):
            continue
        assert parsed.scheme == "file", f"{page.name}: external link {url}"
        target = Path(unquote(parsed.path))
        assert target.is_file(), f"{page.name}: broken link {url}"
        if parsed.fragment:
            assert driver.find_elements("id", parsed.fragment) or target != page, f"{page.name}: no #{parsed.fragment}"
        checked += 1
    return checked


def test_every_link_resolves(driver, site):
    assert _links_resolve(driver, site / "index.html") > 20
    pages = sorted((site / "r").glob("*.html"))
    assert pages
    for page in pages[:3] + [p for p in pages if "_oracle_none_encoding_" in p.name]:
        assert _links_resolve(driver, page) >= 4  # back link, JSON, CSV, stylesheet, script, plots


def test_no_console_errors_and_no_sideways_scroll(driver, site):
    driver.get_log("browser")  # drop what earlier tests logged
    pages = [site / "index.html"] + sorted((site / "r").glob("*.html"))[:4]
    for page in pages:
        _open(driver, page)
        assert _errors(driver) == [], page.name
        width, inner = driver.execute_script(
            "return [document.scrollingElement.scrollWidth, window.innerWidth]")
        assert inner == WIDTH and width <= inner, (page.name, width, inner)
    _open(driver, site / "index.html")
    box = driver.execute_script("const d = document.querySelector('#t-encoding').parentElement;"
                                "return [d.scrollWidth, d.clientWidth, getComputedStyle(d).overflowX]")
    assert box[2] == "auto"  # a wide table scrolls inside its own box
    pin = driver.find_element("css selector", "#t-encoding tbody td.pin")
    assert pin.value_of_css_property("position") == "sticky"


def test_screenshot_of_the_index(driver, site, tmp_path):
    _open(driver, site / "index.html")
    driver.set_window_size(WIDTH, 900)
    shot = tmp_path / "leaderboard.png"
    driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000
    if os.environ.get("BRAINHARNESS_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "leaderboard.png").write_bytes(data)

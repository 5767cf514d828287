"""The app in a real browser: Debian Chromium driven by Playwright against `python app.py`.

Outside CI the test skips (with the reason) when Chromium or Playwright is missing; in CI
(`CI=true`) a missing browser is a failure, since .ci/run installs it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def browser_or_skip() -> str:
    chromium = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium or Playwright missing in CI: .ci/run must install them")
        pytest.skip("needs Debian's chromium (apt-get install chromium) and the playwright package")
    return chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(demo_home):
    # Train the preset's stage-1 experts first (the end-to-end test reuses them), so the page under
    # test shows images seconds after Start, as it does for a user whose experts are cached.
    subprocess.run([sys.executable, "-m", "seqmatch_engine", "--home", str(demo_home), "experts", "--preset",
                    "cpu-demo"], cwd=REPO, check=True, capture_output=True, timeout=3000)
    port = free_port()
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--home", str(demo_home)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()) from None
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.browser
def test_start_cpu_demo_in_chromium_and_watch_it(server, screenshot_dir):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(server)
        page.get_by_text("SeqMatch Studio").first.wait_for(timeout=60_000)
        page.locator("#sm-start").click()
        grid = page.locator(".sm-grid img").first
        grid.wait_for(state="visible", timeout=120_000)
        first_src = grid.get_attribute("src")
        page.wait_for_function(
            "src => { const i = document.querySelector('.sm-grid img'); return i && i.getAttribute('src') !== src; }",
            arg=first_src, timeout=600_000)
        page.locator(".sm-curves .js-plotly-plot").first.wait_for(state="visible", timeout=120_000)
        assert "distilling" in page.locator(".sm-status").first.inner_text()
        memory = page.locator(".sm-status .sm-memory").first  # the mode, and why, as a tooltip
        assert memory.inner_text() == "memory: unrolled"
        assert "memory mode unrolled (fits): unrolled ~" in (memory.get_attribute("title") or "")
        page.screenshot(path=str(screenshot_dir / "distil-live.png"), full_page=True)
        page.locator("#sm-stop").click()
        page.get_by_text("after this iteration").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Runs").click()
        page.locator("#sm-runs-refresh").click()
        page.wait_for_function("() => (document.querySelector('#sm-runs-table')?.innerText || '').includes('seqmatch')",
                               timeout=60_000)
        page.screenshot(path=str(screenshot_dir / "runs.png"), full_page=True)
        page.get_by_role("tab", name="Learn").click()
        page.get_by_text("What is dataset distillation?").wait_for()
        page.screenshot(path=str(screenshot_dir / "learn.png"), full_page=True)
        browser.close()

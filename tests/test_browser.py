"""The app in a real browser: Debian Chromium driven by Playwright against `python app.py`.

Outside CI the test skips (with the reason) when Chromium or Playwright is missing; in CI
(`CI=true`) a missing browser is a failure, since .ci/run installs it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from app_server import CHROMIUM_ARGS, serve_app

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def server(demo_home):
    # Train the preset's stage-1 experts first (the end-to-end test reuses them), so the page under
    # test shows images seconds after Start, as it does for a user whose experts are cached.
    subprocess.run([sys.executable, "-m", "seqmatch_engine", "--home", str(demo_home), "experts", "--preset",
                    "cpu-demo"], cwd=REPO, check=True, capture_output=True, timeout=3000)
    with serve_app(demo_home) as url:
        yield url


@pytest.fixture
def smoke_server(tmp_path):
    with serve_app(tmp_path) as url:
        yield url


def launch(p):
    browser = p.chromium.launch(executable_path=browser_or_skip(), headless=True, args=CHROMIUM_ARGS)
    return browser


def choose_preset(page, name: str) -> None:
    """Picks a preset and waits until the form shows its values (as a user would before pressing Start)."""
    from views.forms import form_defaults

    page.locator("#sm-preset input").click()
    page.get_by_role("option", name=name, exact=True).click()
    intervals = form_defaults(name).intervals
    page.wait_for_function(f"() => document.querySelector('#sm-intervals textarea, #sm-intervals input')?.value "
                           f"=== {intervals!r}", timeout=30_000)


@pytest.mark.slow
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


@pytest.mark.browser
def test_a_newcomers_pages_stay_current(smoke_server, screenshot_dir):
    """Cold start shows the initial images at once; lists fill on load and follow new runs; a second page's
    queued run shows no other run's picture and leaves the queue on Stop; a fresh page shows the latest run."""
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    grid_src = "() => document.querySelector('.sm-grid img')?.getAttribute('src') || ''"

    def status_has(page, text: str, timeout: int) -> None:
        page.wait_for_function(f"() => document.querySelector('.sm-status')?.innerText.includes({text!r})",
                               timeout=timeout)

    with sync_playwright() as p:
        browser = launch(p)
        first = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        first.goto(smoke_server)
        first.get_by_text("SeqMatch Studio").first.wait_for(timeout=60_000)
        assert "No run yet" in first.locator(".sm-status").first.inner_text()
        choose_preset(first, "cpu-smoke")
        first.locator("#sm-start").click()
        # cold start: the initial (real) images of both subsets while the stage-1 experts train
        first.wait_for_function(f"() => ({grid_src})().length > 0", timeout=60_000)
        status = first.locator(".sm-status").first.inner_text()
        assert "experts" in status or "distilling" in status, status
        first.screenshot(path=str(screenshot_dir / "cold-start.png"), full_page=True)
        status_has(first, "Done", 600_000)

        # the lists follow without a Refresh: Compare's finished-run pickers and the Runs table
        first.get_by_role("tab", name="Compare").click()
        first.get_by_text("…or pick finished runs").click()
        first.locator("#sm-compare-pick-seqmatch input").click()
        first.get_by_role("option", name=re.compile("seqmatch-cpu-smoke")).first.wait_for(timeout=15_000)
        first.keyboard.press("Escape")
        first.get_by_role("tab", name="Runs").click()
        first.wait_for_function("() => (document.querySelector('#sm-runs-table')?.innerText || '').includes('done')",
                                timeout=15_000)
        # nothing is picked until the user picks: then the first run of the list shows its details and timeline
        assert first.locator("#sm-runs-select input").input_value() == ""
        first.locator("#sm-runs-select input").click()
        first.get_by_role("option").first.click()
        first.get_by_text("timeline snapshots").wait_for(timeout=30_000)
        first.screenshot(path=str(screenshot_dir / "runs-current.png"), full_page=True)

        first.get_by_role("tab", name="Distil").click()  # a long run, so that the next one queues
        iterations = first.get_by_label("Iterations per subset").first  # the Distil form's (Compare has one too)
        iterations.fill("2000")
        iterations.press("Tab")
        first.locator("#sm-start").click()
        first.get_by_text("Started").wait_for(timeout=30_000)
        status_has(first, "/2000", 120_000)
        second = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()  # another browser
        second.goto(smoke_server)
        second.get_by_text("SeqMatch Studio").first.wait_for(timeout=60_000)
        choose_preset(second, "cpu-smoke")
        second.locator("#sm-start").click()
        try:
            status_has(second, "Queued", 30_000)
        except Exception:
            second.screenshot(path=str(screenshot_dir / "queued-failed.png"), full_page=True)
            raise
        second.wait_for_timeout(2_000)
        assert second.evaluate(grid_src) == ""  # no picture of the first page's run under "Queued"
        second.screenshot(path=str(screenshot_dir / "queued.png"), full_page=True)
        second.locator("#sm-stop").click()
        second.get_by_text("Removed").wait_for(timeout=15_000)
        status_has(second, "Stopped", 15_000)
        first.locator("#sm-stop").click()
        status_has(first, "Stopped", 120_000)

        fresh = browser.new_context().new_page()  # a browser opened after those runs: the latest finished run
        fresh.goto(smoke_server)
        status_has(fresh, "Done", 60_000)
        fresh.wait_for_function(f"() => ({grid_src})().length > 0", timeout=30_000)
        fresh.get_by_role("tab", name="Learn").click()  # the study's findings, in words and numbers
        from seqmatch_engine.interfaces.queries import learn_studies

        headroom = next(study for study in learn_studies() if study.name == "headroom")
        fresh.get_by_text(headroom.title).click()
        fresh.get_by_text("SeqMatch − MTT (paired)").first.wait_for(timeout=15_000)
        browser.close()


@pytest.mark.browser
def test_a_fresh_compare_page_and_the_learn_figures_read_as_they_should(smoke_server, screenshot_dir):
    """What a newcomer sees first: nothing clipped, the status names the real button, every empty box says what will
    appear there, and the study's figures in the Learn tab are large enough to read."""
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(smoke_server)
        page.get_by_text("SeqMatch Studio").first.wait_for(timeout=60_000)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#sm-compare-start").wait_for()
        assert page.locator("#sm-compare-start").inner_text().strip() == "Start comparison"
        cards = page.locator(".sm-status:visible")
        assert cards.count() == 2 and all("press Start comparison." in text for text in cards.all_inner_texts()), \
            "one card per ticked method (MTT and SeqMatch by default)"
        page.locator("#sm-compare-methods").get_by_label("DATM", exact=True).check()
        page.wait_for_function("document.querySelectorAll('.sm-status').length > 0 && "
                               "[...document.querySelectorAll('.sm-status')].filter(e => e.offsetParent).length == 3")
        page.locator("#sm-compare-methods").get_by_label("DATM", exact=True).uncheck()
        page.wait_for_function("[...document.querySelectorAll('.sm-status')].filter(e => e.offsetParent).length == 2")
        budget = page.locator("#sm-compare-budget input")
        assert budget.input_value() == "per image"
        assert budget.evaluate("e => e.scrollWidth <= e.clientWidth"), "the budget's value is clipped"
        for caption, grid in zip(page.locator(".sm-caption:visible").all(), page.locator(".sm-grid:visible").all()):
            assert caption.bounding_box()["y"] + caption.bounding_box()["height"] <= grid.bounding_box()["y"] + 1, \
                "the grid's caption runs under the image box"
        for text in ("once the run distils", "once they are evaluated", "G1 coupling of the runs",
                     "Diagnostics tab computes it"):
            page.get_by_text(text).locator("visible=true").first.wait_for(timeout=15_000)
        page.screenshot(path=str(screenshot_dir / "compare-fresh.png"), full_page=True)
        page.get_by_role("tab", name="Learn").click()
        from seqmatch_engine.interfaces.queries import learn_studies

        page.get_by_text(next(study.title for study in learn_studies() if study.name == "headroom")).click()
        figures = {name: page.locator(f"img[src*='headroom-{name}']").first for name in ("accuracy", "paired",
                                                                                          "coupling")}
        for name, figure in figures.items():
            figure.wait_for(timeout=15_000)
            width = figure.bounding_box()["width"]
            assert width >= (1000 if name == "coupling" else 450), f"the {name} figure is {width:.0f} px wide"
        page.get_by_text(next(study.title for study in learn_studies() if study.name == "soft-labels")).click()
        figures = [page.locator(f"img[src*='soft-labels-{name}']").first  # in the Studies tab's order
                   for name in ("accuracy", "paired", "fair-gain", "coupling")]
        for figure in figures:
            figure.wait_for(state="attached", timeout=15_000)
            figure.evaluate("e => e.scrollIntoView()")  # below the study's tables: a lazy image loads once near view
            figure.wait_for(timeout=15_000)
        boxes = [figure.bounding_box() for figure in figures]  # at one scroll position
        words_broken = page.locator(".sm-study-table table").filter(has_text="random real, soft labels").first.evaluate(
            """table => [...table.querySelectorAll('th')].filter(th => {
                 const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
                 for (let node = walk.nextNode(); node; node = walk.nextNode()) {
                   for (const word of node.textContent.matchAll(/\\S+/g)) {
                     const range = document.createRange();
                     range.setStart(node, word.index);
                     range.setEnd(node, word.index + word[0].length);
                     if (range.getClientRects().length > 1) return true;
                   }
                 }
                 return false;
               }).map(th => th.textContent)""")
        assert words_broken == [], f"the Learn tab's study table breaks words inside: {words_broken}"
        for name, box in zip(("accuracy", "paired", "fair-gain", "coupling"), boxes):
            assert box["width"] >= 450, f"the soft-labels {name} figure is {box['width']:.0f} px wide"
        assert [round(b["y"]) for b in boxes[:2]] == [round(boxes[0]["y"])] * 2 and boxes[2]["y"] > boxes[0]["y"]
        assert boxes[0]["x"] < boxes[1]["x"] and boxes[2]["x"] < boxes[3]["x"]
        page.screenshot(path=str(screenshot_dir / "learn-study.png"), full_page=True)
        browser.close()

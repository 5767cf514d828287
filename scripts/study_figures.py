"""Save a study's table and figures as PNG files, drawn by the app in headless Chromium (as a user sees them).

    python scripts/study_figures.py --home HOME --study NAME --out DIR

Needs the test tools (playwright) and Debian's chromium. Writes DIR/<study>-table.png, -accuracy.png,
-paired.png, -fair-gain.png and -coupling.png, and the page as DIR/<study>-page.png.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from app_server import CHROMIUM_ARGS, serve_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with serve_app(args.home) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Studies").click()
        page.locator("#sm-study-select input").click()
        page.get_by_role("option", name=args.study, exact=True).click()
        page.locator("#sm-study-table table").first.wait_for(timeout=60_000)
        page.mouse.move(0, 0)  # off the plots: plotly shows its toolbar over the title of a hovered plot
        page.wait_for_timeout(3_000)  # plotly draws after the data arrives
        page.locator("#sm-study-table").screenshot(path=str(args.out / f"{args.study}-table.png"))
        plots = page.locator(".js-plotly-plot:visible")
        for index, name in enumerate(("accuracy", "paired", "fair-gain", "coupling")):
            plots.nth(index).screenshot(path=str(args.out / f"{args.study}-{name}.png"))
        page.screenshot(path=str(args.out / f"{args.study}-page.png"), full_page=True)
        browser.close()
    print(f"saved the table and figures of {args.study} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

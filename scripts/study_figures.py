"""Save a study's table and figures as PNG files, drawn by the app in headless Chromium (as a user sees them).

    python scripts/study_figures.py --home HOME --study NAME --out DIR

Needs the test tools (playwright) and Debian's chromium. Writes DIR/<study>-table.png, -accuracy.png,
-paired.png and -coupling.png, and the page as DIR/<study>-page.png.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--home", str(args.home)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Studies").click()
            page.locator("#sm-study-select input").click()
            page.get_by_role("option", name=args.study, exact=True).click()
            page.locator("#sm-study-table table").first.wait_for(timeout=60_000)
            page.wait_for_timeout(3_000)  # plotly draws after the data arrives
            page.locator("#sm-study-table").screenshot(path=str(args.out / f"{args.study}-table.png"))
            plots = page.locator(".js-plotly-plot")
            for index, name in enumerate(("accuracy", "paired", "coupling")):
                plots.nth(index).screenshot(path=str(args.out / f"{args.study}-{name}.png"))
            page.screenshot(path=str(args.out / f"{args.study}-page.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"saved the table and figures of {args.study} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

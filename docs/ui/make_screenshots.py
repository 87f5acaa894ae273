"""Regenerate the screenshots in docs/ui/ from the real UI (example faces only).

    python docs/ui/make_screenshots.py     # starts `guidestack ui` on a free loopback port

Needs the ui extra, the playwright python package and Debian's chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
FACES = HERE.parents[1] / "examples" / "faces"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "guidestack", "ui", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(),
                executable_path=os.environ.get("GUIDESTACK_CHROMIUM", "/usr/bin/chromium"),
                args=ARGS,
                headless=True,
                viewport={"width": 1280, "height": 900},
            )
            page = browser.new_page()
            try:
                shoot(page, url)
            except Exception:
                page.screenshot(
                    path=str(Path(tempfile.gettempdir()) / "ui_failure.png"), full_page=True
                )
                print("status:", page.locator("#status").inner_text(), file=sys.stderr)
                raise
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def shoot(page, url: str) -> None:
    if True:
        if True:
            page.goto(url, wait_until="load")
            page.wait_for_selector("#problems :text('Recipe is valid')", timeout=60_000)
            page.locator("#input-image input[type=file]").set_input_files(
                str(FACES / "grace_hopper_masked.png")
            )
            page.locator("#mask-upload input[type=file]").set_input_files(
                str(FACES / "grace_hopper_mask.png")
            )
            page.locator("#input-image img").wait_for()
            page.locator("#mask-upload img").wait_for()
            page.get_by_text("Options (generated").click()
            page.locator("#run").click()
            page.wait_for_selector("#status :text('Done')", timeout=40_000)
            time.sleep(1)
            page.screenshot(path=str(HERE / "restore.png"), full_page=True)

            page.locator("#tab-compose-button").click()
            page.locator("#add-stage input").fill("smooth-semantics")
            page.keyboard.press("Enter")
            page.locator("#add-stage-btn").click()
            page.wait_for_selector("#stage-1-remove", timeout=10_000)
            time.sleep(1)
            page.screenshot(path=str(HERE / "compose.png"), full_page=True)
            page.locator("#stage-1-remove").click()
            page.wait_for_selector("#stage-1-remove", state="detached", timeout=10_000)

            page.goto(url, wait_until="load")  # a fresh session
            page.wait_for_selector("#problems :text('Recipe is valid')", timeout=60_000)
            page.locator("#recipe input").fill("restore")
            page.keyboard.press("Enter")
            page.wait_for_selector("#problems :text('Recipe is valid')", timeout=30_000)
            page.locator("#input-image input[type=file]").set_input_files(
                str(FACES / "grace_hopper_old.png")
            )
            page.locator("#input-image img").wait_for()
            page.get_by_text("Faces in the wild").click()
            page.locator("#faces input").check()
            page.locator("#run").click()
            page.wait_for_selector("#status :text('Done')", timeout=40_000)
            page.locator("#detected img").wait_for()
            time.sleep(1)
            page.screenshot(path=str(HERE / "faces.png"), full_page=True)


if __name__ == "__main__":
    main()

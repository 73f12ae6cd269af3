"""One real-browser run: open the studio in headless Chromium, generate digits, see the gallery.

Uses the Debian chromium (CI installs it); never ``playwright install``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from studio.core.results import read_png_parameters

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def studio_url(tiny_manager):
    from components import build_app

    demo = build_app(tiny_manager)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), ssr_mode=False,
                quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def test_generate_in_a_real_browser(studio_url, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); CI installs it")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(studio_url)
            expect(page.get_by_text("Diffusion Studio").first).to_be_visible()

            page.locator("#param-model input").click()
            page.get_by_role("option", name="digits-cond").click()
            steps = page.locator("#param-steps input[type=number]")
            steps.fill("5")
            steps.press("Enter")
            n_images = page.locator("#param-n_images input[type=number]")
            n_images.fill("4")
            n_images.press("Enter")
            page.locator("#generate-btn").click()

            images = page.locator("#gallery img")
            expect(images).to_have_count(4, timeout=TIMEOUT_MS)
            expect(page.locator("#seed-used input")).to_have_value("0")
            expect(page.locator("#parameters")).to_contain_text("digits-cond")
            expect(page.locator("#preview img")).to_be_visible()

            src = images.first.get_attribute("src")
            assert src and src.split("?")[0].endswith(".png"), src
            served = page.request.get(src if src.startswith("http") else studio_url.rstrip("/") + src)
            params = read_png_parameters(served.body())  # what "download" saves: the PNG with its parameters
            assert (params["model"], params["steps"], params["n_images"]) == ("digits-cond", 5, 4)

            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
        finally:
            browser.close()

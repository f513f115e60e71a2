"""
Drive the hub's demo page in headless Chromium (Debian's package) with Playwright; run as
a separate process by test_browser.py:

    python tests/_browser.py URL SCREENSHOT

Prints one JSON line with what the page showed.
"""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(url: str, screenshot: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # the hub's Content-Security-Policy must not block anything the page does
        page.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto(url)
        page.wait_for_selector('#status[data-state="open"]', timeout=15000)

        page.fill("#subscribe-event", "greeting")
        page.click("#subscribe-button")
        page.wait_for_function("() => document.getElementById('channel').textContent === 'events'")

        page.fill("#fire-event", "greeting")
        page.fill("#fire-data", '{"text": "hello from the browser"}')
        page.click("#fire-button")
        page.wait_for_selector("#log-body tr.fresh >> text=hello from the browser")
        page.wait_for_function("() => document.getElementById('fire-result').textContent !== ''")
        fired = page.text_content("#fire-result")

        # Drop the connection, fire while the page is away, and watch it resume.
        page.click("#reconnect")
        page.wait_for_selector('#status[data-state="closed"]')
        page.fill("#fire-data", '{"text": "missed while away"}')
        page.click("#fire-button")
        page.wait_for_selector('#status[data-state="open"]', timeout=15000)
        page.wait_for_selector("#log-body tr >> text=missed while away", timeout=15000)
        page.wait_for_selector("#log-body tr.notice >> text=1 missed event(s) replayed")

        rows = page.eval_on_selector_all(
            "#log-body tr", "rows => rows.map(r => [r.className, r.innerText])"
        )
        status = page.text_content("#status-text")
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    sys.stdout.write(
        json.dumps({"fired": fired, "rows": rows, "status": status, "errors": errors}) + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

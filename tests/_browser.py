"""
Drive the hub's demo page in headless Chromium (Debian's package) with Playwright; run as
a separate process by test_browser.py:

    python tests/_browser.py URL SCREENSHOT [listeners CONTROL_SOCKET]
    python tests/_browser.py URL ARTIFACTS polish

Prints one JSON line with what the page showed. With ``listeners``, drives the Listeners
panel instead (register, listen, dispatch, ack, answer two requests sent over the
control socket with reply and fail, a bad dispatch, reconnect, remove). With ``polish``,
looks at the page at 1280 and 420 px wide (ARTIFACTS/demo-WIDTH.png): what it shows on
load, how it shows data, its layout, its keyword hint, and what the console says.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.request
from typing import Any

from playwright.sync_api import Page, sync_playwright

# test_browser.py checked that there is one on PATH (tests/_deps.py), else skipped.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
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


def watch(page: Page) -> list[str]:
    """
    What went wrong on ``page``, as it happens: script errors, console errors (a 404, a
    Content-Security-Policy violation, a failed load), requests that failed.
    """
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: errors.append(f"console: {m.text} {m.location}") if m.type == "error" else None,
    )
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url} {r.failure}"))
    return errors


def main(url: str, screenshot: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        # the hub's Content-Security-Policy must not block anything the page does
        errors = watch(page)
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


def ask(control: str, request: dict[str, object]) -> socket.socket:
    """Send a request line (``q``) over the control socket; the connection, for its answer."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(15)
    connection.connect(control)
    connection.sendall(json.dumps(request).encode() + b"\n")
    return connection


def answer_of(connection: socket.socket) -> object:
    """The one answer line of ``connection``, parsed."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    connection.close()
    return json.loads(data)


def listeners(url: str, screenshot: str, control: str) -> None:
    """The Listeners panel, on the page's WebSocket, against the hub's control plane."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = watch(page)
        page.goto(url)
        page.wait_for_selector('#status[data-state="open"]', timeout=15000)

        # Register (keyboard only: type, then Enter submits the form).
        page.fill("#register-id", "worker-1")
        page.fill("#register-group", "workers")
        page.press("#register-group", "Enter")
        worker = '#listeners li[data-listener="worker-1"]'
        page.wait_for_selector(worker)
        registered = page.text_content("#register-result")
        page.click(f"{worker} button:text-is('listen')")
        page.wait_for_selector(f'{worker}[data-state="listening"]')

        # Two messages: one to the listener, one to its group.
        page.fill("#dispatch-target", "worker-1")
        page.fill("#dispatch-data", '{"n": 1}')
        page.click("#dispatch-button")
        page.wait_for_selector("#dispatch-result.ok >> text=dispatched to worker-1")
        page.select_option("#dispatch-kind", "group")
        page.fill("#dispatch-target", "workers")
        page.fill("#dispatch-data", '{"n": 2}')
        page.click("#dispatch-button")
        page.wait_for_selector("#dispatch-result.ok >> text=dispatched to workers")
        page.wait_for_function(
            "() => document.querySelectorAll('#mailbox-body tr').length === 2"
        )
        # Acknowledge the group's mail; the listener's own mail stays unacknowledged.
        second = "#mailbox-body tr:nth-child(2)"
        page.focus(f"{second} button:text-is('ack')")  # by keyboard
        page.keyboard.press("Enter")
        page.wait_for_selector(f"{second} td.acked")

        # Two requests, sent over the control socket: a request is answered (reply with a
        # JSON value, or fail), never just acknowledged: it has no ack button.
        replied_to = ask(control, {"v": "q", "r": "worker-1", "t": "ask", "p": 1,
                                   "timeout": 30, "i": "reply"})
        third = "#mailbox-body tr:nth-child(3)"
        page.wait_for_selector(f"{third} input.reply")
        request_buttons = page.eval_on_selector_all(
            f"{third} button", "buttons => buttons.map(b => b.textContent)"
        )
        page.fill(f"{third} input.reply", "{nope")
        page.click(f"{third} button:text-is('reply')")
        page.wait_for_selector(f"{third} output.error")
        bad_reply = page.text_content(f"{third} output")
        page.fill(f"{third} input.reply", '{"answer": 42}')
        page.click(f"{third} button:text-is('reply')")
        page.wait_for_selector(f"{third} td.acked")
        reply_answer = answer_of(replied_to)
        failed_by = ask(control, {"v": "q", "r": "worker-1", "t": "ask", "p": 2,
                                  "timeout": 30, "i": "fail"})
        fourth = "#mailbox-body tr:nth-child(4)"
        page.wait_for_selector(f"{fourth} button:text-is('fail')")
        page.click(f"{fourth} button:text-is('fail')")
        page.wait_for_selector(f"{fourth} td.acked")
        fail_answer = answer_of(failed_by)

        # A dispatch to nobody: the error shows next to the dispatch form.
        page.select_option("#dispatch-kind", "listener")
        page.fill("#dispatch-target", "nobody")
        page.click("#dispatch-button")
        page.wait_for_selector("#dispatch-result.error")
        dispatch_error = page.text_content("#dispatch-result")

        # Reconnect: the stream reopens; only the unacknowledged mail comes again.
        page.click("#reconnect")
        page.wait_for_selector('#status[data-state="closed"]')
        page.wait_for_selector('#status[data-state="open"]', timeout=15000)
        page.wait_for_selector(f'{worker}[data-state="listening"]')
        page.wait_for_function(
            "() => document.querySelector('#mailbox-body tr:nth-child(1) td:nth-child(7)')"
            ".textContent === '2'"
        )  # (the answered requests do not come again)
        mailbox = page.eval_on_selector_all(
            "#mailbox-body tr",
            "rows => rows.map(r => Array.from(r.cells, c => c.innerText.trim()))",
        )
        log = page.eval_on_selector_all("#log-body tr", "rows => rows.map(r => r.innerText)")
        page.screenshot(path=screenshot, full_page=True)

        page.click(f"{worker} button:text-is('remove')")
        page.wait_for_selector(worker, state="detached")
        removed = page.text_content("#register-result")
        browser.close()
    result = {
        "registered": registered,
        "mailbox": mailbox,
        "dispatch_error": dispatch_error,
        "removed": removed,
        "request_buttons": request_buttons,
        "bad_reply": bad_reply,
        "reply_answer": reply_answer,
        "fail_answer": fail_answer,
        "log": log,
        "errors": errors,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /events`` from outside the page (as curl would); the hub's answer."""
    request = urllib.request.Request(
        url + "events", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


#: Rendered with innerHTML, either would add an element (and run script).
HOSTILE = "<img src=x onerror=document.title=1>"
#: Measures the layout: overflow, and where the panels are.
LAYOUT = """() => {
    const box = (id) => document.getElementById(id).getBoundingClientRect().toJSON();
    return {scrollWidth: document.documentElement.scrollWidth, innerWidth,
            log: box("log-panel"), fire: box("fire-panel"),
            subscriptions: box("subscriptions-panel"), listeners: box("listeners-panel")};
}"""
#: The data cell of the row of ``event``: one line of code, or a folded <details>.
DATA_CELL = """(event) => {
    const row = [...document.querySelectorAll("#log-body tr.fresh")]
        .find(r => r.cells[2].textContent === event);
    if (!row) return null;
    const cell = row.cells[3];
    const code = cell.querySelector(":scope > code.json");
    const details = cell.querySelector(":scope > details.json");
    return {lines: code ? code.getClientRects().length : null, text: cell.innerText,
            details: Boolean(details), open: details ? details.open : null,
            summary: details ? details.querySelector("summary").innerText : null,
            images: document.querySelectorAll("#log-body img").length};
}"""


def look(page: Page, url: str, width: int, screenshot: str) -> dict[str, Any]:
    """The polish checks at one width (see :func:`polish`)."""
    page.set_viewport_size({"width": width, "height": 900})
    errors = watch(page)
    page.goto(url)
    page.wait_for_selector('#status[data-state="open"]', timeout=15000)
    # Subscribed on load: the hub confirmed "*" without a click; the box is left empty.
    page.wait_for_selector('#subscriptions li[data-event="*"][data-state="subscribed"]')
    header = {name: page.text_content(f"#{name}") for name in ("channel", "epoch", "last-id")}
    box = page.input_value("#subscribe-event")

    small = {"text": "hi", "n": width}
    big = {"items": [{"i": i, "name": f"item {i}"} for i in range(30)], "note": HOSTILE}
    post(url, {"event": "small", "data": small})
    post(url, {"event": "hostile", "data": HOSTILE})
    fired = post(url, {"event": "big", "data": big})
    page.wait_for_function(f"() => ({DATA_CELL})('big') !== null")
    cells = {name: page.evaluate(DATA_CELL, name) for name in ("small", "big", "hostile")}
    page.click("#log-body tr.fresh details.json summary")
    opened = page.evaluate(
        "() => JSON.parse(document.querySelector('#log-body details.json[open] pre').textContent)"
    )
    last_id = page.text_content("#last-id")
    favicon = page.evaluate(
        """async () => {
            const href = document.querySelector('link[rel="icon"]').href;
            const answer = await fetch(href);
            return [answer.status, answer.headers.get("content-type")];
        }"""
    )
    clean = list(errors)  # before a refused keyword: the browser logs every 400 it gets

    page.fill("#fire-keywords", '{"colour": "red"}')
    page.click("#fire-button")
    page.wait_for_selector("#keyword-hint:not([hidden])")
    hint = page.text_content("#keyword-hint")
    layout = page.evaluate(LAYOUT)  # (with the hint shown: it must fit too)
    page.screenshot(path=screenshot, full_page=True)
    page.fill("#fire-keywords", '{"user": "bob"}')
    page.click("#fire-button")
    page.wait_for_selector("#fire-result.ok")
    return {
        "errors": clean,
        "refused_errors": errors[len(clean):],
        "header": header,
        "box": box,
        "cells": cells,
        "opened": opened,
        "sent": {"small": small, "big": big, "hostile": HOSTILE},
        "fired": fired,
        "last_id": last_id,
        "favicon": favicon,
        "hint": hint,
        "hint_hidden_after": page.is_hidden("#keyword-hint"),
        "layout": layout,
        "title": page.title(),
    }


def polish(url: str, artifacts: str) -> None:
    """The page at 1280 and 420 px wide, each in a fresh page of one browser."""
    result: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for width in (1280, 420):
            page = browser.new_page()
            screenshot = os.path.join(artifacts, f"demo-{width}.png")
            result[str(width)] = look(page, url, width, screenshot)
            page.close()
        browser.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    if sys.argv[3:4] == ["polish"]:
        polish(sys.argv[1], sys.argv[2])
    elif sys.argv[3:4] == ["listeners"]:
        listeners(sys.argv[1], sys.argv[2], sys.argv[4])
    else:
        main(sys.argv[1], sys.argv[2])

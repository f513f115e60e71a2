"""
Drive the hub's demo page in headless Chromium (Debian's package) with Playwright; run as
a separate process by test_browser.py:

    python tests/_browser.py URL SCREENSHOT [listeners CONTROL_SOCKET]

Prints one JSON line with what the page showed. With ``listeners``, drives the Listeners
panel instead (register, listen, dispatch, ack, answer two requests sent over the
control socket with reply and fail, a bad dispatch, reconnect, remove).
"""

from __future__ import annotations

import json
import socket
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
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
        )
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


if __name__ == "__main__":
    if sys.argv[3:4] == ["listeners"]:
        listeners(sys.argv[1], sys.argv[2], sys.argv[4])
    else:
        main(sys.argv[1], sys.argv[2])

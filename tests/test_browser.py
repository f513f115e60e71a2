"""
The demo page in a real browser: headless Chromium (Debian's package) via Playwright,
driven by tests/_browser.py in a process of its own. One hub serves the module's pages
(each page subscribes live, from the hub's last id, so none sees another's events).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests._deps import require_binary
from tests._hub import ROOT, HubProcess, start_hub

ARTIFACTS = os.path.join(ROOT, "artifacts")
SCREENSHOT = os.path.join(ARTIFACTS, "hub-demo.png")


class BrowserHub(NamedTuple):
    """The module's hub and the path of its control socket."""

    process: HubProcess
    control: str

    @property
    def url(self) -> str:
        return self.process.url


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; without it the module's tests skip (fail in CI), saying how to get it."""
    return require_binary("chromium")


@pytest_twisted.async_yield_fixture(scope="module")
async def hub(chromium: str) -> AsyncIterator[BrowserHub]:
    """One hub for the module: a control socket (Listeners panel), keyword ``user``."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="ted-browser-")
    control = os.path.join(directory, "hub.sock")
    process = await start_hub("--control", f"unix:{control}", "--keyword", "user")
    yield BrowserHub(process, control)
    await process.stop()
    shutil.rmtree(directory, ignore_errors=True)


async def drive(*args: str) -> Any:
    """Run tests/_browser.py with ``args``; the JSON line it printed last."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [os.path.join(ROOT, "tests", "_browser.py"), *args],
        env=dict(os.environ),
        path=ROOT,
        reactor=reactor,
    )
    assert code == 0, err.decode(errors="replace")
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest_twisted.ensureDeferred
async def test_demo_page_subscribes_fires_and_resumes(hub: BrowserHub) -> None:
    if os.path.exists(SCREENSHOT):
        os.remove(SCREENSHOT)
    page = await drive(hub.url, SCREENSHOT)
    assert page["errors"] == []  # no script or console error, no failed request
    assert page["fired"].startswith("fired: id ")
    events = [text for kind, text in page["rows"] if "notice" not in kind]
    notices = [text for kind, text in page["rows"] if "notice" in kind]
    assert any("hello from the browser" in text and "greeting" in text for text in events)
    assert any("missed while away" in text for text in events)
    assert any("reconnected" in text for text in notices)
    assert any("1 missed event(s) replayed" in text for text in notices)
    assert page["status"].startswith("connected (reconnect #")
    assert os.path.getsize(SCREENSHOT) > 10_000, "a screenshot was saved"


LISTENERS_SCREENSHOT = os.path.join(ARTIFACTS, "hub-listeners.png")


@pytest_twisted.ensureDeferred
async def test_listeners_panel_registers_dispatches_acks_and_shows_errors(
    hub: BrowserHub,
) -> None:
    if os.path.exists(LISTENERS_SCREENSHOT):
        os.remove(LISTENERS_SCREENSHOT)
    page = await drive(hub.url, LISTENERS_SCREENSHOT, "listeners", hub.control)
    assert page["errors"] == []
    assert page["registered"] == "registered worker-1 on events"
    # [time, listener, mail id, event, data, source, tries, ack]
    mailbox = [row[1:] for row in page["mailbox"]]
    assert len(mailbox) == 4, mailbox
    own, grouped, replied, failed = mailbox
    assert own[0] == grouped[0] == "worker-1"
    assert own[2] == grouped[2] == "job"
    assert json.loads(own[3]) == {"n": 1} and own[4] == "dispatch"
    assert json.loads(grouped[3]) == {"n": 2} and grouped[4] == "group"
    # after the reconnect, the unacknowledged mail came again; the acknowledged one did not
    assert own[5] == "2" and own[6] == "ack", own
    assert grouped[5] == "1" and grouped[6] == "acked", grouped
    # requests: answered with a reply or a failure, never a bare ack
    assert page["request_buttons"] == ["reply", "fail"]
    assert page["bad_reply"].startswith("not valid JSON: "), page["bad_reply"]
    assert replied[4] == failed[4] == "dispatch (request)"
    assert (replied[6], failed[6]) == ("replied", "failed")
    assert page["reply_answer"] == {"ok": True, "p": {"answer": 42}, "i": "reply"}
    fail_answer = page["fail_answer"]
    assert (fail_answer["code"], fail_answer["remote_type"]) == ("remote", "ClientError")
    assert "failed from the demo page" in fail_answer["error"] and fail_answer["i"] == "fail"
    assert page["dispatch_error"].startswith("unknown_listener: "), page["dispatch_error"]
    assert "nobody" in page["dispatch_error"]
    # the panel's errors are shown next to its forms, not as notices in the events log
    assert not any("nobody" in row for row in page["log"])
    assert page["removed"] == "removed worker-1"
    assert os.path.getsize(LISTENERS_SCREENSHOT) > 10_000, "a screenshot was saved"


#: The page's screenshots at both widths (see test_demo_page_polish_at_1280_and_420_px).
DEMO_SCREENSHOTS = {width: os.path.join(ARTIFACTS, f"demo-{width}.png") for width in (1280, 420)}


@pytest_twisted.ensureDeferred
async def test_demo_page_polish_at_1280_and_420_px(hub: BrowserHub) -> None:
    """
    At each width, in a fresh page: subscribed to ``*`` on load (an event POSTed from
    outside shows without a click; the box is left empty); the header shows the channel,
    its epoch and last id from the first connect; small data on one line, big data folded
    in a <details>, hostile data as text; no console error, failed request or 404 (the
    favicon is served); the layout fits; a refused keyword explains ``--keyword``.
    """
    for path in DEMO_SCREENSHOTS.values():
        if os.path.exists(path):
            os.remove(path)
    health = json.loads(await (await treq.get(hub.url + "health")).content())
    # The hub lists its keywords when it refuses one (the page's hint shows them).
    response = await treq.post(
        hub.url + "events", json.dumps({"event": "x", "keywords": {"colour": 1}}).encode()
    )
    refusal = json.loads(await response.content())
    assert response.code == 400 and refusal["allowed_keywords"] == ["user"], refusal
    assert "unknown match-spec keyword 'colour'" in refusal["error"], refusal
    pages = await drive(hub.url, ARTIFACTS, "polish")
    for width, path in DEMO_SCREENSHOTS.items():
        page = pages[str(width)]
        at = f"at {width} px"
        assert page["errors"] == [], at
        assert page["favicon"] == [200, "image/svg+xml"], at
        # (a refused POST is a 400, which the browser logs: that, and nothing else)
        refused = page["refused_errors"]
        assert len(refused) == 1 and "status of 400" in refused[0], (at, refused)
        assert "/events" in refused[0], (at, refused)
        # Subscribed on load; the header from the first connect, not dashes.
        assert page["box"] == "", at
        header = page["header"]
        assert header["channel"] == "events", (at, header)
        assert header["epoch"] == health["channel"]["epoch"], (at, header)
        assert re.fullmatch(r"\d+|none yet", header["last-id"]), (at, header)
        assert page["last_id"] == str(page["fired"]["id"]), at
        # Data: small on one line, big folded (closed, then whole when opened), as text.
        sent, cells = page["sent"], page["cells"]
        small, big, hostile = cells["small"], cells["big"], cells["hostile"]
        assert small is not None, f"{at}: an event fired over HTTP showed without a click"
        assert not small["details"] and small["lines"] == 1, (at, small)
        assert json.loads(small["text"]) == sent["small"], (at, small)
        assert big["details"] and big["open"] is False, (at, big)
        assert big["summary"].startswith("(2 keys, "), (at, big)
        assert page["opened"] == sent["big"], at
        assert json.loads(hostile["text"]) == sent["hostile"], (at, hostile)
        assert hostile["images"] == 0 and page["title"] == "Event hub", (at, hostile)
        # The keyword hint: what --keyword does, and the keywords this hub has.
        assert "--keyword NAME" in page["hint"] and ": user." in page["hint"], page["hint"]
        assert page["hint_hidden_after"], f"{at}: an accepted keyword hides the hint"
        # Layout: nothing wider than the window; side by side at 1280, stacked at 420.
        layout = page["layout"]
        assert layout["scrollWidth"] <= layout["innerWidth"], (at, layout)
        log, fire, subscriptions = layout["log"], layout["fire"], layout["subscriptions"]
        if width == 1280:
            assert log["left"] >= fire["right"], layout
            assert abs(log["top"] - subscriptions["top"]) < 1, layout
            assert log["right"] - subscriptions["left"] > 0.9 * width, layout
        else:
            assert abs(log["left"] - fire["left"]) < 1 and log["top"] >= fire["bottom"], layout
            assert layout["listeners"]["top"] >= log["bottom"], layout
            assert log["right"] <= width, layout
        assert os.path.getsize(path) > 10_000, f"{at}: a screenshot was saved"

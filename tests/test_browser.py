"""The demo page in a real browser: headless Chromium (Debian's package) via Playwright."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests._hub import ROOT, start_hub

ARTIFACTS = os.path.join(ROOT, "artifacts")
SCREENSHOT = os.path.join(ARTIFACTS, "hub-demo.png")


@pytest_twisted.ensureDeferred
async def test_demo_page_subscribes_fires_and_resumes() -> None:
    assert os.path.exists("/usr/bin/chromium"), (
        "Debian's chromium is missing: scripts/test installs it (apt-get install chromium)"
    )
    os.makedirs(ARTIFACTS, exist_ok=True)
    if os.path.exists(SCREENSHOT):
        os.remove(SCREENSHOT)
    hub = await start_hub()
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [os.path.join(ROOT, "tests", "_browser.py"), hub.url, SCREENSHOT],
            env=dict(os.environ),
            path=ROOT,
            reactor=reactor,
        )
    finally:
        await hub.stop()
    assert code == 0, err.decode(errors="replace")
    page = json.loads(out.decode().strip().splitlines()[-1])
    assert page["errors"] == []
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
async def test_listeners_panel_registers_dispatches_acks_and_shows_errors() -> None:
    assert os.path.exists("/usr/bin/chromium"), (
        "Debian's chromium is missing: scripts/test installs it (apt-get install chromium)"
    )
    os.makedirs(ARTIFACTS, exist_ok=True)
    if os.path.exists(LISTENERS_SCREENSHOT):
        os.remove(LISTENERS_SCREENSHOT)
    directory = tempfile.mkdtemp(prefix="ted-browser-")
    control = os.path.join(directory, "hub.sock")
    hub = await start_hub("--control", f"unix:{control}")
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [os.path.join(ROOT, "tests", "_browser.py"), hub.url, LISTENERS_SCREENSHOT,
             "listeners", control],
            env=dict(os.environ),
            path=ROOT,
            reactor=reactor,
        )
    finally:
        await hub.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert code == 0, err.decode(errors="replace")
    page = json.loads(out.decode().strip().splitlines()[-1])
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

"""
What the documentation promises about itself and about deployments: the options that
doc/deploying.rst names exist, the README says where the built docs land, the docs'
sidebar keeps the package name whole (in headless Chromium), and the TLS ``--listen``
that the Deploying page shows negotiates a protocol with browsers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests._deps import require_binary
from tests._hub import ROOT
from twisted_event_dispatcher.hub._limits import limit

DOC = os.path.join(ROOT, "doc")
ARTIFACTS = os.path.join(ROOT, "artifacts")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: The options twistd itself takes, which the Deploying page names for ``twistd event-hub``.
TWISTD_OPTIONS = {"--nodaemon", "--pidfile"}
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _help(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_option_the_deploying_page_names_exists() -> None:
    with open(os.path.join(DOC, "deploying.rst"), encoding="utf-8") as file:
        named = set(_OPTION.findall(file.read()))
    hub = set(_OPTION.findall(_help(sys.executable, "-m", "twisted_event_dispatcher", "serve",
                                    "--help")))
    twistd = set(_OPTION.findall(_help(TWISTD, "--help")))
    assert {"--token-file", "--origin", "--control-mode", "--add-channel"} <= named
    assert sorted(named - TWISTD_OPTIONS - hub) == [], "not options of the hub"
    assert sorted((TWISTD_OPTIONS & named) - twistd) == [], "not options of twistd"


def test_the_readme_says_where_the_docs_land() -> None:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        readme = file.read()
    with open(os.path.join(ROOT, "scripts", "test"), encoding="utf-8") as file:
        script = file.read()
    assert "python -m sphinx -q -W -b html doc build/doc" in script
    assert "python -m sphinx -b html doc build/doc" in readme
    assert "build/doc/index.html" in readme
    assert "doc/deploying.rst" in readme


#: Run by the test in a process of its own (Playwright's sync API runs an event loop).
_MEASURE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from playwright.sync_api import sync_playwright
from tests._browser import FLAGS
chromium, page_url, screenshot = sys.argv[2:5]
MEASURE = '''(family) => {
    const title = document.querySelector("div.sphinxsidebarwrapper h1.logo");
    const link = title.querySelector("a");
    if (family) title.style.fontFamily = family;
    const box = link.getBoundingClientRect(), room = title.getBoundingClientRect();
    return {text: title.innerText, lines: link.getClientRects().length, right: box.right,
            room: room.right, size: parseFloat(getComputedStyle(title).fontSize)};
}'''
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(page_url)
    page.screenshot(path=screenshot)
    found = {"default": page.evaluate(MEASURE, ""),
             "DejaVu Serif": page.evaluate(MEASURE, "'DejaVu Serif', serif")}
    browser.close()
sys.stdout.write(json.dumps(found) + "\\n")
"""


def test_docs_sidebar_title_keeps_the_package_name_whole() -> None:
    """
    The docs' own conf.py and CSS on a one-page site (a full build takes 10 s; scripts/test
    makes that one): at 1280 px the title is the whole name on one line, inside the sidebar,
    in the default font and in a wide one.
    """
    chromium = require_binary("chromium")
    os.makedirs(ARTIFACTS, exist_ok=True)
    screenshot = os.path.join(ARTIFACTS, "docs-sidebar-1280.png")
    with tempfile.TemporaryDirectory(prefix="ted-docs-") as directory:
        source = os.path.join(directory, "source")
        os.makedirs(source)
        shutil.copy(os.path.join(DOC, "conf.py"), source)
        shutil.copytree(os.path.join(DOC, "_static"), os.path.join(source, "_static"))
        with open(os.path.join(source, "index.rst"), "w", encoding="utf-8") as file:
            file.write("twisted_event_dispatcher\n========================\n\nA page.\n")
        built = os.path.join(directory, "html")
        subprocess.run(
            [sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", source, built],
            check=True, cwd=ROOT, timeout=120,
        )
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, ROOT, chromium,
             "file://" + os.path.join(built, "index.html"), screenshot],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for font, title in found.items():
        assert title["text"] == "twisted_event_dispatcher", font
        assert title["lines"] == 1, f"the name wraps in {font}: {title}"
        assert title["right"] <= title["room"], f"the name overflows the sidebar in {font}"
        assert title["size"] >= 16, "still readable"
    assert os.path.getsize(screenshot) > 5_000


def test_tls_listen_offers_http_1_1_to_browsers() -> None:
    """
    ``--listen ssl:...`` (doc/deploying.rst): Twisted picks the ALPN protocol from the
    factory it listens with. Behind the hub's connection limit it found none, so every
    client that offers ALPN (browsers, curl) failed the TLS handshake.
    """
    for max_connections in (1000, None):
        factory = limit(Site(Resource()), max_connections=max_connections, header_timeout=10)
        negotiation = IProtocolNegotiationFactory(factory, None)
        assert negotiation is not None
        assert b"http/1.1" in negotiation.acceptableProtocols()

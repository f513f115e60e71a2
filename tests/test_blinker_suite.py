"""
blinker's own test suite, run against :mod:`twisted_event_dispatcher.compat.blinker`.

The suite is not copied into the project: the test fetches blinker 1.9.0's source
distribution with pip (checked against its SHA-256), extracts its ``tests/`` and
``pyproject.toml`` (blinker's pytest settings: warnings are errors, asyncio mode "auto"),
and runs ``tests/test_signals.py`` (19 tests) and ``tests/test_context.py`` (4) in a pytest
subprocess where ``import blinker`` is a two-line package re-exporting the compat module.
The suite's one plugin, pytest-asyncio, is installed beside it (``pip install --target``),
not into the project's environment, where it would load into every test run.

Downloads are kept under ``build/blinker-suite/``, so only the first run needs the package
registry; a failed download fails the test, saying so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "blinker-suite"
VERSION = "1.9.0"
SDIST = f"blinker-{VERSION}.tar.gz"
SDIST_SHA256 = "b4ce2265a7abece45e7cc896e98dbebe6cead56bcf805a3d23136d145f5445bf"
PLUGIN = "pytest-asyncio==1.5.0"
#: The test files run, with the number of tests each holds in blinker 1.9.0.
SUITES = {"tests/test_signals.py": 19, "tests/test_context.py": 4}
#: Tests of the suite that cannot pass on the compat module, by node id, with the reason
#: (each one is also listed in doc/signals.rst, "Drop-in for blinker"). None today.
KNOWN_FAILURES: dict[str, str] = {}
PIP_TIMEOUT = 180
RUN_TIMEOUT = 120

SHIM = """\
# blinker, as the tests import it: the compat module on this project's engine.
from twisted_event_dispatcher.compat.blinker import *  # noqa: F403
from twisted_event_dispatcher.compat.blinker import __all__  # noqa: F401
"""

CHECK_PLUGIN = """\
# Refuses to run the suite unless "import blinker" is the compat module.
import blinker
from twisted_event_dispatcher.compat import blinker as compat


def pytest_configure(config):
    if blinker.Signal is not compat.Signal:
        raise RuntimeError(f"import blinker gave {blinker.__file__}, not the compat module")
"""


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} took more than {PIP_TIMEOUT} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"could not fetch blinker's test suite: {' '.join(command)} exited with "
            f"{done.returncode} (no access to the package registry?):\n{done.stderr[-2000:]}",
            pytrace=False,
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sdist() -> Path:
    """blinker's source distribution, downloaded once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / SDIST
    if not cached.exists() or _sha256(cached) != SDIST_SHA256:
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            _pip("download", "--no-binary", ":all:", "--no-deps", "--dest", scratch,
                 f"blinker=={VERSION}")
            fetched = Path(scratch) / SDIST
            assert fetched.exists(), f"pip download did not produce {SDIST}"
            digest = _sha256(fetched)
            assert digest == SDIST_SHA256, f"{SDIST} has SHA-256 {digest}, not {SDIST_SHA256}"
            os.replace(fetched, cached)
    return cached


def _plugin() -> Path:
    """A folder holding pytest-asyncio (only), installed once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / PLUGIN.replace("==", "-")
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier install
        scratch = Path(tempfile.mkdtemp(dir=CACHE))
        try:
            _pip("install", "--no-deps", "--target", str(scratch), PLUGIN)
            (scratch / ".complete").touch()
            try:
                os.replace(scratch, target)
            except OSError:  # another test run installed it meanwhile
                if not (target / ".complete").exists():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _extract(sdist: Path, into: Path) -> Path:
    """blinker's tests/ and pyproject.toml (its pytest settings)."""
    top = f"blinker-{VERSION}"
    with tarfile.open(sdist) as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.name == f"{top}/pyproject.toml" or member.name.startswith(f"{top}/tests/")
        ]
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            archive.extractall(into, members=members, filter="data")
        else:  # the archive's SHA-256 was checked: its paths are blinker's own
            archive.extractall(into, members=members)
    return into / top


def _outcomes(report: Path) -> dict[str, str]:
    """Node id -> 'passed', 'failed', 'error' or 'skipped', from pytest's JUnit XML."""
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[node] = "failed" if "failure" in kinds else kinds[0] if kinds else "passed"
    return outcomes


def test_blinker_test_suite_passes_on_the_compat_module(tmp_path: Path) -> None:
    source = _extract(_sdist(), tmp_path)
    shim = tmp_path / "shim"
    (shim / "blinker").mkdir(parents=True)
    (shim / "blinker" / "__init__.py").write_text(SHIM)
    (shim / "_compat_check.py").write_text(CHECK_PLUGIN)
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # blinker's suite runs with its plugin only
    env["PYTHONPATH"] = os.pathsep.join(
        [str(shim), str(_plugin()), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [
        sys.executable, "-m", "pytest", "-p", "pytest_asyncio.plugin", "-p", "_compat_check",
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function",
        "-q", f"--junitxml={report}", *SUITES,
    ]
    done = subprocess.run(
        command, cwd=source, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    output = f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert report.exists(), f"blinker's suite did not run (exit {done.returncode}):\n{output}"
    outcomes = _outcomes(report)
    collected = {name: sum(node.startswith(f"{name}::") for node in outcomes) for name in SUITES}
    assert collected == SUITES, f"collected {collected}, expected {SUITES}:\n{output}"
    failed = {node for node, outcome in outcomes.items() if outcome != "passed"}
    assert failed == set(KNOWN_FAILURES), (
        f"unexpected outcomes: {sorted(failed ^ set(KNOWN_FAILURES))}:\n{output}"
    )
    passed = len(outcomes) - len(failed)
    assert passed == sum(SUITES.values()) - len(KNOWN_FAILURES)
    assert done.returncode == (1 if KNOWN_FAILURES else 0), output
    docs = (ROOT / "doc" / "signals.rst").read_text()
    assert all(node.split("::")[-1] in docs for node in KNOWN_FAILURES)

"""
Without redis-server or chromium on PATH, exactly the tests that need them skip, saying how
to install them; with CI set, those tests fail with that message instead (tests/_deps.py).
Each test runs pytest in a subprocess on a small selection, with a PATH that holds only this
Python's bin directory (the hub and consumer subprocesses are started through
``sys.executable``, so nothing else is needed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests._hub import ROOT

NEED_REDIS = [
    "tests/test_redis.py::test_gaps_expired_and_epoch",  # the redis fixture
    "tests/test_redis.py::test_connection_errors_are_clear",  # makes its own RedisServer
    "tests/test_hub_redis.py::test_redis_outage_is_reported_and_recovered",  # a hub on Redis
]
NEED_CHROMIUM = "tests/test_browser.py"
NEED_NOTHING = "tests/test_redis.py::test_bad_urls"  # a Redis module's test without a server
REDIS_HINT = (
    "redis-server not found: install Debian's redis-server (apt-get install redis-server) "
    "or put a redis-server on PATH"
)
CHROMIUM_HINT = (
    "chromium not found: install Debian's chromium (apt-get install chromium) "
    "or put a chromium on PATH"
)
_OUTCOME = re.compile(r"^(tests/\S+) (PASSED|SKIPPED|FAILED|ERROR)\b", re.MULTILINE)


def run_without_programs(ci: str) -> tuple[int, str, dict[str, set[str]]]:
    """Run the selection with neither program on PATH: exit code, output, outcome per test."""
    path = os.path.dirname(sys.executable)
    for program in ("redis-server", "chromium"):
        assert shutil.which(program, path=path) is None, f"{program} is in {path}"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-rs",
         *NEED_REDIS, NEED_CHROMIUM, NEED_NOTHING],
        cwd=ROOT,
        env=dict(os.environ, PATH=path, CI=ci),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    outcomes: dict[str, set[str]] = {}
    for test, outcome in _OUTCOME.findall(output):
        outcomes.setdefault(test, set()).add(outcome)
    return completed.returncode, output, outcomes


def test_missing_programs_skip_exactly_their_tests_saying_how_to_install_them() -> None:
    code, output, outcomes = run_without_programs(ci="")
    assert code == 0, output
    for test in NEED_REDIS:
        assert outcomes[test] == {"SKIPPED"}, output
    browser = [test for test in outcomes if test.startswith(NEED_CHROMIUM)]
    assert browser and all(outcomes[test] == {"SKIPPED"} for test in browser), output
    assert outcomes[NEED_NOTHING] == {"PASSED"}, output
    assert REDIS_HINT in output and CHROMIUM_HINT in output


def test_in_ci_a_missing_program_is_an_error_not_a_skip() -> None:
    code, output, outcomes = run_without_programs(ci="true")
    assert code == 1, output
    needing = [*NEED_REDIS, *(test for test in outcomes if test.startswith(NEED_CHROMIUM))]
    assert len(needing) > len(NEED_REDIS), output
    for test in needing:
        assert outcomes[test] & {"FAILED", "ERROR"}, output
    assert outcomes[NEED_NOTHING] == {"PASSED"}, output
    assert "SKIPPED" not in {o for test in outcomes for o in outcomes[test]}, output
    assert f"{REDIS_HINT} (CI is set: a missing program is an error)" in output
    assert f"{CHROMIUM_HINT} (CI is set: a missing program is an error)" in output

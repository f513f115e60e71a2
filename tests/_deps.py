"""
The programs some tests need besides Python packages: ``redis-server`` (the Redis tests
start private servers) and ``chromium`` (the browser tests). scripts/test installs them
from Debian's packages when it can (as root or through ``sudo -n``); where it cannot (not
Debian, no root, no password-less sudo, or the install failed), or under plain ``pytest``
or ``tox``, exactly the tests that need a missing program skip, with a reason that says how
to install it. In CI (the environment variable ``CI`` set, and not ``""``, ``0`` or
``false``) a missing program is an error instead: those tests fail with the same message,
so CI never passes by skipping them.
"""

from __future__ import annotations

import os
import shutil

import pytest

#: How to get each program, for the skip (or failure) message.
HINTS = {
    "redis-server": "install Debian's redis-server (apt-get install redis-server) "
    "or put a redis-server on PATH",
    "chromium": "install Debian's chromium (apt-get install chromium) "
    "or put a chromium on PATH",
}


def in_ci() -> bool:
    """True when the environment variable ``CI`` says this is a CI run (as tox reads it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_binary(name: str, hint: str | None = None) -> str:
    """
    The path of the program ``name`` on PATH. Without it, skip the running test with the
    reason "``name`` not found: ``hint``" (``hint`` defaults to :data:`HINTS`), or fail it
    with that message in CI. Call it before the test starts anything it would have to stop.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not found: {hint or HINTS[name]}"
    if in_ci():
        pytest.fail(f"{message} (CI is set: a missing program is an error)", pytrace=False)
    pytest.skip(message)


__all__ = ["HINTS", "in_ci", "require_binary"]

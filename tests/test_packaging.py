"""
The installed package as a user meets it, in this virtualenv: twistd finds the ``event-hub``
plugin through the editable install (a static ``.pth`` entry for the checkout, see
pyproject.toml's ``package-dir``), and a missing extra is one line naming it, from the hub's
command line, from twistd, and from the library. scripts/check-wheel checks the same on a
wheel in a fresh virtualenv, and that ``pip install -e`` prints no deprecation banner.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twisted_event_dispatcher.errors import EventDispatcherError, MissingExtraError

BIN = Path(sys.executable).parent
HINT = "pip install 'twisted_event_dispatcher[redis]'"
# Makes `import txredisapi` fail as it does where the 'redis' extra is not installed.
WITHOUT_REDIS = "import sys; sys.modules['txredisapi'] = None; "


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd`` (not the checkout: the install must be what finds things)."""
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    done = run([str(BIN / "twistd"), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "event-hub" in done.stdout


def test_twistd_event_hub_help(tmp_path: Path) -> None:
    done = run([str(BIN / "twistd"), "-n", "event-hub", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--channel" in done.stdout and "--listen" in done.stdout


def test_editable_install_is_a_static_path_entry(tmp_path: Path) -> None:
    """The checkout is on sys.path (what twistd's plugin scan reads), not behind a finder."""
    show = "import sys; print([type(f).__module__ for f in sys.meta_path]); print(sys.path)"
    done = run([sys.executable, "-c", show], tmp_path)
    assert done.returncode == 0, done.stderr
    finders, paths = (ast.literal_eval(line) for line in done.stdout.splitlines())
    assert not [f for f in finders if "__editable__" in f]
    checkout = Path(__file__).resolve().parent.parent
    assert checkout in [Path(p).resolve() for p in paths if p]


@pytest.mark.parametrize(
    "command",
    [
        "from twisted_event_dispatcher.__main__ import main; "
        "sys.exit(main(['serve', '--channel', 'redis']))",
        "from twisted.scripts.twistd import run; "
        "sys.argv = ['twistd', '-n', 'event-hub', '--channel', 'redis']; run()",
    ],
    ids=["serve", "twistd"],
)
def test_redis_without_the_extra_is_a_usage_error(tmp_path: Path, command: str) -> None:
    done = run([sys.executable, "-c", WITHOUT_REDIS + command], tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.endswith(f"txredisapi is not installed: the Redis channel needs the 'redis' "
                         f"extra: {HINT}"), last


def test_importing_the_redis_channel_without_the_extra(tmp_path: Path) -> None:
    check = (
        "try:\n"
        "    import twisted_event_dispatcher.channels.redis\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e.name, str(e), sep='|')\n"
    )
    done = run([sys.executable, "-c", WITHOUT_REDIS + "\n" + check], tmp_path)
    assert done.returncode == 0, done.stderr
    kind, name, message = done.stdout.strip().split("|")
    assert (kind, name) == ("MissingExtraError", "txredisapi")
    assert message.endswith(HINT) and "\n" not in message


def test_missing_extra_error() -> None:
    error = MissingExtraError("txredisapi", "redis", "the Redis channel")
    assert isinstance(error, ImportError) and isinstance(error, EventDispatcherError)
    assert (error.name, error.extra) == ("txredisapi", "redis")
    assert str(error).endswith(HINT)

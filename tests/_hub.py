"""Run the event hub as a real subprocess on a free port, for the tests."""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LISTENING = re.compile(rb"event hub listening on (http://(?:[\d.]+|\[[0-9a-f:]+\]):\d+/)")


class HubProcess(ProcessProtocol):
    """The hub's output, its URL once it listens, and its exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.url = ""  # http://127.0.0.1:PORT/ once the hub listens
        self._listened: str | Failure | None = None
        self._listening: list[Deferred[str]] = []
        self.ended: Deferred[int] = Deferred()
        #: The signal that ended the process, if one did (twistd re-raises SIGTERM).
        self.ended_by: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.url:
            match = _LISTENING.search(self.output)
            if match:
                self.url = match.group(1).decode()
                self._settle(self.url)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended_by = getattr(reason.value, "signal", None)
        if self._listened is None:
            self._settle(
                Failure(RuntimeError(f"the hub exited ({code}) before listening:\n{self.text}"))
            )
        self.ended.callback(code if code is not None else -1)

    @property
    def listening(self) -> Deferred[str]:
        """
        Fires with the URL once the hub listens; fails if it exits first. A fresh Deferred
        each time: a hub that exits as its test expects leaves no failure unobserved (which
        would be logged as "Unhandled error in Deferred" during a later test).
        """
        if isinstance(self._listened, Failure):
            return fail(self._listened)
        if self._listened is not None:
            return succeed(self._listened)
        d: Deferred[str] = Deferred()
        self._listening.append(d)
        return d

    def _settle(self, result: str | Failure) -> None:
        self._listened = result
        waiting, self._listening = self._listening, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    @property
    def port(self) -> int:
        assert self.url
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    def signal(self, name: str = "TERM") -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)

    async def stop(self) -> int:
        if not self.ended.called:
            try:
                self.signal("TERM")
            except Exception:
                pass
        return await self.ended


def spawn_hub(*options: str, command: tuple[str, ...] | None = None) -> HubProcess:
    """Start ``python -m twisted_event_dispatcher serve`` (or ``command``) with options."""
    process = HubProcess()
    args = list(command or (sys.executable, "-m", "twisted_event_dispatcher", "serve"))
    if not any(o.startswith("--listen") or o == "-l" for o in options):
        args += ["--listen", "tcp:0:interface=127.0.0.1"]
    args += list(options)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reactor.spawnProcess(process, args[0], args, env=env, path=ROOT)
    return process


async def start_hub(*options: str, command: tuple[str, ...] | None = None) -> HubProcess:
    """Start the hub and wait until it listens."""
    process = spawn_hub(*options, command=command)
    await process.listening
    return process


__all__ = ["HubProcess", "spawn_hub", "start_hub"]

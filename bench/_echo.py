"""
The floor of ``bench_control``'s round trips, run as a separate process::

    python -m bench._echo PATH

listens on the UNIX socket ``PATH`` with a plain Twisted ``LineReceiver`` that writes
each line straight back, and prints ``READY``. Once its stdin is closed it prints one
JSON line, ``{"served": lines}`` (as :func:`bench.bench_listeners.stop_worker` reads
it), and exits. It stops by itself after 30 minutes in any case.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver

LIFETIME = 1800.0


class Echo(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 22
    echoed = 0

    def lineReceived(self, line: bytes) -> None:
        Echo.echoed += 1
        assert self.transport is not None
        self.transport.write(line + b"\n")


class Stdin(Protocol):
    """Stops the reactor when the benchmark closes our stdin."""

    def connectionLost(self, reason: Any = None) -> None:
        sys.stdout.write(json.dumps({"served": Echo.echoed}) + "\n")
        sys.stdout.flush()
        if reactor.running:
            reactor.stop()


def main() -> None:
    UNIXServerEndpoint(reactor, sys.argv[1]).listen(Factory.forProtocol(Echo))
    StandardIO(Stdin())
    reactor.callLater(LIFETIME, reactor.stop)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()

"""
The client side of ``bench_websocket``, run as a separate process:

    python -m bench._ws_clients PORT N MODE EXPECTED

opens ``N`` WebSocket connections to 127.0.0.1:PORT with a hand-written handshake (so
that the client costs as little as possible and is the same for both servers), subscribes
when ``MODE`` is ``ours``, prints ``READY``, then counts frames by their headers alone.
The first connection (the probe) also decodes each event and records its latency from the
``t`` the server put in it. Once every connection has ``EXPECTED`` events it prints one
JSON line of results and exits. It stops by itself after 120 s in any case.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import struct
import sys
import time

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

_HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def masked_text_frame(payload: bytes) -> bytes:
    """A client-to-server text frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


class Run:
    def __init__(self, port: int, count: int, mode: str, expected: int) -> None:
        self.port = port
        self.count = count
        self.mode = mode
        self.expected = expected
        self.open = 0
        self.done = 0
        self.latencies: list[float] = []
        self.first_event_at: float | None = None

    def opened(self) -> None:
        self.open += 1
        if self.open == self.count:
            sys.stdout.write("READY\n")
            sys.stdout.flush()

    def finished(self) -> None:
        self.done += 1
        if self.done == self.count:
            self.report()

    def report(self) -> None:
        latencies = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

        sys.stdout.write(
            json.dumps(
                {
                    "done_at": time.time(),
                    "first_event_at": self.first_event_at,
                    "p50": pct(0.50),
                    "p99": pct(0.99),
                    "samples": len(latencies),
                }
            )
            + "\n"
        )
        sys.stdout.flush()
        reactor.stop()


class Client(Protocol):
    def __init__(self, run: Run, probe: bool) -> None:
        self.run = run
        self.probe = probe
        self.buffer = b""
        self.handshaken = False
        self.events = 0
        self.skip = 1 if run.mode == "ours" else 0  # the "subscribed" frame

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        assert self.transport is not None
        self.transport.write(_HANDSHAKE.format(port=self.run.port, key=key).encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"handshake refused: {head[:80]!r}")
            self.handshaken = True
            self.buffer = rest
            if self.run.mode == "ours":
                assert self.transport is not None
                self.transport.write(masked_text_frame(b'{"type":"subscribe","event":"*"}'))
            self.run.opened()
        self.frames()

    def frames(self) -> None:
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= 2:
            length = buffer[at + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) - at < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, at + 2)
                header = 4
            elif length == 127:
                if len(buffer) - at < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, at + 2)
                header = 10
            end = at + header + length
            if end > len(buffer):
                break
            if self.skip:
                self.skip -= 1
            else:
                self.events += 1
                if self.probe:
                    now = time.time()
                    if self.run.first_event_at is None:
                        self.run.first_event_at = now
                    data = json.loads(buffer[at + header : end])["data"]
                    if data.get("paced"):
                        self.run.latencies.append(now - data["t"])
                if self.events == self.run.expected:
                    self.run.finished()
            at = end
        self.buffer = buffer[at:]


class Factory(ClientFactory):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.made = 0

    def buildProtocol(self, addr: object) -> Client:
        self.made += 1
        return Client(self.run, probe=self.made == 1)


def main() -> None:
    port, count, mode, expected = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 100)), hard))
    run = Run(port, count, mode, expected)
    factory = Factory(run)
    for _ in range(count):
        reactor.connectTCP("127.0.0.1", port, factory)
    reactor.callLater(120, reactor.stop)
    reactor.run()


if __name__ == "__main__":
    main()

"""
A stalled WebSocket client for ``bench_websocket``, run as a separate process:

    python -m bench._stalled PORT

connects to 127.0.0.1:PORT with an 8 KiB receive buffer (set before connecting, so that
the window it advertises stays small), does the handshake, subscribes to every event,
prints ``READY`` and then never reads again: the kernel buffers, then Twisted's buffer,
then the carrier's queue for it fill up on the server. It is a TCP peer of its own, apart
from the readers' process. It exits when its standard input closes (the benchmark closes
it), or after 120 s in any case.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import sys

from ._ws_clients import _HANDSHAKE, masked_text_frame

RECEIVE_BUFFER = 8192
LIFETIME = 120.0


def connect(port: int) -> socket.socket:
    """A subscribed WebSocket connection whose bytes after the handshake are never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(_HANDSHAKE.format(port=port, key=key).encode())
    head = b""
    while b"\r\n\r\n" not in head:  # bounded by the timeout and the server's answer
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the server closed the connection during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake refused: {head[:80]!r}")
    sock.sendall(masked_text_frame(b'{"type":"subscribe","event":"*"}'))
    return sock


def main() -> None:
    sock = connect(int(sys.argv[1]))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    select.select([sys.stdin], [], [], LIFETIME)  # until stdin closes, never reading sock
    sock.close()


if __name__ == "__main__":
    main()

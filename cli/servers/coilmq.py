"""coilmq on loopback: a small STOMP broker (queues and topics in memory)."""

from __future__ import annotations

import socket
import sys

from cli.servers.ports import LOOPBACK
from cli.servers.process import PortServer, find_binary

# STOMP 1.1: coilmq accepts a 1.2 CONNECT only when its host header is the machine's FQDN.
_CONNECT = b"CONNECT\naccept-version:1.1\nhost:/\n\n\x00"
_DISCONNECT = b"DISCONNECT\n\n\x00"

# coilmq 1.1 takes a heart-beat (a lone EOL between frames, which clients send as soon as the
# broker asks for them) for the start of a frame and then never parses another: drop EOLs that
# arrive between frames, then run coilmq's own entry point (``coilmq`` on PATH is the same).
_RUN = """
from coilmq.util.frames import FrameBuffer
_append = FrameBuffer.append
def append(self, data):
    if self._pointer == self._buffer.getbuffer().nbytes:
        data = data.lstrip(b"\\r\\n")
    if data:
        _append(self, data)
FrameBuffer.append = append
from coilmq.start import main
main()
"""


class CoilmqServer(PortServer):
    """``coilmq`` (from the coilmq wheel), a STOMP 1.0-1.2 broker without authentication.

    A STOMP 1.2 client must send the machine's FQDN (``socket.getfqdn()``) as its ``host``
    header (the virtual host): coilmq refuses any other.
    """

    kind = "coilmq"
    binary = "coilmq"


    @property
    def url(self) -> str:
        return f"stomp://{LOOPBACK}:{self.port}"

    def _argv(self) -> list[str]:
        find_binary(self.binary)  # a clear error naming the wheel when coilmq is missing
        return [sys.executable, "-c", _RUN, "-b", LOOPBACK, "-p", str(self.port),
                *self.extra_args]

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1.0) as sock:
                sock.sendall(_CONNECT)
                answer = sock.recv(64).startswith(b"CONNECTED")
                sock.sendall(_DISCONNECT)
                return answer
        except OSError:
            return False

    def _describe(self) -> str:
        return f"coilmq@{LOOPBACK}:{self.port}"

"""A destination for deliveries in scenarios, tests and demos: a threaded HTTP server on
loopback that records what it gets."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Sink:
    """A threaded HTTP server answering every POST with `status` after `delay_s`, recording
    each request. Both can be changed while it runs (a destination failing, then fixed)."""

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                time.sleep(sink.delay_s)
                status = sink.status
                with sink._lock:
                    sink.received.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body, "status": status})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def delivered_ids(self) -> set[str]:
        """Delivery ids answered with a 2xx."""
        with self._lock:
            return {r["headers"].get("X-Whplane-Delivery", "") for r in self.received
                    if r["status"] < 300}

    def attempts(self, delivery_id: str) -> int:
        with self._lock:
            return sum(r["headers"].get("X-Whplane-Delivery") == delivery_id
                       for r in self.received)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A recording HTTP server for what a real InfluxDB 1.x cannot show: the v2/v3 request shapes
and scripted answers (429 with Retry-After, 5xx, 413) on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Recorded", "RecordingServer", "Reply", "sequence"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def lines(self) -> int:
        """Number of newline-terminated lines in the body."""
        return self.body.count(b"\n")


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: status, headers, body, and how long to wait before answering."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0


Responder = Callable[[Recorded], Reply]


def sequence(*replies: Reply | int) -> Responder:
    """Answer with `replies` in order (an int is a bare status), then 204 forever."""
    script = [r if isinstance(r, Reply) else Reply(r) for r in replies]
    lock = threading.Lock()

    def respond(_: Recorded) -> Reply:
        with lock:
            return script.pop(0) if script else Reply()

    return respond


class RecordingServer:
    """A threaded HTTP/1.1 (keep-alive) server on a free loopback port."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.respond: Responder = lambda _: Reply()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                rec = Recorded(
                    method=self.command,
                    path=split.path,
                    query=dict(parse_qsl(split.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                    at=time.monotonic(),
                )
                server.requests.append(rec)
                reply = server.respond(rec)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (requests being answered are abandoned)."""
        self._server.shutdown()
        self._server.server_close()

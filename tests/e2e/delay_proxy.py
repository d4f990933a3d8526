"""A TCP proxy that can hold back a database's replies: while `delay_s` is set, the reply to
anything a client sends arrives `delay_s` late. A connection that sends nothing (PostgreSQL's
LISTEN connection, waiting for notifications) is not delayed, which is how a lookup's reply
ends up arriving after a change notification sent later. While `mute_notifications` is set,
PostgreSQL's notifications to a connection that LISTENs are dropped: the registry's change
feed is absent while its connection stays alive (its pings are answered)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from services import free_port

__all__ = ["DelayProxy", "delay_proxy"]


class DelayProxy:
    """Listens on 127.0.0.1:`port` and forwards to `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0
        self.mute_notifications = False
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._open: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """`url` (a postgresql:// URL of the target) through the proxy."""
        return url.replace(f":{self.target_port}/", f":{self.port}/")

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._open += [client, upstream]
                # Replies wait until this monotonic time; whether the client LISTENs.
                held = [0.0, 0.0]
                threading.Thread(
                    target=self._up, args=(client, upstream, held), daemon=True
                ).start()
                threading.Thread(
                    target=self._down, args=(upstream, client, held), daemon=True
                ).start()

    def _up(self, src: socket.socket, dst: socket.socket, held: list[float]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.delay_s:
                    held[0] = time.monotonic() + self.delay_s
                if b"LISTEN " in data:
                    held[1] = 1.0
                dst.sendall(data)
        _close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, held: list[float]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                # A chunk of NotificationResponse messages ('A'), unasked for: dropped whole.
                if self.mute_notifications and held[1] and data[:1] == b"A":
                    continue
                wait = held[0] - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        _close(src, dst)

    def close(self) -> None:
        """Close the listener and every connection, shut down first: a socket closed while a
        thread waits in recv() on it would stay open, and its client would hang silent."""
        _close(*self._open)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


@contextlib.contextmanager
def delay_proxy(target_port: int) -> Iterator[DelayProxy]:
    """A DelayProxy, closed at the end."""
    proxy = DelayProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()

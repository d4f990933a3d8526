"""What `Client` and `AsyncClient` share: their options, the batcher and the latest report."""

from __future__ import annotations

from tidegate.client.batcher import Batcher
from tidegate.client.report import Report


class ClientBase:
    """The options of both clients, validated once; subclasses open their HTTP client
    and lock.

    `url` is the gateway's base URL; `batch_size` messages per request (1..100); `gzip` bodies;
    `timeout` seconds per request (connect, send, read); `max_retry_s` how long one batch may be
    retried from its first send before what is still refused is reported."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 100,
        gzip: bool = True,
        timeout: float = 10.0,
        max_retry_s: float = 60.0,
    ) -> None:
        self._batcher = Batcher(batch_size=batch_size, gzip=gzip, max_retry_s=max_retry_s)
        self.last_report: Report | None = None
        """The report of the latest `flush` (also the one the context manager's exit made)."""
        self._open(url, timeout)

    def _open(self, url: str, timeout: float) -> None:
        """Create the HTTP client and the lock of this flavour."""
        raise NotImplementedError

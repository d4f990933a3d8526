"""uvicorn's server, with a start-up line that says which listener it is."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import uvicorn

from tidegate import logs


class NamedServer(uvicorn.Server):
    """A uvicorn server whose start-up line names its listener (`public`, `ops`, `worker`):
    uvicorn's own "Uvicorn running on ..." line looks the same for each of the two listeners
    a gateway runs."""

    def __init__(self, config: uvicorn.Config, listener: str) -> None:
        super().__init__(config)
        self.listener = listener

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve; on sockets bound beforehand (`startup.listen`) uvicorn logs no line, so this
        does."""
        await super().startup(sockets)
        if sockets is not None and self.started:
            self._log_started_message(sockets)

    def _log_started_message(self, listeners: Sequence[socket.SocketType]) -> None:
        scheme = "https" if self.config.is_ssl else "http"
        for sock in listeners:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logs.log("listening", listener=self.listener, url=f"{scheme}://{shown}:{port}")

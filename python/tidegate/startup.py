"""What a failed start says: one `start_failed` line naming what failed and where, and exit 3.

The listeners are bound here, before anything starts, so a port in use stops the process
before it opens its registry or log; the registry's opening says which database it could not
reach (`store.open_registry`). The traceback is logged too at `--log-level debug` only.
"""

from __future__ import annotations

import logging
import socket

from tidegate import logs

# uvicorn's STARTUP_FAILURE: the status it exits with when the app's start (the lifespan)
# fails, so every failed start of `serve` and `worker` exits with it.
EXIT_START_FAILED = 3


class StartupFailed(Exception):
    """A start that cannot go on; the message names what failed and where, on one line."""


def reason(exc: BaseException) -> str:
    """An OS error's reason as a person would say it ("connection refused"), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def explain(exc: BaseException) -> str:
    """One line saying why the start failed."""
    text = str(exc) if isinstance(exc, StartupFailed) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def report(exc: BaseException) -> None:
    """Log the one `start_failed` line (with the traceback at debug level)."""
    debug = logs.LOGGER.isEnabledFor(logging.DEBUG)
    logs.log("start_failed", level="error", exc=exc if debug else None, error=explain(exc))


def listen(host: str, port: int, listener: str) -> socket.socket:
    """A socket bound to `host:port` for `listener` ("public", "ops", "worker"); raises
    StartupFailed naming both when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise StartupFailed(f"{listener} listener cannot bind {where}: {reason(exc)}") from exc
    # Its start-up line ("listening", with the URL) is NamedServer's, once it serves.
    return sock

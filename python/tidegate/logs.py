"""Structured logs: one JSON object per line on stderr, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

LOGGER = logging.getLogger("tidegate")
REDACTED = "[redacted]"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Field names that may carry a credential; `idempotency_key` and the like are not secrets.
_SECRET_NAME = re.compile(
    r"token|api[_-]?key|secret|password|passwd|authorization|credential|cookie", re.IGNORECASE
)
# `scheme://user:password@host`: keep the user, drop the password.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_RESERVED = frozenset({"ts", "level", "event", "logger"})
# The sink's HTTP client logs one "HTTP Request" line per flush at info: below warning they are
# noise, unless debug was asked for.
_QUIET = ("httpx", "httpcore")


def redact(name: str, value: object) -> object:
    """The value to log for field `name`: secrets replaced, URL passwords masked."""
    if _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, str) and "@" in value:
        return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    if isinstance(value, Mapping):
        return {str(k): redact(str(k), v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    """`{"ts","level","event",...fields}` per record; fields come from `log()` or `extra`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single JSON line."""
        t = time.gmtime(record.created)
        ms = int(record.msecs)
        out: dict[str, Any] = {
            "ts": f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{ms:03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        if record.name != LOGGER.name:
            out["logger"] = record.name
        fields: Mapping[str, object] = getattr(record, "fields", {})
        for name, value in fields.items():
            key = f"field_{name}" if name in _RESERVED else name
            out[key] = redact(name, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # default=str: a stray Path or datetime must not lose the whole line.
        return orjson.dumps(out, default=str).decode()


class _StartFailureEcho(logging.Filter):
    """Drops uvicorn's own report of a failed start (the lifespan's traceback as a message, then
    "Application startup failed. Exiting."): tidegate's `start_failed` line has said it, in one
    line. At debug level, and once the app has started (a failed stop keeps its traceback),
    they pass."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False

    def filter(self, record: logging.LogRecord) -> bool:
        """False for those two records."""
        if record.name != "uvicorn.error" or self._started:
            return True
        text = str(record.msg)
        if text == "Application startup complete.":
            self._started = True
        if record.levelno < logging.ERROR or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        return not (
            text == "Application startup failed. Exiting."
            or text.startswith("Traceback (most recent call last):")
        )


class StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at emit time (test capture, reassigned streams)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.addFilter(_StartFailureEcho())

    def emit(self, record: logging.LogRecord) -> None:
        """Write one formatted record and a newline."""
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure(level: str = "info") -> None:
    """Send every logger (tidegate, uvicorn, asyncio) to stderr as JSON at `level`."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    for name in _QUIET:
        logging.getLogger(name).setLevel(_quiet_level(level))


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """A `log_config` for uvicorn that routes its loggers through `JsonFormatter`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": f"{__name__}.StderrHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            **{name: {"level": logging.getLevelName(_quiet_level(level))} for name in _QUIET},
        },
    }


def _quiet_level(level: str) -> int:
    return max(logging.WARNING, _LEVELS[level])


def log(
    event: str, *, level: str = "info", exc: BaseException | None = None, **fields: object
) -> None:
    """Log one event with its fields (and `exc`'s traceback); credential-like fields are
    redacted."""
    lvl = _LEVELS[level]
    if LOGGER.isEnabledFor(lvl):
        LOGGER.log(lvl, event, exc_info=exc, extra={"fields": fields})

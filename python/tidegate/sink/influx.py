"""InfluxDB's write APIs (v1, v2, v3) and what a refusal means: retry later, halve the body
(413), or keep it in a dead-letter LP file with the error, counting partial writes honestly."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import re
import time
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from tidegate._core import append_file, valid_tenant
from tidegate.config import INFLUX_API_CHOICES, Config
from tidegate.logs import log
from tidegate.sink.target import Counts, Failure, FlushHook, Pending, clip, database, describe

# Statuses after which the same body may succeed later. A bad token or a missing database
# (404; created first on v1 unless TIDEGATE_INFLUX_CREATE_DB=0) must not lose data, so
# 401/403/404 wait for someone to fix it; every other 4xx is the body's fault and is
# dead-lettered.
_RETRYABLE_4XX = frozenset({401, 403, 404, 408, 429})
_DROPPED = re.compile(r"dropped=(\d+)")
_DEAD_LETTER_ERROR_CHARS = 4000
# 1.x and 2.x name the first conflicting field of a refused body (3.x words it otherwise).
_TYPE_CONFLICT = re.compile(
    r'input field "(.+?)" on measurement "(.+?)" is type \w+, already exists as type (\w+)'
)


_API_OF_MAJOR = {"1.": "v1", "2.": "v2", "3.": "v3"}


class FieldLearner(Protocol):
    """What the sink tells the core's FieldTypes: a field's type as InfluxDB has it."""

    def learn(self, tenant: str, measurement: str, field: str, field_type: str) -> bool: ...


def type_conflicts(text: str) -> list[tuple[str, str, str]]:
    """`(measurement, field, existing type)` of each type conflict an error body names."""
    with contextlib.suppress(ValueError):
        doc = orjson.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            text = doc["error"]
    return [(m, f, t) for f, m, t in _TYPE_CONFLICT.findall(text)]


def without_userinfo(url: str) -> str:
    """`url` without a `user:password@` part."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None when absent/bad."""
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def rejected_lines(status: int, text: str, lines: int) -> int | None:
    """How many of a refused body's `lines` the database did not write; None if it won't say.

    InfluxDB 1.x: 400 `partial write: ... dropped=N`, and for unparsable lines one `unable to
    parse` each (with `dropped=0`); 2.x: 422 with `dropped=N`; 3.x: 400 `partial write of line
    protocol occurred` with one `data` entry per refused line. Any other refusal wrote nothing.
    (1.x names only the type-conflict drops when a body also has unparsable lines; the core
    never encodes those, so that undercount needs a hand-made body.)
    """
    if status != 422 and "partial write" not in text:
        return lines
    with contextlib.suppress(ValueError):
        doc = orjson.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            return min(lines, len(doc["data"]))
    dropped = _DROPPED.findall(text)
    unparsed = text.count("unable to parse")
    if not dropped and not unparsed:
        return None
    return min(lines, (int(dropped[-1]) if dropped else 0) + unparsed)


def split_body(body: bytes, lines: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """Halve a body of `lines` (>= 2) newline-terminated lines at a line boundary."""
    half = lines // 2
    cut = -1
    for _ in range(half):
        cut = body.index(b"\n", cut + 1)
    return (body[: cut + 1], half), (body[cut + 1 :], lines - half)


class InfluxTarget:
    """Writes to InfluxDB through the v1, v2 or v3 write API, with the failure policy."""

    def __init__(
        self,
        cfg: Config,
        client: httpx.AsyncClient,
        counts: Counts,
        observe: FlushHook,
        field_types: FieldLearner | None = None,
    ) -> None:
        if cfg.influxdb_url is None or cfg.influx_api not in INFLUX_API_CHOICES:
            raise ValueError(
                "an InfluxDB target needs influxdb_url and influx_api auto, v1, v2 or v3"
            )
        self._cfg = cfg
        self.body_lines = cfg.influx_max_body_lines
        self._client = client
        self._counts = counts
        self._observe = observe
        self._field_types = field_types
        url = cfg.influxdb_url.rstrip("/")
        if cfg.influxdb_token:
            # httpx would turn a URL's user:password into Basic auth over the token header.
            url = without_userinfo(url)
        self._url = url
        self._query_url = f"{url}/query"
        self._auto = cfg.influx_api == "auto"
        self._api: str | None = None
        self._write_url = ""
        self._auth: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        if not self._auto:
            self._use(cfg.influx_api)
        self._dead_letter_root = cfg.data_dir / "deadletter"

    def _use(self, api: str) -> None:
        """Write through `api` (v1, v2 or v3) from now on."""
        url = self._url
        if api == "v1":
            self._write_url = f"{url}/write"
            scheme = "Token"
        elif api == "v2":
            self._write_url = f"{url}/api/v2/write"
            scheme = "Token"
        else:
            self._write_url = f"{url}/api/v3/write_lp"
            scheme = "Bearer"
        token = self._cfg.influxdb_token
        self._auth = {"Authorization": f"{scheme} {token}"} if token else {}
        self._headers = {**self._auth, "Content-Type": "text/plain; charset=utf-8"}
        self._api = api

    async def detect(self) -> Failure | None:
        """INFLUX_API=auto: choose the write API by the version `/ping` names
        (`X-Influxdb-Version`, or 3.x's JSON `version`): 1.x → v1, 2.x → v2, 3.x → v3. Logged
        when the choice is made or changes; a Failure (retried) when the server does not say."""
        # v3 asks for the token on /ping too; 1.x and 2.x ignore it there.
        token = self._cfg.influxdb_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            resp = await self._client.get(f"{self._url}/ping", headers=headers)
        except httpx.TransportError as exc:
            return Failure(f"GET /ping: {describe(exc)}")
        version = resp.headers.get("x-influxdb-version", "")
        if not version:
            with contextlib.suppress(ValueError, AttributeError):
                version = str(orjson.loads(resp.content).get("version", ""))
        api = _API_OF_MAJOR.get(version.lstrip("v")[:2])
        if api is None:
            return Failure(
                f"GET /ping: HTTP {resp.status_code}, InfluxDB version {version!r} is not 1.x, "
                "2.x or 3.x; set INFLUX_API"
            )
        if api != self._api:
            log("sink_influx_api", api=api, version=version, url=without_userinfo(self._url))
            if api == "v2" and not self._cfg.influxdb_org:
                log("sink_influxdb_org_missing", level="error", detail="set INFLUXDB_ORG for 2.x")
        self._use(api)
        return None

    @property
    def api(self) -> str | None:
        """The write API in use; None while INFLUX_API=auto has not found it yet."""
        return self._api

    def _params(self, tenant: str) -> dict[str, str]:
        db = database(tenant)
        if self._api == "v1":
            return {"db": db, "precision": "ns"}
        if self._api == "v2":
            return {"org": self._cfg.influxdb_org or "", "bucket": db, "precision": "ns"}
        return {"db": db, "precision": "nanosecond"}

    async def deliver(self, tenant: str, pending: Pending) -> Failure | None:
        """Write the pending pieces in order. Written and dead-lettered pieces leave `pending`;
        on a retryable failure the rest stays there and the failure is returned."""
        created = redetected = False
        if self._api is None:
            failure = await self.detect()
            if failure is not None:
                return failure
        while pending:
            body, lines = pending[0]
            started = time.perf_counter()
            try:
                resp = await self._client.post(
                    self._write_url,
                    params=self._params(tenant),
                    content=body,
                    headers=self._headers,
                )
            except httpx.TransportError as exc:
                self._observe(tenant, lines, time.perf_counter() - started, False)
                return Failure(describe(exc))
            status = resp.status_code
            self._observe(tenant, lines, time.perf_counter() - started, resp.is_success)
            if resp.is_success:
                self._counts.writes_ok += lines
                self._counts.flushes += 1
                pending.popleft()
                continue
            text = resp.text
            if status == 413 and lines > 1:
                pending.popleft()
                pending.extendleft(reversed(split_body(body, lines)))
                continue
            if (
                status == 404
                and self._api == "v1"
                and self._cfg.influx_create_db
                and not created
                and "database not found" in text
            ):
                failure = await self._create_database(tenant)
                if failure is not None:
                    return failure
                created = True
                continue
            if status == 404 and self._auto and not redetected:
                # The server behind the URL may have changed (an upgrade from 1.x to 2.x).
                before = self._api
                failure = await self.detect()
                if failure is not None:
                    return failure
                redetected = True
                if self._api != before:
                    continue
            if status == 404:
                # Held, not dead-lettered: loud, since only an operator can fix it.
                log(
                    "sink_database_missing",
                    level="error",
                    tenant=tenant,
                    database=database(tenant),
                    lines=sum(n for _, n in pending),
                    error=clip(text),
                )
            if status in _RETRYABLE_4XX or not 400 <= status < 500:
                return Failure(f"HTTP {status}: {clip(text)}", _retry_after(resp))
            self._learn_types(tenant, text)
            try:
                await self._dead_letter(tenant, body, lines, status, text)
            except OSError as exc:
                # Keeping the body beats losing it: the retry re-sends it, and InfluxDB keeps one
                # point per series and timestamp, so its good lines are not doubled.
                return Failure(f"dead-letter file: {describe(exc)}")
            pending.popleft()
        return None

    def close(self) -> None:
        """Nothing to release: the HTTP client is its owner's (the sink's, or replay's)."""

    async def load_field_types(self) -> None:
        """v1: teach FieldTypes the types InfluxDB already holds (`SHOW FIELD KEYS` of each
        tenant database), so that the first write after a start does not meet a type another
        writer chose. A field InfluxDB lists with two types (different shards) is skipped. A
        failure is logged and start-up goes on: the conflict errors still teach the types."""
        if self._field_types is None:
            return
        if self._api is None:
            failure = await self.detect()
            if failure is not None:
                log("field_types_not_loaded", level="warning", error=failure.error)
                return
        if self._api != "v1":
            return
        learned = 0
        try:
            prefix = database("")
            for db in await self._databases():
                tenant = db.removeprefix(prefix)
                if not db.startswith(prefix) or not valid_tenant(tenant):
                    continue
                types: dict[tuple[str, str], set[str]] = {}
                for measurement, field, field_type in await self._field_keys(database(tenant)):
                    types.setdefault((measurement, field), set()).add(field_type)
                for (measurement, field), kinds in types.items():
                    if len(kinds) == 1:
                        learned += self._field_types.learn(tenant, measurement, field, *kinds)
        except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
            log("field_types_not_loaded", level="warning", error=describe(exc))
            return
        log("field_types_loaded", fields=learned)

    async def _query(self, db: str | None, q: str) -> list[dict[str, Any]]:
        """The series of an InfluxQL query; ValueError when InfluxDB reports an error."""
        params = {"q": q, **({"db": db} if db else {})}
        resp = await self._client.get(self._query_url, params=params, headers=self._auth)
        doc = orjson.loads(resp.content)
        result = doc["results"][0]
        if not resp.is_success or "error" in result:
            raise ValueError(f"{q}: HTTP {resp.status_code}: {clip(resp.text)}")
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    async def _databases(self) -> list[str]:
        return [str(v[0]) for s in await self._query(None, "SHOW DATABASES") for v in s["values"]]

    async def _field_keys(self, db: str) -> list[tuple[str, str, str]]:
        out = []
        for s in await self._query(db, "SHOW FIELD KEYS"):
            for field, field_type in s.get("values", []):
                out.append((str(s["name"]), str(field), str(field_type)))
        return out

    def _learn_types(self, tenant: str, text: str) -> None:
        """Tell FieldTypes what a type conflict reveals, so the edge rejects the next
        conflicting item before its 202 instead of this sink dead-lettering it."""
        if self._field_types is None:
            return
        for measurement, field, field_type in type_conflicts(text):
            with contextlib.suppress(ValueError):
                if self._field_types.learn(tenant, measurement, field, field_type):
                    log(
                        "field_type_learned",
                        tenant=tenant,
                        measurement=measurement,
                        field=field,
                        field_type=field_type,
                    )

    async def _create_database(self, tenant: str) -> Failure | None:
        db = database(tenant)
        try:
            resp = await self._client.post(
                self._query_url, data={"q": f'CREATE DATABASE "{db}"'}, headers=self._auth
            )
        except httpx.TransportError as exc:
            return Failure(f"CREATE DATABASE {db}: {describe(exc)}")
        # 1.x answers 200 with {"results":[{"error":...}]} when the statement itself fails.
        if not resp.is_success or '"error"' in resp.text:
            return Failure(
                f"CREATE DATABASE {db}: HTTP {resp.status_code}: {clip(resp.text)}",
                _retry_after(resp),
            )
        log("sink_database_created", database=db)
        return None

    async def _dead_letter(
        self, tenant: str, body: bytes, lines: int, status: int, text: str
    ) -> None:
        rejected = rejected_lines(status, text, lines)
        told = "an unknown number" if rejected is None else str(rejected)
        note = (
            f"# {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} HTTP {status}: {told} of {lines} lines "
            f"refused: {clip(text, _DEAD_LETTER_ERROR_CHARS)}\n"
        )
        path = self._dead_letter_root / f"{database(tenant)}.lp"
        await asyncio.to_thread(append_file, path, note.encode() + body)
        counts = self._counts
        counts.dead_lettered += lines
        if rejected is None:
            counts.writes_uncertain += lines
        else:
            counts.writes_err += rejected
            counts.writes_ok += lines - rejected
        counts.last_error = f"{tenant}: HTTP {status}: {clip(text)}"
        log(
            "sink_dead_lettered",
            level="error",
            tenant=tenant,
            status=status,
            lines=lines,
            rejected=rejected,
            path=str(path),
            error=clip(text),
        )

"""A bug in the compiled core (a Rust panic) answers JSON 500, counted and logged once.

PyO3 raises a panic as `PanicException`, a BaseException that Starlette's 500 handler does not
see. The panic comes from `_core._test_panic`, which only a build with the cargo feature
`test-panic` has (`make build`, so `make test` and .ci/run; the release wheel has not).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from tidegate import _core, logs
from tidegate.config import Config
from tidegate.http.app import create_app

BODY = {
    "messages": [
        {
            "tenant_id": "t1",
            "device_id": "d1",
            "msg_type": "telemetry",
            "provision_token": "tok",
            "site_id": "s1",
        }
    ]
}


def test_a_panic_in_the_core_is_a_counted_json_500_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    panic = getattr(_core, "_test_panic", None)
    assert panic is not None, "the core lacks _test_panic: build it with `make build`"

    def parse_batch(*args: Any) -> Any:
        panic("a span is a range of this batch's strings")

    monkeypatch.setattr(_core, "parse_batch", parse_batch)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    logs.configure("info")
    app = create_app(Config(data_dir=tmp_path, core="rust"))
    gw = app.state.gateway

    async def run() -> tuple[httpx.Response, str]:
        await gw.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                r = await c.post("/ingest/v1/batch", json=BODY)
                return r, gw.metrics.render().decode()
        finally:
            await gw.stop()

    r, metrics = asyncio.run(run())
    assert (r.status_code, r.json()) == (500, {"detail": "internal server error"})
    assert r.headers["content-type"] == "application/json"
    assert 'tidegate_responses_total{route="batch",status="500"} 1.0' in metrics
    out, err = capfd.readouterr()
    # Once: the JSON line, not also Rust's default panic message on stderr.
    assert "panicked" not in out + err
    lines = [json.loads(line) for line in err.splitlines()]
    [panic_line] = [line for line in lines if line["event"] == "core_panic"]
    assert panic_line["level"] == "error"
    assert panic_line["route"] == "batch"
    assert panic_line["error"] == "a span is a range of this batch's strings"
    assert "PanicException" in panic_line["exc"]
    assert [line["event"] for line in lines if line["level"] == "error"] == ["core_panic"]

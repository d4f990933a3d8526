"""The ops listener's live page, GET /ui, rendered by headless Chromium against a real gateway:
the numbers it shows are /ingest/v1/stats' numbers, and a screenshot is taken."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import GatewayProcess, provision
from provisioning import poll

Start = Callable[..., GatewayProcess]

CHROMIUM_HINT = "headless Chromium comes with Debian's chromium package: run `make services`"
HOLD = {"INFLUX_FLUSH_INTERVAL_MS": "600000", "INFLUX_BATCH_SIZE": "100000"}
# Page time (virtual: Chromium runs the timers without waiting) for several polls.
BUDGET_MS = "4000"
POLL_MS = 500


def chromium(*args: str) -> str:
    """Run headless Chromium; its stdout."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(f"chromium is not installed: {CHROMIUM_HINT}", pytrace=False)
    out = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--virtual-time-budget={BUDGET_MS}",
         *args],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


class Page(HTMLParser):
    """What the rendered page shows: `data-stat` texts, rows of the reasons and tenants tables."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, str] = {}
        self.rates: dict[str, str] = {}
        self.rows: dict[tuple[str, str], list[str]] = {}  # ("reason"|"tenant", key) -> cells
        self.polls = 0
        self._into: tuple[dict[str, str], str] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.polls = int(a.get("data-polls") or 0)
        if a.get("data-stat"):
            self._into = (self.stats, a["data-stat"] or "")
        elif a.get("data-rate"):
            self._into = (self.rates, a["data-rate"] or "")
        for kind in ("reason", "tenant"):
            key = a.get(f"data-{kind}")
            if tag == "tr" and key is not None:
                self._row = self.rows.setdefault((kind, key), [])
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._into is not None:
            target, key = self._into
            target[key] = target.get(key, "") + data
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("div", "span", "td"):
            self._into = None
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._row = None


def shown(value: Any) -> str:
    """A stats value as the page writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def get(stats: dict[str, Any], path: str) -> Any:
    out: Any = stats
    for key in path.split("."):
        out = out[key]
    return out


def test_the_page_shows_the_stats_numbers_and_a_screenshot(gateway: Start, tmp_path: Path) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    provision(gw, "t2", "d9", "s9", token="tok-d9")
    t1 = {"tenant_id": "t1", "device_id": "d1", "provision_token": "tok-d1", "site_id": "s1"}
    t2 = {"tenant_id": "t2", "device_id": "d9", "provision_token": "tok-d9", "site_id": "s9"}
    base = {"msg_type": "telemetry", "metrics": {"temp": 21.5}}
    items = [
        {**base, **t1},
        {**base, **t1},
        {**base, **t2},
        {**base, **t2, "provision_token": "bad"},
        {**base, **t1, "msg_type": "bogus"},
    ]
    r = gw.client().post("/ingest/v1/batch", json={"messages": items})
    assert (r.status_code, r.json()["accepted"]) == (202, 3)
    assert gw.client().get("/ui").status_code == 404  # the ops listener only

    page_url = f"{gw.ops_url}/ui?interval_ms={POLL_MS}"
    page = Page()
    page.feed(chromium("--dump-dom", page_url))
    stats = gw.stats()

    assert page.polls >= 3
    assert page.stats, "the page rendered no numbers"
    for path, text in page.stats.items():
        if path == "nats_published":  # NATS mode only
            assert text == "n/a"
            continue
        assert text == shown(get(stats, path)), path
    assert page.stats["accepted"] == "3"
    assert page.stats["rejected_total"] == "2"
    # No message arrived between the polls.
    assert page.rates == {"accepted": "0", "rejected_total": "0"}
    assert stats["rejected"] == {"INVALID_MSG_TYPE": 1, "UNAUTHORIZED": 1}
    assert {k: v for k, v in page.rows.items() if k[0] == "reason"} == {
        ("reason", reason): [reason, "0", shown(n)] for reason, n in stats["rejected"].items()
    }
    buffers = stats["buffer_depth"]
    for tenant in ("t1", "t2"):
        cells = page.rows[("tenant", tenant)]
        depth = buffers["tenants"][tenant]
        counted = buffers["tenants_counted_bytes"][tenant]
        share = 100 * counted / buffers["tenant_max_bytes"]
        assert cells == [
            tenant,
            shown(depth["lines"]),
            shown(depth["bytes"]),
            f"{shown(counted)} ({share:.1f}%)",
            "ok",
        ]

    html = httpx.get(page_url, timeout=10).text
    assert "http://" not in html and "https://" not in html  # no external asset

    screenshot = tmp_path / "ui.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1280,1000", page_url)
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_rates_show_the_messages_arriving_between_two_polls(gateway: Start) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1", rps=100000, burst=100000)
    item = {"tenant_id": "t1", "device_id": "d1", "provision_token": "tok-d1", "site_id": "s1",
            "msg_type": "telemetry", "metrics": {"temp": 21.5}}  # fmt: skip
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            while not stop.is_set():
                c.post("/ingest/v1/batch", json={"messages": [item, {**item, "msg_type": "x"}]})

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        # The page's polls must fall inside the traffic: wait for its first message (a fresh
        # gateway's first request looks its device up and claims its field first).
        poll(gw.stats, lambda stats: stats["accepted"] > 0, wait_s=30)
        # Chromium runs the page's timers in virtual time: two polls "500 ms" apart may be a
        # few real milliseconds apart, with no request finished between them. Four senders
        # make that unlikely; a page that still saw none is loaded again (at most 3 times).
        for _ in range(3):
            page = Page()
            page.feed(chromium("--dump-dom", f"{gw.ops_url}/ui?interval_ms={POLL_MS}"))
            if float(page.rates.get("accepted", "0").replace(",", "")) > 0:
                break
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert page.polls >= 2
    # One accepted and one rejected per request: both rates are positive, and equal.
    accepted = float(page.rates["accepted"].replace(",", ""))
    rejected = float(page.rates["rejected_total"].replace(",", ""))
    assert accepted == rejected > 0
    reason = page.rows[("reason", "INVALID_MSG_TYPE")]
    assert float(reason[1].replace(",", "")) == rejected

"""What deploy/ ships for operators: Prometheus alert rules and a Grafana dashboard that name
only metrics a running gateway exports, and rules that Prometheus' own checker accepts."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway import GatewayProcess, poll, provision
from prometheus_client.parser import text_string_to_metric_families
from services import NatsServer
from test_nats_stream import set_up
from tidegate.config import Config

Start = Callable[..., GatewayProcess]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tidegate.json"
PROMTOOL_HINT = "promtool comes with Debian's prometheus package: run `make services`"
METRIC = re.compile(r"\btidegate_[a-z0-9_]+")


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(f"promtool is not installed: {PROMTOOL_HINT}", pytrace=False)
    return exe


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return exprs


def exported_names(text: str) -> set[str]:
    """Every family and sample name of a /metrics exposition."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture
def exports(gateway: Start, nats_server: NatsServer) -> Iterator[set[str]]:
    """The names a direct-mode gateway and a NATS-mode edge export (NATS metrics exist only in
    NATS mode), after one message went through so the labelled histograms have their series."""
    names: set[str] = set()
    # The streams as a worker creates them: an edge may only publish.
    asyncio.run(set_up(nats_server))
    for mode in ("direct", "nats"):
        nats = {"TIDEGATE_MODE": "nats", **nats_server.edge_env} if mode == "nats" else {}
        gw = gateway({"INFLUX_FLUSH_INTERVAL_MS": "50", **nats})
        provision(gw, "t1", "d1", "s1", token="tok-d1")
        if nats:
            poll(lambda gw=gw: gw.stats()["nats_connected"], until=lambda n: n == 1)
        item = {"tenant_id": "t1", "device_id": "d1", "msg_type": "telemetry",
                "provision_token": "tok-d1", "site_id": "s1", "metrics": {"temp": 1.0}}  # fmt: skip
        assert gw.client().post("/ingest/v1/batch", json={"messages": [item]}).status_code == 202
        if not nats:
            poll(lambda gw=gw: gw.stats()["writes_ok"], until=lambda n: n == 1)
        text = gw.metrics()
        check = subprocess.run(
            [promtool(), "check", "metrics"], input=text, text=True, capture_output=True
        )
        assert (check.returncode, check.stdout + check.stderr) == (0, ""), "promtool metrics lint"
        names |= exported_names(text)
    yield names


def test_alert_rules_pass_promtool_check_rules() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alert_rules_fire_on_their_unit_tests() -> None:
    # alerts_test.yml: the sink failing for 2 minutes, buffers at 90%, NATS lost, dead letters,
    # a third of the messages rejected, and the alerts (labels, annotations) they raise.
    tests = ALERTS.with_name("alerts_test.yml")
    out = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_cover_the_failures_an_operator_is_paged_for() -> None:
    text = ALERTS.read_text()
    for metric in (
        "tidegate_sink_failing",
        "tidegate_buffer_bytes",
        "tidegate_wal_bytes",
        "tidegate_registry_unavailable",
        "tidegate_nats_connected",
        "tidegate_sink_dead_lettered_total",
        'tidegate_messages_total{outcome="rejected"}',
    ):
        assert metric in text, metric


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "tidegate"
    assert [v["name"] for v in doc["templating"]["list"]] == ["datasource", "instance"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule, Grafana's variables given values.
    values = {"$__rate_interval": "5m", "$instance": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # a Grafana query, not PromQL
        for name, value in values.items():
            expr = expr.replace(name, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    assert len(rules) > 20
    # JSON is YAML: the rule file needs no YAML writer.
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_the_rules_and_dashboard_name_is_exported(exports: set[str]) -> None:
    named = set(METRIC.findall(ALERTS.read_text()))
    for expr in dashboard_exprs():
        named |= set(METRIC.findall(expr))
    assert len(named) > 15
    assert sorted(named - exports) == []


# --- packaging: the systemd unit, the container build and compose files ------------------------

UNIT = DEPLOY / "tidegate.service"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD_HINT = "systemd-analyze comes with Debian's systemd package"


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(f"systemd-analyze is not installed: {SYSTEMD_HINT}", pytrace=False)
    text = UNIT.read_text()
    assert "\nExecStart=/opt/tidegate/bin/tidegate serve\n" in text
    # verify wants the command to exist: this interpreter's tidegate stands in for /opt's.
    unit = tmp_path / "tidegate.service"
    unit.write_text(
        text.replace("/opt/tidegate/bin/tidegate serve", f"{sys.executable} -m tidegate serve")
    )
    out = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True)
    # Unknown keys are only warned about: any output is a failure.
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
    for option in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
                   "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "StateDirectory=tidegate",
                   "RestartPreventExitStatus=2"):  # fmt: skip
        assert option in text, option


def test_container_files_set_only_variables_tidegate_reads() -> None:
    known = {name for name, _ in Config.variables()}
    compose = COMPOSE.read_text()
    services = compose.split("\nservices:\n")[1].split("\nvolumes:\n")[0]
    names = re.findall(r"^  ([a-z]+):$", services, re.MULTILINE)
    assert names == ["gateway", "worker", "postgres", "influxdb", "nats"]
    set_vars = set(re.findall(r"^  ([A-Z][A-Z0-9_]+):", compose, re.MULTILINE))
    set_vars |= set(re.findall(r"\b(TIDEGATE_[A-Z_]+)=", CONTAINERFILE.read_text()))
    ours = {v for v in set_vars if not v.startswith("POSTGRES_")}
    assert ours and ours <= known, ours - known
    # What the build copies and compose mounts exists.
    root = DEPLOY.parent
    for line in CONTAINERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (root / src).exists(), src
    assert (DEPLOY / "nats-container.conf").exists()

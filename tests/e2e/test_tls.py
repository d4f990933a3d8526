"""TLS on the public listener (`--ssl-certfile/--ssl-keyfile`, TIDEGATE_SSL_CERTFILE/KEYFILE):
a certificate made here by a CA made here, and clients that verify it."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gateway import provision, run_gateway
from tidegate.cli import main
from tidegate.config import Config, ConfigError

OPENSSL_HINT = "the openssl command comes with Debian's openssl package"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def openssl(args: str, cwd: Path) -> None:
    """Run `openssl` with these space-separated arguments."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail(f"openssl is not installed: {OPENSSL_HINT}", pytrace=False)
    subprocess.run([exe, *args.split()], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    d = tmp_path / "tls"
    d.mkdir()
    key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    openssl(
        f"req -x509 {key} -keyout ca.key -out ca.pem -days 2 -subj /CN=tidegate-test-CA"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
        cwd=d,
    )
    openssl(f"req {key} -keyout server.key -out server.csr -subj /CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
        " -days 2 -extfile ext.cnf",
        cwd=d,
    )
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key")


def test_public_listener_serves_tls_that_a_verifying_client_accepts(
    certs: Certs, tmp_path: Path
) -> None:
    env = {"TIDEGATE_SSL_CERTFILE": str(certs.cert), "TIDEGATE_SSL_KEYFILE": str(certs.key)}
    gw = run_gateway(env, tmp_path / "gw", ca=certs.ca)
    try:
        assert gw.url.startswith("https://127.0.0.1:")
        token = provision(gw, "t1", "d1", "s1", token="tok-d1")
        item = {"tenant_id": "t1", "device_id": "d1", "msg_type": "telemetry",
                "provision_token": token, "site_id": "s1", "metrics": {"temp": 1.0}}  # fmt: skip
        with httpx.Client(verify=ssl.create_default_context(cafile=certs.ca)) as c:
            r = c.post(f"{gw.url}/ingest/v1/batch", json={"messages": [item]})
            assert (r.status_code, r.json()["accepted"]) == (202, 1)
            assert r.extensions["http_version"] == b"HTTP/1.1"
        # Without the CA the certificate does not verify; plain HTTP gets no answer.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{gw.url}/health", verify=ssl.create_default_context())
        plain = gw.url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/health", timeout=5)
        # The ops listener stays plain HTTP (loopback).
        assert gw.stats()["accepted"] == 1
        listening = [json.loads(x) for x in gw.logs().splitlines() if '"listening"' in x]
        assert {(e["listener"], e["url"]) for e in listening} == {
            ("public", gw.url),
            ("ops", gw.ops_url),
        }
    finally:
        assert gw.stop() == 0


def test_the_serve_flags_set_the_certificate_and_key(certs: Certs, tmp_path: Path) -> None:
    gw = run_gateway({}, tmp_path / "gw", ca=certs.ca, args=[
        "--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key),
    ])  # fmt: skip
    try:
        assert gw.client().get("/health").json() == {"status": "ok"}
    finally:
        assert gw.stop() == 0


def test_certificate_and_key_go_together_and_must_be_readable(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config.from_env(
        {"TIDEGATE_SSL_CERTFILE": str(certs.cert), "TIDEGATE_SSL_KEYFILE": str(certs.key)}
    )
    assert (cfg.ssl_certfile, cfg.ssl_keyfile) == (certs.cert, certs.key)
    with pytest.raises(ConfigError, match="TIDEGATE_SSL_CERTFILE and TIDEGATE_SSL_KEYFILE go"):
        Config.from_env({"TIDEGATE_SSL_CERTFILE": str(certs.cert)})
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as err:
        Config.from_env({"TIDEGATE_SSL_CERTFILE": str(missing), "TIDEGATE_SSL_KEYFILE": "x"})
    assert (
        str(err.value)
        == f"TIDEGATE_SSL_CERTFILE={str(missing)!r} is invalid: No such file or directory"
    )
    # Checked at start, not at the first connection: a key of another certificate.
    other_key = certs.ca.with_name("ca.key")
    with pytest.raises(ConfigError, match=r"are not a PEM certificate and its key: .*MISMATCH"):
        Config.from_env(
            {"TIDEGATE_SSL_CERTFILE": str(certs.cert), "TIDEGATE_SSL_KEYFILE": str(other_key)}
        )
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--ssl-certfile", str(missing), "--ssl-keyfile", str(certs.key)])
    assert exit_.value.code == 2
    assert "--ssl-certfile: No such file or directory" in capsys.readouterr().err

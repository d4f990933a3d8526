"""A client for device and gateway programmers: batches messages to `POST /ingest/v1/batch`,
gzips them, re-sends what the gateway asks to retry (honouring `Retry-After`) and reports every
message's outcome. See docs/client.md.

    from tidegate.client import Client, timestamp

    with Client("http://localhost:8080") as client:
        client.submit({"tenant_id": "acme", "device_id": "d1", "msg_type": "telemetry",
                       "provision_token": token, "site_id": "s1", "ts": timestamp(),
                       "metrics": {"temp": 21.5}})
        report = client.flush()
"""

from tidegate.answers import RETRYABLE
from tidegate.client.aio import AsyncClient
from tidegate.client.report import Message, Rejection, Report, timestamp
from tidegate.client.sync import Client

__all__ = ["RETRYABLE", "AsyncClient", "Client", "Message", "Rejection", "Report", "timestamp"]

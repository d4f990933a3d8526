"""The HTTP ceiling: a Starlette route that only reads the batch bodies and answers 202, under
one uvicorn worker as the gateway runs. What it reaches under the same wrk load bounds any
gateway on this machine; `run.py --ceiling` prints each run's share of it.

    python benches/load/ceiling.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"accepted":100,"rejected":0}'


async def batch(request: Request) -> Response:
    """Read the whole body, as the gateway must, and nothing more."""
    await request.body()
    return Response(ACCEPTED, 202, media_type="application/json")


async def health(request: Request) -> Response:
    """Up."""
    return Response(b"ok")


app = Starlette(
    routes=[Route("/ingest/v1/batch", batch, methods=["POST"]), Route("/health", health)]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)

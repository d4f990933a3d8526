"""Reading a request body under a byte cap, gzip included, without trusting the client."""

from __future__ import annotations

import zlib

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, decompressed if gzip; raises HTTPException (400, 413, 415) with a
    `detail`, ClientDisconnect when the client is gone before the body is in.

    Content-Length is checked before reading, the running size while reading (chunked bodies
    have no Content-Length), and a gzip body's output while decompressing: a bomb stops at
    `cap` bytes of output.
    """
    # The raw ASGI headers (names lower-case), read once: Starlette's Headers decodes each
    # header per lookup, and this runs on every request.
    length = encoding = None
    for name, value in request.scope["headers"]:
        if name == b"content-length" and length is None:
            length = value
        elif name == b"content-encoding" and encoding is None:
            encoding = value
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPException(400, "Content-Length is not a number") from None
        if declared > cap:
            raise HTTPException(413, too_large(cap))
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, too_large(cap))
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding is None:
        return body
    encoding = encoding.decode("latin-1").strip().lower()
    if encoding == "gzip":
        return gunzip(body, cap)
    if encoding in ("", "identity"):
        return body
    raise HTTPException(415, "Content-Encoding must be gzip or identity")


def gunzip(data: bytes, cap: int) -> bytes:
    """Decompress one gzip member, refusing (413) as soon as the output passes `cap` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        # max_length stops inflation one byte past the cap: the bomb's tail is never expanded.
        out = inflater.decompress(data, cap + 1)
    except zlib.error:
        raise HTTPException(400, "body is not valid gzip") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise HTTPException(413, too_large(cap, decompressed=True))
    if not inflater.eof or inflater.unused_data:
        raise HTTPException(400, "body is not valid gzip")
    return out


def too_large(cap: int, decompressed: bool = False) -> str:
    """The 413 detail, naming the limit."""
    what = "decompressed body" if decompressed else "body"
    return f"{what} exceeds the limit of {cap} bytes"

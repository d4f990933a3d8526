"""Reading a request body under a byte cap, gzip included, without trusting the client."""

from __future__ import annotations

import zlib

from starlette.requests import ClientDisconnect, Request

from tidegate.answers import (
    BODY_TOO_LARGE,
    CONTENT_LENGTH_INVALID,
    ENCODING_UNSUPPORTED,
    GZIP_INVALID,
    GZIP_TOO_LARGE,
    Refusal,
)


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, decompressed if gzip; raises Refusal (a body too large, not gzip, of
    another encoding, with a bad Content-Length), ClientDisconnect when the client is gone
    before the body is in.

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
            raise Refusal(CONTENT_LENGTH_INVALID) from None
        if declared > cap:
            raise Refusal(BODY_TOO_LARGE, cap=cap)
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
            raise Refusal(BODY_TOO_LARGE, cap=cap)
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
    raise Refusal(ENCODING_UNSUPPORTED)


def gunzip(data: bytes, cap: int) -> bytes:
    """Decompress one gzip member, refusing (GZIP_TOO_LARGE) as soon as the output passes
    `cap` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        # max_length stops inflation one byte past the cap: the bomb's tail is never expanded.
        out = inflater.decompress(data, cap + 1)
    except zlib.error:
        raise Refusal(GZIP_INVALID) from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise Refusal(GZIP_TOO_LARGE, cap=cap)
    if not inflater.eof or inflater.unused_data:
        raise Refusal(GZIP_INVALID)
    return out

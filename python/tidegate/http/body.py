"""Reading a request body under a byte cap, gzip included, without trusting the client."""

from __future__ import annotations

import zlib

from starlette.exceptions import HTTPException
from starlette.requests import Request


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, decompressed if gzip; raises HTTPException (400, 413, 415) with a `detail`.

    Content-Length is checked before reading, the running size while reading (chunked bodies
    have no Content-Length), and a gzip body's output while decompressing: a bomb stops at
    `cap` bytes of output.
    """
    headers = request.headers
    length = headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPException(400, "Content-Length is not a number") from None
        if declared > cap:
            raise HTTPException(413, too_large(cap))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, too_large(cap))
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get("content-encoding")
    if encoding is None:
        return body
    encoding = encoding.strip().lower()
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

"""Every error answer is `{"error": "one line"}` with its status: 400 for a client's mistake (a UserError from the
scorer names the input and what was expected), 404 unknown model/version/route, 405, 413 body over the cap, 503
queue full or shutting down; 500 only for a bug, whose traceback goes to the log and never to the client."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from onnxforge.errors import UserError, one_line

log = logging.getLogger("onnxforge.serve")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `cap` bytes (Content-Length first, then
    while streaming: a client that lies about its length or sends chunks is cut off all the same)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > cap:
        raise HTTPError(413, f"the body is {int(size)} bytes, over the server's cap of {cap} — split the request, "
                             "or start the server with a larger --max-body-bytes")
    chunks, got = [], 0
    try:
        async for chunk in request.stream():
            got += len(chunk)
            if got > cap:
                raise HTTPError(413, f"the body is over the server's cap of {cap} bytes — split the request, or "
                                     "start the server with a larger --max-body-bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # a truncated body: the client's doing, not a bug (no 500, no traceback in the log)
        raise HTTPError(400, f"the client closed the connection after {got} bytes of the body — send the whole "
                             "body (its Content-Length bytes)") from None
    return b"".join(chunks)


def _answer(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    # a lone surrogate echoed from the client (JSON "\\ud800" in a name) cannot be encoded as UTF-8: escape it
    text = one_line(message)[:2000].encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": text}, status_code=status, headers=headers)


async def on_http_error(request: Request, exc: HTTPError) -> JSONResponse:
    return _answer(exc.status, str(exc), exc.headers)


async def on_user_error(request: Request, exc: UserError) -> JSONResponse:
    return _answer(400, str(exc))


async def on_starlette(request: Request, exc: HTTPException) -> JSONResponse:
    msg = {404: f"no route {request.method} {request.url.path[:200]} — see GET /openapi.json for the routes",
           405: f"{request.method} is not allowed on {request.url.path[:200]}"}.get(exc.status_code, str(exc.detail))
    return _answer(exc.status_code, msg, getattr(exc, "headers", None))


async def on_bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _answer(500, f"internal error ({type(exc).__name__}) — a bug in onnxforge; the server log has the "
                        "traceback")


def handlers() -> dict:
    from onnxforge.serve.batching import QueueFull

    async def on_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _answer(503, str(exc), {"Retry-After": "1"})

    return {HTTPError: on_http_error, UserError: on_user_error, HTTPException: on_starlette, QueueFull: on_full,
            Exception: on_bug}

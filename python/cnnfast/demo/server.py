"""The demo's web app (Starlette): the page, its three static files, and the JSON API.

    GET  /                  the page (static/index.html; app.js and style.css beside it)
    GET  /api/examples      MNIST test digits to load with one click (empty without MNIST)
    POST /api/predict       an image -> digit, probabilities, the 28x28 input, feature maps
    POST /api/backprop      the worked example's values -> one exact step and its kernel replay

The computing is in cnnfast.demo.api; this module only moves bytes. Request bodies are read up
to api.MAX_BODY bytes (more: 413); a malformed request gets a 400 with {"error": message}; the
static files are three fixed names (no path from a request reaches the file system); Host
headers other than the listening host's are refused (a web page elsewhere cannot reach the
server through DNS rebinding); a POST whose Origin header names another site is refused (403:
a page elsewhere cannot make a browser on this machine post to the demo), and so is a POST
whose Content-Type is not one the endpoint reads (415: what a page elsewhere can send without a
CORS preflight, text/plain or a form, never reaches the image decoders).
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import api

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
STATIC = {  # the only files served: URL path -> (file in static/, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
HEADERS = {  # the page's own files only: no inline scripts, nothing from elsewhere
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=HEADERS)


def _check_origin(request: Request) -> None:
    """RequestError 403 if the request carries an Origin header that is not this server's own
    (the scheme and Host the request came to: the Host header has passed TrustedHostMiddleware).
    Browsers send Origin with every cross-site POST, fetch's no-cors mode included; a request
    without one (curl, a script) is let through."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin.strip().lower() != own.lower():
        raise api.RequestError(
            f"requests from another site ({origin[:100]}) are refused: the demo answers its own page ({own}) only",
            403,
        )


async def _body(request: Request) -> bytes:
    """The request body, at most api.MAX_BODY bytes (RequestError 413 beyond, before reading it all)."""
    limit = api.MAX_BODY
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise api.RequestError(f"the body is {int(declared):,} bytes; at most {limit:,} are accepted", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise api.RequestError(f"the body is more than {limit:,} bytes, the most accepted", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model, test_set: tuple[np.ndarray, np.ndarray] | None = None, allowed_hosts=LOCAL_HOSTS) -> Starlette:
    """The app for `model` (a cnnfast Sequential that takes 28x28 digits). `test_set`: MNIST's
    test (images, labels) to pick the one-click examples from (None: no examples). `allowed_hosts`:
    the Host names the server answers to (python -m cnnfast.demo: __main__.allowed_hosts)."""
    files = {
        path: (resources.files(__package__).joinpath("static", name).read_bytes(), media)
        for path, (name, media) in STATIC.items()
    }
    lock = threading.Lock()  # one computation at a time: the kernels already use every core
    examples: dict = {}

    def predict(body: bytes, content_type: str) -> dict:
        with lock:
            return api.predict(model, body, content_type)

    def backprop(body: bytes) -> dict:
        with lock:  # (its float32 replay runs the kernels too)
            return api.backprop(api.parse_json(body))

    def example_list() -> dict:
        with lock:
            if "list" not in examples:
                examples["list"] = [] if test_set is None else api.pick_examples(model, *test_set)
        return {"examples": examples["list"]}

    async def static(request: Request) -> Response:
        content, media = files[request.url.path]
        return Response(content, media_type=media, headers=HEADERS)

    async def predict_endpoint(request: Request) -> Response:
        try:
            _check_origin(request)
            body = await _body(request)
            result = await run_in_threadpool(predict, body, request.headers.get("content-type", ""))
        except api.RequestError as error:
            return _error(str(error), error.status)
        return JSONResponse(result, headers=HEADERS)

    async def backprop_endpoint(request: Request) -> Response:
        try:
            _check_origin(request)
            kind = api.media_type(request.headers.get("content-type", ""))
            if kind != api.JSON_TYPE:
                raise api.RequestError(f"Content-Type {kind or '(none)'!r} is not accepted: send {api.JSON_TYPE}", 415)
            result = await run_in_threadpool(backprop, await _body(request))
        except api.RequestError as error:
            return _error(str(error), error.status)
        return JSONResponse(result, headers=HEADERS)

    async def examples_endpoint(request: Request) -> Response:
        note = (
            "" if test_set is not None else "no MNIST test digits: start the demo with --data-dir (or set CNNFAST_DATA)"
        )
        return JSONResponse({**await run_in_threadpool(example_list), "note": note}, headers=HEADERS)

    routes = [Route(path, static, methods=["GET"]) for path in STATIC] + [
        Route("/api/predict", predict_endpoint, methods=["POST"]),
        Route("/api/backprop", backprop_endpoint, methods=["POST"]),
        Route("/api/examples", examples_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])

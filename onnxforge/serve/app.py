"""The ASGI app (Starlette): the served versions and their runners, the routes (OIP v2, /predict, /metrics,
/openapi.json, /docs, the playground), structured access logs and metrics on every request.

Starlette rather than FastAPI: the request bodies are validated by the scorer with messages that name the input
(FastAPI's per-request pydantic models would answer 422 in their own shape, and cost time on the hot path), errors
must be OIP's `{"error": ...}`, and the OpenAPI document is built from the model's own input spec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from onnxforge.serve import oip
from onnxforge.serve.batching import Runner
from onnxforge.serve.errors import HTTPError, handlers
from onnxforge.serve.json_predict import predict
from onnxforge.serve.metrics import CONTENT_TYPE, Metrics
from onnxforge.serve.repository import plan
from onnxforge.serve.scoring import ServedModel

access_log = logging.getLogger("onnxforge.serve.access")
METHODS = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"}
ENV = "ONNXFORGE_SERVE_OPTIONS"  # the options, as JSON, for worker processes (uvicorn --workers imports the app)


@dataclass
class Options:
    target: str
    name: str | None = None
    threads: int | None = None
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256
    max_body_bytes: int = 16 << 20
    ui: bool = False
    providers: list[str] | None = None  # --providers (onnxruntime names); None: the default (CPU)
    allow_fallback: bool = False


class Server:
    """The served versions and their runners, loaded once per process."""

    def __init__(self, opts: Options):
        self.options = opts
        self.metrics = Metrics()
        self.plan = plan(Path(opts.target), opts.name)
        self.name = self.plan.name
        self.models: dict[str, ServedModel] = {}
        self.runners: dict[str, Runner] = {}
        from onnxforge.runtime import Providers

        chosen = Providers(opts.providers, opts.allow_fallback) if opts.providers else None
        for e in self.plan.entries:
            m = ServedModel(e.path, name=self.name, version=e.version, stage=e.stage, threads=opts.threads,
                            providers=chosen)
            self.models[e.version] = m
            self.runners[e.version] = Runner(
                m.run, batchable=m.batchable, max_batch_size=opts.max_batch_size,
                max_queue_delay_ms=opts.max_queue_delay_ms, max_queue=opts.max_queue,
                on_run=lambda req, rows, v=e.version: self.metrics.ran(self.name, v, req, rows),
                depth=lambda d, v=e.version: self.metrics.depth(self.name, v, d))
        self.ready = True

    def versions(self, name: str) -> list[str]:
        return list(self.models)

    def model(self, name: str | None, version: str | None = None) -> ServedModel:
        if name is not None and name != self.name:
            raise HTTPError(404, f"unknown model '{str(name)[:60]}' — this server serves '{self.name}'")
        v = self.plan.default if version in (None, "") else version
        if v not in self.models:
            raise HTTPError(404, f"model '{self.name}' has no version '{str(v)[:20]}' — its versions are "
                                 f"{', '.join(self.models)}")
        return self.models[v]

    def runner(self, m: ServedModel) -> Runner:
        return self.runners[m.version]

    def describe(self) -> dict:
        return {"name": self.name, "default_version": self.plan.default,
                "versions": [{"version": m.version, "stage": m.stage, "file": m.path.name,
                              "batching": self.runners[v].batching, "stochastic": m.stochastic,
                              "stochastic_outputs": m.stochastic_outputs,
                              "ort_threads": m.predictor.session.get_session_options().intra_op_num_threads,
                              "provider": m.predictor.session.get_providers()[0],  # what really runs it
                              "inputs": [s.model_dump(mode="json", exclude_defaults=True) for s in m.specs],
                              "columns": m.columns(), "outputs": m.outputs}
                             for v, m in self.models.items()]}


class Observe:
    """ASGI middleware: latency and status per route template into the metrics, and one JSON access-log line per
    request (method, path, route, status, bytes, ms, client)."""

    def __init__(self, app, server_ref):
        self.app, self.server_ref = app, server_ref

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        seen = {"status": 500, "bytes": 0, "counted": False}

        def count():
            seen["counted"] = True
            srv = self.server_ref()
            if srv is not None:
                method = scope["method"] if scope["method"] in METHODS else "other"  # bounded label values
                srv.metrics.requests.labels(_template(scope), method, str(seen["status"])).inc()
                srv.metrics.latency.labels(_template(scope)).observe(time.perf_counter() - t0)

        async def sending(msg):
            if msg["type"] == "http.response.start":
                seen["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                seen["bytes"] += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    # counted before the last byte leaves: a client that reads /metrics right after its answer
                    # (another worker may serve it) sees its request counted
                    count()
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not seen["counted"]:  # no complete answer was sent (an error, a client gone)
                count()
            dt = time.perf_counter() - t0
            route = _template(scope)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({"ts": round(time.time(), 3), "method": scope["method"],
                                            "path": scope["path"][:300], "route": route, "status": seen["status"],
                                            "bytes": seen["bytes"], "ms": round(dt * 1000, 3),
                                            "client": f"{client[0]}:{client[1]}"}))


def _template(scope) -> str:
    """The matched route's path template (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


async def metrics(request: Request) -> Response:
    return Response(request.app.state.server.metrics.render(), media_type=CONTENT_TYPE)


async def models(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.server.describe())


async def openapi(request: Request) -> JSONResponse:
    from onnxforge.serve.openapi import document

    return JSONResponse(document(request.app.state.server))


async def docs(request: Request) -> HTMLResponse:
    from onnxforge.serve.openapi import page

    return HTMLResponse(page())


ROUTES = [
    ("/v2", oip.server_meta, ["GET"]), ("/v2/health/live", oip.live, ["GET"]),
    ("/v2/health/ready", oip.ready, ["GET"]),
    ("/v2/models/{name}", oip.model_meta, ["GET"]), ("/v2/models/{name}/versions/{version}", oip.model_meta, ["GET"]),
    ("/v2/models/{name}/ready", oip.model_ready, ["GET"]),
    ("/v2/models/{name}/versions/{version}/ready", oip.model_ready, ["GET"]),
    ("/v2/models/{name}/infer", oip.infer, ["POST"]),
    ("/v2/models/{name}/versions/{version}/infer", oip.infer, ["POST"]),
    ("/predict", predict, ["POST"]),
    ("/metrics", metrics, ["GET"]), ("/models", models, ["GET"]),
    ("/openapi.json", openapi, ["GET"]), ("/docs", docs, ["GET"]),
]


def create(opts: Options) -> Starlette:
    import weakref

    server = Server(opts)
    routes = [Route(p, fn, methods=methods) for p, fn, methods in ROUTES]
    if opts.ui:
        from onnxforge.serve.playground import routes as ui_routes

        routes += ui_routes(server)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.ready = False  # draining: readiness fails so a balancer stops sending
        for r in server.runners.values():
            await r.close()

    app = Starlette(routes=routes, exception_handlers=handlers(), lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Observe, server_ref=weakref.ref(server))
    app.state.keep = server  # the weakref's target lives as long as the app
    return app


def from_env() -> Starlette:
    """The app factory a uvicorn worker process calls (--workers N): options come from the launcher's env."""
    return create(Options(**json.loads(os.environ[ENV])))


def options_env(opts: Options) -> str:
    return json.dumps(asdict(opts))

"""The browser playground (`onnxforge serve --ui`): a page that builds a form from the input spec and scores a row
in the browser with onnxruntime-web and on the server, side by side.

onnxruntime-web is an npm package vendored at build/install time (`make playground`: `npm ci` from the committed
package-lock.json, then its wasm bundle copied here; never committed, never fetched from a CDN) and served by this
server from the Python package."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from onnxforge.errors import UserError

HERE = Path(__file__).resolve().parent
VENDORED = {"ort.wasm.bundle.min.mjs": "text/javascript", "ort-wasm-simd-threaded.mjs": "text/javascript",
            "ort-wasm-simd-threaded.wasm": "application/wasm"}
PAGES = {"": ("index.html", "text/html; charset=utf-8"), "playground.js": ("playground.js", "text/javascript")}


def check_vendored() -> None:
    missing = [f for f in VENDORED if not (HERE / f).is_file()]
    if missing:
        raise UserError(f"the playground's onnxruntime-web files are not vendored ({', '.join(missing)}) — run "
                        "`make playground` (npm ci from the committed lock file), or serve without --ui")


def example(m) -> dict:
    """A row the form starts from: synthesized from the input spec (levels from its categories)."""
    import numpy as np

    from onnxforge.data import synthesize

    feeds = synthesize(m.specs, 1, seed=0)
    rec = {}
    for s in m.specs:
        a = np.asarray(feeds[s.name])
        if s.columns:
            rec.update({k: a.reshape(1, -1)[0, j].item() for j, k in enumerate(s.columns)})
        elif a.ndim > 2 or (a.ndim == 2 and a.shape[1] != 1):
            rec[s.column or s.name] = a[0].tolist()
        else:
            v = a.reshape(-1)[0]
            rec[s.column or s.name] = v.item() if hasattr(v, "item") else v
    return rec


def routes(server) -> list:
    check_vendored()

    async def page(request: Request) -> Response:
        name = request.path_params.get("file", "")
        if name not in PAGES:
            return JSONResponse({"error": f"no playground file '{name[:60]}'"}, status_code=404)
        file, media = PAGES[name]
        return FileResponse(HERE / file, media_type=media)

    async def vendored(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in VENDORED:
            return JSONResponse({"error": f"no vendored file '{name[:60]}'"}, status_code=404)
        return FileResponse(HERE / name, media_type=VENDORED[name])

    async def model_bytes(request: Request) -> Response:
        m = server.model(None, request.query_params.get("version"))
        return Response(m.proto.SerializeToString(), media_type="application/octet-stream")

    async def example_row(request: Request) -> JSONResponse:
        return JSONResponse(example(server.model(None, request.query_params.get("version"))))

    async def to_slash(request: Request) -> Response:
        return RedirectResponse("/ui/")

    return [Route("/ui", to_slash), Route("/ui/model.onnx", model_bytes), Route("/ui/example", example_row),
            Route("/ui/ort/{file}", vendored), Route("/ui/{file:path}", page)]

"""`POST /predict`: plain JSON for people. Records (`[{"age": 41, "city": "Lyon"}, ...]`, or
`{"records": [...], "seed": 7}`) are mapped through the artifact's stamped input spec the way `onnxforge predict`
maps a table's columns; the answer holds one object of named outputs per record (class labels, probabilities by
class, PyMC mean/std/quantiles by level and draws). `?model=NAME&version=V` picks another than the default."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from onnxforge.serve.errors import HTTPError, read_body


async def predict(request: Request) -> Response:
    srv = request.app.state.server
    q = request.query_params
    m = srv.model(q.get("model") or request.path_params.get("name"), q.get("version")
                  or request.path_params.get("version"))
    body = await read_body(request, srv.options.max_body_bytes)
    try:
        doc = json.loads(body)
    except RecursionError:  # nesting deeper than Python's stack: a client's body, not a bug
        raise HTTPError(400, "the request body nests arrays or objects too deeply to parse — send a list of "
                             'records [{"column": value, ...}]') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"the request body is not JSON ({type(e).__name__}) — send a list of records "
                             '[{"column": value, ...}] or {"records": [...], "seed": 7}') from None
    seed = None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"records", "seed"})
        if unknown:
            raise HTTPError(400, f"unknown key(s) {unknown[:5]} — send {{\"records\": [...]}} with an optional "
                                 "\"seed\"")
        seed = doc.get("seed")
        if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
            raise HTTPError(400, f"seed {str(seed)[:30]} is not a non-negative integer — send e.g. \"seed\": 7")
        if seed is not None and not m.stochastic:
            raise HTTPError(400, f"model '{m.name}' has no random nodes: a seed changes nothing — leave it out")
        doc = doc.get("records")
    feeds = m.feeds_from_records(doc)
    arrays, rows = m.check_tensors(feeds)
    outs = await srv.runner(m).infer(arrays, rows, seed)
    out = {"model_name": m.name, "model_version": m.version, "predictions": m.records_out(outs, rows)}
    if seed is not None:
        out["seed"] = seed
    return Response(json.dumps(out, separators=(",", ":"), allow_nan=False), media_type="application/json")

"""The OpenAPI 3.1 document of the running server, built from the served model's input spec (each /predict record
key with its type and levels), and a /docs page that renders it without any CDN."""

from __future__ import annotations

import html

from onnxforge import __version__

_JSON_TYPE = {"string": "string", "bool": "boolean", "int64": "integer", "int32": "integer", "int8": "integer",
              "uint8": "integer"}


def _record_schema(m) -> dict:
    props = {}
    for s in m.specs:
        item = {"type": _JSON_TYPE.get(s.dtype, "number")}
        if s.categories:
            item["enum"] = list(s.categories)
        for k in s.keys:
            wide = not s.columns and len(s.shape or []) > 1 and not (len(s.shape) == 2 and s.shape[1] == 1)
            props[k] = {"type": "array", "description": f"input '{s.name}' shape {s.shape} without the batch dim",
                        "items": {}} if wide else item
    return {"type": "object", "properties": props, "required": list(props)}


def document(server) -> dict:
    m = server.model(None)
    err = {"description": "error", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}}}}}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "data": {"type": "array"}, "parameters": {"type": "object"}}}
    infer_body = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object"}}}
    errors = {"400": err, "404": err, "413": err, "503": err}

    def op(summary, body=None, extra=None):
        o = {"summary": summary, "responses": {"200": {"description": "ok"}, **(extra or {})}}
        if body:
            o["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return o

    rec = _record_schema(m)
    paths = {
        "/v2": {"get": op("server metadata (OIP v2)")},
        "/v2/health/live": {"get": op("liveness")},
        "/v2/health/ready": {"get": op("readiness (503 while draining)")},
        "/v2/models/{name}": {"get": op("model metadata: inputs and outputs with OIP datatypes", extra=errors)},
        "/v2/models/{name}/versions/{version}": {"get": op("metadata of one version", extra=errors)},
        "/v2/models/{name}/ready": {"get": op("model readiness", extra=errors)},
        "/v2/models/{name}/infer": {"post": op("infer with OIP v2 tensors (JSON, or Triton's binary extension)",
                                               infer_body, errors)},
        "/v2/models/{name}/versions/{version}/infer": {"post": op("infer on one version", infer_body, errors)},
        "/predict": {"post": op("records in, named outputs per record out", {"oneOf": [
            {"type": "array", "items": rec},
            {"type": "object", "required": ["records"], "properties": {
                "records": {"type": "array", "items": rec}, "seed": {"type": "integer", "minimum": 0}}}]},
            errors)},
        "/metrics": {"get": op("Prometheus metrics")},
        "/models": {"get": op("the served versions, their input spec and outputs")},
    }
    return {"openapi": "3.1.0", "info": {"title": f"onnxforge serve: {server.name}", "version": __version__},
            "paths": paths}


def page() -> str:
    """A plain page listing the routes of /openapi.json (fetched by the page itself: no external script)."""
    return ("<!doctype html><meta charset=utf-8><title>onnxforge serve — API</title>"
            "<style>body{font:14px system-ui;margin:2em}code{background:#eee;padding:0 .3em}</style>"
            f"<h1>{html.escape('onnxforge serve')}</h1><p>The OpenAPI document: <a href=openapi.json>"
            "/openapi.json</a></p><ul id=routes></ul><script>"
            "fetch('openapi.json').then(r=>r.json()).then(d=>{const ul=document.getElementById('routes');"
            "for(const [p,ops] of Object.entries(d.paths))for(const [m,o] of Object.entries(ops)){"
            "const li=document.createElement('li');li.innerHTML='<code>'+m.toUpperCase()+' '+p+'</code> ';"
            "li.append(o.summary);ul.append(li);}});</script>")

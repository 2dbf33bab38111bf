"""The Open Inference Protocol v2 (KServe v2 / Triton) REST routes, so tritonclient.http and KServe clients work
unchanged: health, server and model metadata, readiness, and infer with JSON tensors or Triton's binary tensor
data extension (tritonclient's default: a JSON header of Inference-Header-Content-Length bytes, then raw tensors;
BYTES elements as a 4-byte little-endian length and the bytes)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from onnxforge import __version__
from onnxforge.errors import UserError
from onnxforge.serve.errors import HTTPError, read_body
from onnxforge.serve.scoring import NP_OF_OIP

HEADER = "Inference-Header-Content-Length"


async def server_meta(request: Request) -> JSONResponse:
    return JSONResponse({"name": "onnxforge", "version": __version__, "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    ok = request.app.state.server.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def model_meta(request: Request) -> JSONResponse:
    m = request.app.state.server.model(request.path_params["name"], request.path_params.get("version"))
    versions = request.app.state.server.versions(m.name)
    return JSONResponse({"name": m.name, "versions": versions, "platform": "onnxruntime_onnx",
                         "inputs": m.inputs, "outputs": m.outputs})


async def model_ready(request: Request) -> JSONResponse:
    m = request.app.state.server.model(request.path_params["name"], request.path_params.get("version"))
    return JSONResponse({"name": m.name, "ready": request.app.state.server.ready})


async def infer(request: Request) -> Response:
    srv = request.app.state.server
    m = srv.model(request.path_params["name"], request.path_params.get("version"))
    body = await read_body(request, srv.options.max_body_bytes)
    head_len = request.headers.get(HEADER)
    if head_len is not None:
        if not head_len.isdigit() or int(head_len) > len(body):
            raise HTTPError(400, f"{HEADER}: {head_len[:20]!r} is not a length within the body ({len(body)} "
                                 "bytes) — send the JSON header's byte length")
        head, binary = body[:int(head_len)], body[int(head_len):]
    else:
        head, binary = body, b""
    req = _json(head)
    feeds, wanted, binary_out = decode(req, binary, m)
    arrays, rows = m.check_tensors(feeds)
    m.check_values(arrays)  # NaN policy and text as /predict checks them
    outs = await srv.runner(m).infer(arrays, rows)
    return encode(req, m, outs, wanted, binary_out)


def _json(raw: bytes) -> dict:
    try:
        req = json.loads(raw)
    except RecursionError:  # nesting deeper than Python's stack: a client's body, not a bug
        raise HTTPError(400, "the request body nests arrays or objects too deeply to parse — send "
                             '{"inputs": [{"name", "shape", "datatype", "data"}]} with flat "data"') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"the request body is not JSON ({type(e).__name__}: {str(e)[:80]}) — send "
                             '{"inputs": [{"name", "shape", "datatype", "data"}]}') from None
    if not isinstance(req, dict):
        raise HTTPError(400, 'the request body must be a JSON object — send {"inputs": [...]}')
    return req


def decode(req: dict, binary: bytes, m) -> tuple[dict[str, np.ndarray], list[str], set[str]]:
    """(inputs by name, output names asked for, outputs asked for as binary)."""
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise UserError(f'"inputs" must be a non-empty list of tensors — model \'{m.name}\' takes '
                        f"{', '.join(m.input_names)}")
    if not isinstance(req.get("parameters", {}), dict):
        raise UserError(f'"parameters" is {type(req["parameters"]).__name__}, not an object — send e.g. '
                        '{"binary_data_output": true}, or leave it out')
    declared = {i["name"]: i for i in m.inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for t in inputs:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise UserError('an input is not an object with a "name" — send {"name", "shape", "datatype", "data"} '
                            "per input")
        name = t["name"]
        if name not in declared:
            raise UserError(f"unknown input '{name[:60]}' — model '{m.name}' takes {', '.join(m.input_names)}")
        if name in feeds:
            raise UserError(f"input '{name}' is given twice — send each input once")
        dt, want = t.get("datatype"), declared[name]["datatype"]
        if dt != want:
            raise UserError(f"input '{name}' has datatype {str(dt)[:20]}, the model takes {want} — send {want}")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise UserError(f"input '{name}': shape {str(shape)[:60]} is not a list of non-negative ints — send e.g. "
                            "[1, 4]")
        n = math.prod(shape)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise UserError(f"input '{name}': \"parameters\" is {type(params).__name__}, not an object — send e.g. "
                            '{"binary_data_size": 16}, or leave it out')
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise UserError(f"input '{name}': binary_data_size {str(size)[:20]} runs past the body's "
                                f"{len(binary)} binary bytes — send the tensor's byte size")
            arr = _from_bytes(name, dt, binary[offset:offset + size], n)
            offset += size
        else:
            arr = _from_data(name, dt, t.get("data"), n)
        feeds[name] = arr.reshape(shape)
    if offset != len(binary):
        raise UserError(f"{len(binary) - offset} binary bytes follow the inputs' binary_data_size — send exactly "
                        "the tensors' bytes")
    missing = [k for k in m.input_names if k not in feeds]
    if missing:
        raise UserError(f"missing input(s) {', '.join(missing)} — model '{m.name}' takes {', '.join(m.input_names)}")
    binary_out = set()
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output"))
    wanted = req.get("outputs")
    if wanted is None:
        names = list(m.output_names)
        binary_out = set(names) if all_binary else set()
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise UserError('"outputs" is not a list of {"name": ...} objects — send e.g. [{"name": '
                            f'"{m.output_names[0]}"}}]')
        names = [o["name"] for o in wanted]
        bad = [k for k in names if k not in m.output_names]
        if bad:
            raise UserError(f"unknown output '{bad[0][:60]}' — model '{m.name}' has {', '.join(m.output_names)}")
        binary_out = {o["name"] for o in wanted if all_binary or (o.get("parameters") or {}).get("binary_data")}
    return feeds, names, binary_out


def _from_data(name: str, dt: str, data: Any, n: int) -> np.ndarray:
    if not isinstance(data, list):
        raise UserError(f"input '{name}': \"data\" must be a list of {n} values (row-major) or "
                        "parameters.binary_data_size")
    try:
        raw = np.asarray(data, dtype=object if dt == "BYTES" else None).reshape(-1)
    except ValueError:
        raise UserError(f"input '{name}': \"data\" is ragged — send a flat row-major list") from None
    if raw.size != n:
        raise UserError(f"input '{name}': its shape holds {n} values but \"data\" has {raw.size} — make them agree")
    if dt == "BYTES":
        if not all(isinstance(v, str) for v in raw):
            raise UserError(f"input '{name}' is BYTES but an element is not a string — send every element as a "
                            "string")
        return raw
    kind = raw.dtype.kind
    if dt != "BOOL" and kind in "iuf" and bool in _types(data):
        # numpy upcasts [1.5, true] to [1.5, 1.0]: the boolean would be scored as a number
        raise UserError(f"input '{name}' is {dt} but its data holds booleans among the numbers — send numbers "
                        "(1 or 0 if that is what a boolean means)")
    if dt == "BOOL":
        if kind != "b" and raw.size:
            raise UserError(f"input '{name}' is BOOL but its data holds other values — send true/false")
        return raw.astype(np.bool_)
    if kind not in "iuf" and raw.size:  # strings, objects, bools: never converted to numbers
        odd = next((v for v in raw if type(v) not in (int, float)), ...)  # only on the way to a 400
        what = ("integers beyond 64 bits" if odd is ... else "booleans" if kind == "b" or isinstance(odd, bool) else
                "text" if isinstance(odd, str) else "null" if odd is None else "a JSON object")
        raise UserError(f"input '{name}' is {dt} but its data holds {what} — send numbers")
    return raw  # numbers as parsed: the Predictor casts them to the input's dtype, refusing lossy casts


def _types(data: list) -> set:
    """The element types of JSON "data", flat or nested (one pass at C speed per level)."""
    types = set(map(type, data))
    while list in types:
        data = [v for sub in data if isinstance(sub, list) for v in sub]
        types = (types - {list}) | set(map(type, data))
    return types


def _from_bytes(name: str, dt: str, chunk: bytes, n: int) -> np.ndarray:
    if dt != "BYTES":
        dtype = np.dtype(NP_OF_OIP[dt])
        if len(chunk) != n * dtype.itemsize:
            raise UserError(f"input '{name}': {len(chunk)} binary bytes, its shape needs {n * dtype.itemsize} — "
                            "make them agree")
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
    out, i = [], 0
    while i < len(chunk):
        if i + 4 > len(chunk):
            raise UserError(f"input '{name}': truncated BYTES element — send 4-byte lengths then the bytes")
        (k,) = struct.unpack_from("<I", chunk, i)
        if i + 4 + k > len(chunk):
            raise UserError(f"input '{name}': a BYTES element runs past its binary data — send 4-byte lengths then "
                            "the bytes")
        try:
            out.append(chunk[i + 4:i + 4 + k].decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"input '{name}': a BYTES element is not UTF-8 text — send text") from None
        i += 4 + k
    if len(out) != n:
        raise UserError(f"input '{name}': {len(out)} BYTES elements, its shape holds {n} — make them agree")
    return np.asarray(out, dtype=object)


_OIP_OF_NP = {np.dtype(v): k for k, v in NP_OF_OIP.items() if k != "BYTES"}


def _datatype(arr: np.ndarray) -> str:
    return "BYTES" if arr.dtype.kind in "OUS" else _OIP_OF_NP[arr.dtype]


def encode(req: dict, m, outs: dict[str, Any], names: list[str], binary_out: set[str]) -> Response:
    tensors, blobs = [], []
    for name in names:
        arr = outs[name]
        if isinstance(arr, list):
            raise UserError(f"output '{name}' is a sequence of maps, which OIP tensors cannot carry — ask "
                            "POST /predict, or leave it out of \"outputs\"")
        arr = np.asarray(arr)
        t: dict[str, Any] = {"name": name, "datatype": _datatype(arr), "shape": list(arr.shape)}
        if name in binary_out:
            if t["datatype"] == "BYTES":
                raw = b"".join(struct.pack("<I", len(b)) + b for b in
                               (v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)))
            else:
                raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = arr.reshape(-1)
            t["data"] = ([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
                         if t["datatype"] == "BYTES" else flat.tolist())
            if arr.dtype.kind == "f" and not np.isfinite(flat).all():
                # JSON has no NaN/Infinity (strict parsers refuse the bare words Python writes): null, as /predict
                # and KServe's orjson write them; binary outputs keep the IEEE values
                t["data"] = [v if math.isfinite(v) else None for v in t["data"]]
        tensors.append(t)
    doc: dict[str, Any] = {"model_name": m.name, "model_version": m.version, "outputs": tensors}
    if "id" in req:
        doc["id"] = req["id"]
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER: str(len(head))})

"""`onnxforge serve` against inputs real clients send (sweep 8): OIP v2 JSON with NaN/Infinity literals, booleans
among numbers, malformed "parameters", deeply nested bodies, lone surrogates, and NUL characters in text
categories. Models: scikit-learn on iris and a text Pipeline (OneHotEncoder whose training data holds the level
""), saved with skops and converted through the CLI; expected values come from scikit-learn itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from serve_http_server import Served

COLORS = ["red", "green", "", "blé"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    work = tmp_path_factory.mktemp("serve-sweep8")
    X, y = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=500).fit(X.astype(np.float32), y)
    sio.dump(iris, work / "iris.skops")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"color": rng.choice(COLORS, 200), "city": rng.choice(["Lyon", "Paris", "Köln"], 200),
                       "x": rng.normal(size=200).astype(np.float32)})
    text = make_pipeline(ColumnTransformer([("oh", OneHotEncoder(handle_unknown="error"), ["color", "city"]),
                                            ("num", StandardScaler(), ["x"])]), LogisticRegression())
    text.fit(df, ((df.color == "") | (df.x > 0.5)).astype(int))
    sio.dump(text, work / "text.skops")
    res = run_cli("convert", "--framework", "sklearn", "-m", work / "iris.skops", "-o", work / "iris.onnx")
    assert res.code == 0, res.stderr
    res = run_cli("convert", "--framework", "sklearn", "-m", work / "text.skops", "-o", work / "text.onnx",
                  "-i", "color:string:batch,1", "-i", "city:string:batch,1", "-i", "x:float32:batch,1")
    assert res.code == 0, res.stderr
    return {"iris": (work / "iris.onnx", iris, X.astype(np.float32)), "text": (work / "text.onnx", text)}


@pytest.fixture(scope="module")
def iris(models):
    with Served(models["iris"][0]) as s:
        yield s


@pytest.fixture(scope="module")
def text(models):
    with Served(models["text"][0]) as s:
        yield s


def _error(server: Served, path: str, body, status: int = 400) -> str:
    """The one-line error of a request that must be refused with `status` (never a 500)."""
    got, _, raw = server.call("POST", path, body, headers={"Content-Type": "application/json"})
    assert got == status, (got, raw[:300])
    msg = json.loads(raw)["error"]
    assert "\n" not in msg and " — " in msg, msg
    return msg


def _iris_body(data: str) -> str:
    return '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ' + data + "}]}"


def test_oip_nan_and_infinity_literals_are_refused_not_scored(iris, models):
    """Python's json reads NaN/Infinity; a NaN row reached a model not stamped as taking missing values and the
    answer was 200 with NaN probabilities, written as a bare NaN (not JSON) — /predict refuses the same row."""
    _, clf, X = models["iris"]
    for lit in ("NaN", "Infinity", "-Infinity"):
        msg = _error(iris, "/v2/models/iris/infer", _iris_body(f"[{lit}, 3.5, 1.4, 0.2]"))
        assert "element 0" in msg and ("NaN" in msg or "inf" in msg), msg
    # finite rows still score as scikit-learn does
    status, doc = iris.json("POST", "/v2/models/iris/infer", json.loads(_iris_body(json.dumps(X[0].tolist()))))
    assert status == 200
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"]
    np.testing.assert_allclose(probs, clf.predict_proba(X[:1])[0], atol=1e-5)


def test_oip_booleans_among_numbers_are_refused(iris):
    """numpy upcasts [1.0, true, ...] to floats: the boolean was scored as 1.0 (a lone boolean was refused)."""
    msg = _error(iris, "/v2/models/iris/infer", _iris_body("[5.1, true, 1.4, 0.2]"))
    assert "boolean" in msg, msg
    msg = _error(iris, "/v2/models/iris/infer",
                 '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5], '
                 '[false, 0.2]]}]}')
    assert "boolean" in msg, msg


def test_oip_non_numbers_are_named_as_what_they_are(iris):
    """null, a JSON object or a 100-digit integer in FP32 data was reported as 'text'."""
    assert "null" in _error(iris, "/v2/models/iris/infer", _iris_body("[null, 3.5, 1.4, 0.2]"))
    assert "64 bits" in _error(iris, "/v2/models/iris/infer", _iris_body(f"[{10**30}, 3.5, 1.4, 0.2]"))
    assert "JSON object" in _error(iris, "/v2/models/iris/infer", _iris_body('[{"a": 1}, 3.5, 1.4, 0.2]'))


def test_malformed_parameters_are_400_not_500(iris):
    """`"parameters": "x"` raised AttributeError (a 500); per-input parameters that were not an object were
    silently ignored."""
    body = json.loads(_iris_body("[5.1, 3.5, 1.4, 0.2]"))
    msg = _error(iris, "/v2/models/iris/infer", {**body, "parameters": "binary"})
    assert '"parameters"' in msg, msg
    body["inputs"][0]["parameters"] = [16]
    msg = _error(iris, "/v2/models/iris/infer", body)
    assert '"parameters"' in msg and "input 'input'" in msg, msg


def test_deeply_nested_body_is_400_not_500(iris):
    """json.loads raises RecursionError past ~1000 levels: it was answered as a bug (500)."""
    deep = "[" * 50_000 + "]" * 50_000
    assert "too deeply" in _error(iris, "/v2/models/iris/infer", deep)
    assert "too deeply" in _error(iris, "/predict", deep)
    status, _ = iris.json("GET", "/v2/health/ready")
    assert status == 200


def test_lone_surrogate_in_an_input_name_is_400_not_500(iris):
    """A JSON "\\ud800" echoed into the error message could not be encoded as UTF-8 (a 500)."""
    msg = _error(iris, "/v2/models/iris/infer",
                 '{"inputs": [{"name": "\\ud800", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}')
    assert "unknown input" in msg, msg


def test_text_categories_score_as_scikit_learn_and_nul_is_refused(text, models):
    """'red\\0' was scored as 'red' by /predict (numpy's str arrays drop trailing NULs) where scikit-learn finds an
    unknown category; "" is a level of this model and scores as scikit-learn scores it."""
    clf = models["text"][1]
    rows = [{"color": c, "city": "Köln", "x": 0.3} for c in COLORS]
    status, doc = text.json("POST", "/predict", rows)
    assert status == 200, doc
    want = clf.predict_proba(pd.DataFrame(rows))
    got = np.array([[p["probabilities"][k] for k in ("0", "1")] for p in doc["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [p["label"] for p in doc["predictions"]] == clf.predict(pd.DataFrame(rows)).tolist()
    for bad in ("red\x00", "\x00", "gre\x00en"):
        with pytest.raises(ValueError, match="unknown categor"):
            clf.predict(pd.DataFrame([{"color": bad, "city": "Köln", "x": 0.3}]))
        msg = _error(text, "/predict", [{"color": bad, "city": "Köln", "x": 0.3}])
        assert "NUL" in msg and "'color'" in msg, msg
        body = {"inputs": [{"name": "color", "shape": [1, 1], "datatype": "BYTES", "data": [bad]},
                           {"name": "city", "shape": [1, 1], "datatype": "BYTES", "data": ["Köln"]},
                           {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [0.3]}]}
        msg = _error(text, "/v2/models/text/infer", body)
        assert "NUL" in msg and "'color'" in msg, msg


def test_oip_nan_in_a_text_models_float_input_is_refused(text, models):
    """The same NaN gap on a mixed-type model: NaN in `x` was scored (NaN probabilities, label 0)."""
    body = ('{"inputs": [{"name": "color", "shape": [1, 1], "datatype": "BYTES", "data": ["red"]}, '
            '{"name": "city", "shape": [1, 1], "datatype": "BYTES", "data": ["Lyon"]}, '
            '{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [NaN]}]}')
    msg = _error(text, "/v2/models/text/infer", body)
    assert "'x'" in msg and "NaN" in msg, msg
    status, doc = text.json("POST", "/v2/models/text/infer", json.loads(body.replace("NaN", "0.25")))
    assert status == 200
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"]
    assert all(math.isfinite(p) for p in probs)
    want = models["text"][1].predict_proba(pd.DataFrame([{"color": "red", "city": "Lyon", "x": 0.25}]))[0]
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_truncated_body_is_not_a_500(iris):
    """A client that closes its connection mid-body (Content-Length 200, 40 bytes sent) was logged as an internal
    error with two tracebacks and counted as a 500 in the metrics: it is the client's doing."""
    import socket
    import time

    body = b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
    before = len(iris.lines)
    with socket.create_connection(("127.0.0.1", iris.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + body[:40])
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    deadline = time.monotonic() + 10
    while not any('"route": "/v2/models/{name}/infer"' in ln for ln in iris.lines[before:]):
        assert time.monotonic() < deadline, iris.lines[before:]
        time.sleep(0.05)
    new = iris.lines[before:]
    assert not any("Traceback" in ln or "internal error" in ln for ln in new), new
    assert any('"status": 400' in ln for ln in new if '"route": "/v2/models/{name}/infer"' in ln), new
    assert not [k for k in iris.metrics() if k.startswith("onnxforge_http_requests_total") and 'status="500"' in k]


def test_oip_json_writes_a_models_own_nan_outputs_as_null(tmp_path):
    """A model's own non-finite outputs (log of a negative input: NaN, of 0: -inf) went out as bare NaN/-Infinity,
    which strict JSON parsers refuse; they are null now (as /predict and KServe's orjson write them), and the
    binary extension still carries the IEEE values."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph([h.make_node("Log", ["x"], ["y"])], "log", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "log.onnx")
    x = [-1.0, 0.0, math.e]
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x}]}
    with Served(tmp_path / "log.onnx") as s:
        status, _, raw = s.call("POST", "/v2/models/log/infer", body)
        assert status == 200, raw
        # strict JSON: the parse_constant hook is called for NaN/Infinity/-Infinity, and must never be
        doc = json.loads(raw, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON answer"))
        (out,) = doc["outputs"]
        expected = np.log(np.asarray(x, dtype=np.float32))  # numpy's own log: nan, -inf, 1
        assert out["data"][:2] == [None, None] and out["data"][2] == pytest.approx(float(expected[2]), rel=1e-6)
        body["parameters"] = {"binary_data_output": True}
        status, headers, raw = s.call("POST", "/v2/models/log/infer", body)
        assert status == 200, raw
        n = int(headers["inference-header-content-length"])
        got = np.frombuffer(raw[n:], dtype="<f4")
        assert np.isnan(got[0]) and got[1] == -np.inf  # NaN and -inf as IEEE values
        assert got[2] == pytest.approx(float(expected[2]), rel=1e-6)

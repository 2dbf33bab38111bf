"""`onnxforge serve` against a real server on 127.0.0.1 (issue #17), with a mixed-type scikit-learn Pipeline
(float, int64 and a string category in; string labels and probabilities out) converted through the CLI: a real
`tritonclient.http` client (metadata, infer with binary and JSON tensors, BYTES in), the JSON endpoint against
scikit-learn's own predictions, each error status with its one-line message, the metrics moving, access logs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS, FIXTURES, ROOT, assert_one_line_error, run_cli
from serve_http_server import Served

NUMERIC = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave_points",
           "symmetry", "fractal_dimension"]
ROWS = 12


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-tabular")
    res = run_cli("run", CONFIGS / "sklearn_pipeline.yaml", "--until", "validate", cwd=work)
    assert res.code == 0, res.stderr
    return work / "runs" / "sklearn-pipeline"


@pytest.fixture(scope="module")
def server(run_dir):
    with Served(run_dir, "--max-body-bytes", 100_000) as s:
        yield s


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "data/cancer_test.csv").head(ROWS)


@pytest.fixture(scope="module")
def expected(table):
    """scikit-learn's own labels and probabilities for the rows (float32 cells, as the model takes them)."""
    import skops.io as sio

    path = FIXTURES / "tabular/cancer_pipeline.skops"
    pipe = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    frame = pd.DataFrame({c: table[c].to_numpy(np.float32) for c in NUMERIC} | {
        "size_band": table["size_band"].astype(str), "grade": table["grade"].to_numpy(np.int64)})
    return pipe.predict(frame), pipe.predict_proba(frame), list(pipe.classes_)


def records(table) -> list[dict]:
    return [{c: (float(r[c]) if c in NUMERIC else str(r[c]) if c == "size_band" else int(r[c]))
             for c in [*NUMERIC, "size_band", "grade"]} for _, r in table.iterrows()]


# ------------------------------------------------------------------ OIP v2 with a real client


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_metadata_and_infer(server, table, expected, binary):
    import tritonclient.http as tc

    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("sklearn-pipeline")
        meta = client.get_model_metadata("sklearn-pipeline")
        assert meta["name"] == "sklearn-pipeline" and meta["versions"] == ["1"]
        types = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
        assert types["size_band"] == ("BYTES", [-1, 1]) and types["grade"] == ("INT64", [-1, 1])
        assert types["radius"] == ("FP32", [-1, 1])
        assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "BYTES", "probabilities": "FP32"}
        inputs = []
        for c in [*NUMERIC, "size_band", "grade"]:
            col = table[c].to_numpy()
            arr = (col.astype(str).astype(object) if c == "size_band" else col.astype(np.int64) if c == "grade"
                   else col.astype(np.float32)).reshape(-1, 1)
            t = tc.InferInput(c, list(arr.shape), types[c][0])
            t.set_data_from_numpy(arr, binary_data=binary)
            inputs.append(t)
        outs = [tc.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        res = client.infer("sklearn-pipeline", inputs, outputs=outs, request_id="req-7")
        labels, proba, _ = expected
        got_labels = res.as_numpy("label").reshape(-1)
        assert [v.decode() if isinstance(v, bytes) else v for v in got_labels] == list(labels)
        np.testing.assert_allclose(res.as_numpy("probabilities"), proba, rtol=0, atol=1e-5)
        assert res.get_response()["id"] == "req-7" and res.get_response()["model_version"] == "1"
    finally:
        client.close()


def test_server_metadata_and_health(server):
    status, doc = server.json("GET", "/v2")
    assert status == 200 and doc["name"] == "onnxforge" and "binary_tensor_data" in doc["extensions"]
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, doc = server.json("GET", "/v2/models/sklearn-pipeline/versions/1/ready")
    assert status == 200 and doc["ready"] is True


# ------------------------------------------------------------------ the JSON endpoint


def test_predict_records_match_sklearn(server, table, expected):
    labels, proba, classes = expected
    status, doc = server.json("POST", "/predict", records(table))
    assert status == 200, doc
    assert doc["model_name"] == "sklearn-pipeline" and doc["model_version"] == "1"
    preds = doc["predictions"]
    assert [p["label"] for p in preds] == list(labels)
    got = np.array([[p["probabilities"][c] for c in classes] for p in preds])
    np.testing.assert_allclose(got, proba, rtol=0, atol=1e-5)
    # the wrapped form, one record, and the same answer as the list form for that row
    status, one = server.json("POST", "/predict", {"records": records(table)[3:4]})
    assert status == 200 and one["predictions"] == [preds[3]]


def test_predict_agrees_with_offline_predict(server, run_dir, table, tmp_path):
    """One code path online and offline: /predict and `onnxforge predict` on the same rows give the same values."""
    csv = tmp_path / "rows.csv"
    table.to_csv(csv, index=False)
    res = run_cli("predict", run_dir / "01-convert/model.onnx", "--input", csv, "--output", tmp_path / "out.csv")
    assert res.code == 0, res.stderr
    offline = pd.read_csv(tmp_path / "out.csv")
    _, doc = server.json("POST", "/predict", records(table))
    assert [p["label"] for p in doc["predictions"]] == offline["label"].tolist()
    online = np.array([list(p["probabilities"].values()) for p in doc["predictions"]])
    np.testing.assert_array_equal(online.astype(np.float32), offline.filter(like="probabilities").to_numpy(np.float32))


# ------------------------------------------------------------------ errors: one line, the right status, never 500


def _tensor(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _oip_body(table, **override):
    inputs = []
    for c in [*NUMERIC, "size_band", "grade"]:
        dt = "BYTES" if c == "size_band" else "INT64" if c == "grade" else "FP32"
        data = [str(v) for v in table[c]] if dt == "BYTES" else table[c].tolist()
        inputs.append(_tensor(c, [len(table), 1], dt, data))
    for t in inputs:
        t.update(override.get(t["name"], {}))
    return {"inputs": inputs}


@pytest.mark.parametrize("case", ["unknown_input", "wrong_datatype", "wrong_shape", "text_in_number", "fractional_int",
                                  "missing_input", "data_length", "record_missing_key", "record_text_in_number",
                                  "record_null_in_number", "records_not_a_list", "not_json", "seed_on_plain"])
def test_client_mistakes_are_400_naming_the_input(server, table, case):
    recs = records(table.head(2))
    bodies = {
        "unknown_input": ("/v2/models/sklearn-pipeline/infer", _oip_body(table, radius={"name": "radiuz"}), "radiuz"),
        "wrong_datatype": ("/v2/models/sklearn-pipeline/infer", _oip_body(table, radius={"datatype": "FP64"}),
                           "radius"),
        "wrong_shape": ("/v2/models/sklearn-pipeline/infer",
                        _oip_body(table, radius={"shape": [len(table) // 2, 2]}), "radius"),
        "text_in_number": ("/v2/models/sklearn-pipeline/infer",
                           _oip_body(table, area={"data": ["big"] * len(table)}), "area"),
        "fractional_int": ("/v2/models/sklearn-pipeline/infer",
                           _oip_body(table, grade={"data": [1.5] * len(table)}), "grade"),
        "missing_input": ("/v2/models/sklearn-pipeline/infer",
                          {"inputs": _oip_body(table)["inputs"][1:]}, "radius"),
        "data_length": ("/v2/models/sklearn-pipeline/infer", _oip_body(table, texture={"data": [1.0]}), "texture"),
        "record_missing_key": ("/predict", [{k: v for k, v in recs[0].items() if k != "grade"}], "grade"),
        "record_text_in_number": ("/predict", [dict(recs[0], area="big")], "area"),
        "record_null_in_number": ("/predict", [recs[0], dict(recs[1], area=None)], "area"),  # NaN, not stamped
        "records_not_a_list": ("/predict", {"records": {"radius": 1.0}}, "records"),
        "not_json": ("/predict", "{not json", "JSON"),
        "seed_on_plain": ("/predict", {"records": recs, "seed": 3}, "seed"),
    }
    path, body, named = bodies[case]
    status, headers, raw = server.call("POST", path, body)
    assert status == 400, (status, raw)
    msg = json.loads(raw)["error"]
    assert named in msg and "\n" not in msg and "Traceback" not in msg, msg
    assert " — " in msg, msg  # the problem, then the fix
    assert "--" not in msg.split(" — ", 1)[1], msg  # a CLI flag is no fix an HTTP client can apply (--allow-nan)


def test_unknown_model_version_route_are_404_and_405(server, table):
    for path in ("/v2/models/nope", "/v2/models/sklearn-pipeline/versions/9", "/v2/models/nope/infer",
                 "/nowhere"):
        method = "POST" if path.endswith("infer") else "GET"
        status, doc = server.json(method, path, _oip_body(table) if method == "POST" else None)
        assert status == 404 and "error" in doc, (path, status, doc)
    status, doc = server.json("GET", "/predict")
    assert status == 405 and "error" in doc


def test_body_over_the_cap_is_413(server):
    big = {"records": [{"radius": 1.0, "pad": "x" * 1000}] * 200}  # ~200 kB, the server caps at 100 kB
    status, doc = server.json("POST", "/predict", big)
    assert status == 413 and "100000" in doc["error"]
    chunked = (json.dumps(big).encode()[i:i + 8192] for i in range(0, 250_000, 8192))  # no Content-Length
    status, _, raw = server.call("POST", "/predict", chunked, headers={"Transfer-Encoding": "chunked"})
    assert status == 413, raw


def test_full_queue_is_503_and_the_queued_request_still_answers(run_dir, table):
    """A request waits (max_queue_delay_ms) in a queue of one: the next one is refused with 503 + Retry-After."""
    with Served(run_dir, "--max-queue", 1, "--max-queue-delay-ms", 1500) as s:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=s.json("POST", "/predict", records(table.head(1)))))
        t.start()
        deadline = time.monotonic() + 10
        while s.metrics().get('onnxforge_queue_depth{model="sklearn-pipeline",version="1"}', 0) < 1:
            assert time.monotonic() < deadline, "the first request never queued"
            time.sleep(0.02)
        status, headers, raw = s.call("POST", "/predict", records(table.head(1)))
        assert status == 503 and headers.get("retry-after") == "1", (status, raw)
        assert "max_queue=1" in json.loads(raw)["error"]
        t.join(30)
        assert first["r"][0] == 200, first


# ------------------------------------------------------------------ operations


def _count(m: dict, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return sum(v for k, v in m.items() if k.startswith(name + "{") and all(
        f'{k2}="{v2}"' in k for k2, v2 in labels.items())) if want else m.get(name, 0.0)


def test_metrics_counters_move(server, table):
    before = server.metrics()
    for _ in range(3):
        assert server.call("POST", "/predict", records(table.head(2)))[0] == 200
    assert server.call("POST", "/predict", [{"radius": 1}])[0] == 400
    after = server.metrics()

    def moved(name, **labels):
        return _count(after, name, **labels) - _count(before, name, **labels)

    assert moved("onnxforge_http_requests_total", route="/predict", method="POST", status="200") == 3
    assert moved("onnxforge_http_requests_total", route="/predict", method="POST", status="400") == 1
    assert moved("onnxforge_http_request_duration_seconds_count", route="/predict") == 4
    assert moved("onnxforge_inference_requests_total", model="sklearn-pipeline", version="1") == 3
    assert moved("onnxforge_inference_count_total", model="sklearn-pipeline", version="1") == 6  # rows
    assert 1 <= moved("onnxforge_execution_count_total", model="sklearn-pipeline", version="1") <= 3
    assert 'onnxforge_queue_depth{model="sklearn-pipeline",version="1"}' in after


def test_access_log_is_one_json_line_per_request(server):
    n = len(server.lines)
    server.call("GET", "/v2/health/live")
    deadline = time.monotonic() + 5
    while not any('"/v2/health/live"' in ln for ln in server.lines[n:]) and time.monotonic() < deadline:
        time.sleep(0.02)
    line = next(ln for ln in server.lines[n:] if '"/v2/health/live"' in ln)
    rec = json.loads(line)
    assert rec["method"] == "GET" and rec["status"] == 200 and rec["route"] == "/v2/health/live"
    assert rec["ms"] >= 0 and rec["client"].startswith("127.0.0.1:")


def test_openapi_document_and_docs_page(server):
    status, doc = server.json("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/predict", "/v2/models/{name}/infer", "/metrics"} <= set(doc["paths"])
    rec = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert rec["items"]["properties"]["size_band"]["enum"] == ["small", "medium", "large"]
    status, headers, page = server.call("GET", "/docs")
    assert status == 200 and b"openapi.json" in page and b"http" not in page.lower().replace(b"http-equiv", b"")


# ------------------------------------------------------------------ the command line


def test_bad_target_and_busy_port_exit_2(tmp_path, server):
    err = assert_one_line_error(run_cli("serve", tmp_path / "missing.onnx"))
    assert "missing.onnx" in err
    res = run_cli("serve", ROOT / "fixtures" / "data" / "digits_test.npz")
    assert_one_line_error(res)
    res = run_cli("serve", server_target(server), "--port", server.port)
    assert "cannot listen" in assert_one_line_error(res)
    assert "--workers" in assert_one_line_error(run_cli("serve", server_target(server), "--workers", 0))


def server_target(server) -> str:
    return server.proc.args[4]


def test_cli_imports_no_web_framework():
    code = ("import sys, onnxforge.cli; bad = [m for m in ('starlette', 'uvicorn', 'prometheus_client', 'fastapi') "
            "if m in sys.modules]; assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_threads_follow_the_cgroup_quota(tmp_path):
    from onnxforge.serve.quota import available_cpus, cgroup_cpus, threads_per_worker

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(tmp_path) == 1.5
    assert available_cpus(tmp_path) == 1 and threads_per_worker(2, tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpus(v1) == 4.0


@pytest.mark.slow  # two worker processes each load the model: ~10 s
def test_two_workers_share_the_port_and_sum_their_metrics(run_dir, table):
    with Served(run_dir, "--workers", 2, "--threads", 1) as s:
        for _ in range(6):  # fresh connections: the kernel spreads them over both workers
            assert s.call("POST", "/predict", records(table.head(1)))[0] == 200
        m = s.metrics()
        assert m['onnxforge_inference_requests_total{model="sklearn-pipeline",version="1"}'] == 6
        assert _count(m, "onnxforge_http_requests_total", route="/predict", status="200") == 6
    assert s.proc.returncode == 0

"""`onnxforge serve` on a run folder of the digits CNN (convert + optimize): every stage's artifact is a version,
each agreeing with torch; concurrent single-row requests are micro-batched (rows scored > onnxruntime runs) and
still each get their own rows' logits; SIGTERM drains: every accepted request is answered before the exit."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, FIXTURES, ROOT, run_cli
from serve_http_server import Served

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from fixtures.torch_models import digits_cnn  # noqa: E402

NAME = "serve-cnn"
pytestmark = pytest.mark.slow  # a torch export + optimize and five servers: ~75 s on 2 cores


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-cnn")
    cfg = yaml.safe_load((CONFIGS / "torch_cnn.yaml").read_text())
    cfg["name"] = NAME
    for k in ("factory", "path"):
        cfg["source"][k] = str(CONFIGS / cfg["source"][k].split(":")[0]) + (
            ":" + cfg["source"][k].split(":")[1] if ":" in cfg["source"][k] else "")
    cfg["data"] = {k: str(CONFIGS / v) if k in ("path", "calibration") else v for k, v in cfg["data"].items()}
    cfg["stages"] = {"convert": {"opset": 18}, "optimize": {"level": "extended", "portable": True}}
    (work / "cnn.yaml").write_text(yaml.safe_dump(cfg))
    res = run_cli("run", work / "cnn.yaml", cwd=work)
    assert res.code == 0, res.stderr
    return work / "runs" / NAME


@pytest.fixture(scope="module")
def digits():
    d = np.load(FIXTURES / "data/digits_test.npz")
    x = d["input"][:40]
    module = digits_cnn()
    module.load_state_dict(torch.load(FIXTURES / "torch/digits_cnn.pt", weights_only=True))
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    return x, want


def _infer_body(x, rid=None):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}
    if rid is not None:
        body["id"] = rid
    return body


def _logits(doc):
    out = next(o for o in doc["outputs"] if o["name"] == "logits")
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_every_stage_is_a_version_and_agrees_with_torch(run_dir, digits):
    x, want = digits
    with Served(run_dir) as s:
        status, meta = s.json("GET", f"/v2/models/{NAME}")
        assert status == 200 and meta["versions"] == ["1", "2"]
        _, models = s.json("GET", "/models")
        assert [v["stage"] for v in models["versions"]] == ["convert", "optimize"]
        assert models["default_version"] == "2"
        for path in (f"/v2/models/{NAME}/infer", f"/v2/models/{NAME}/versions/1/infer",
                     f"/v2/models/{NAME}/versions/2/infer"):
            status, doc = s.json("POST", path, _infer_body(x[:8]))
            assert status == 200, doc
            np.testing.assert_allclose(_logits(doc), want[:8], rtol=1e-5, atol=1e-4)
        assert doc["model_version"] == "2"
        status, doc = s.json("POST", "/predict?version=1", [{"input": x[0].tolist()}])
        assert status == 200 and doc["model_version"] == "1"
        np.testing.assert_allclose(doc["predictions"][0]["logits"], want[0], rtol=1e-5, atol=1e-4)
        assert s.call("POST", f"/v2/models/{NAME}/versions/3/infer", _infer_body(x[:1]))[0] == 404


def test_concurrent_rows_are_batched_and_each_gets_its_own(run_dir, digits):
    x, want = digits
    n = 32
    with Served(run_dir, "--max-batch-size", 16, "--max-queue-delay-ms", 30) as s:
        got: dict[int, tuple] = {}
        barrier = threading.Barrier(n)

        def one(i):
            barrier.wait()
            got[i] = s.json("POST", f"/v2/models/{NAME}/infer", _infer_body(x[i:i + 1], rid=str(i)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(n):
            status, doc = got[i]
            assert status == 200 and doc["id"] == str(i), doc
            np.testing.assert_allclose(_logits(doc), want[i:i + 1], rtol=1e-5, atol=1e-4)
        m = s.metrics()
        rows = m[f'onnxforge_inference_count_total{{model="{NAME}",version="2"}}']
        runs = m[f'onnxforge_execution_count_total{{model="{NAME}",version="2"}}']
        assert rows == n and runs < n / 2, (rows, runs)  # effective batch size above 2


def test_batching_off_runs_each_request_alone(run_dir, digits):
    x, _ = digits
    with Served(run_dir, "--max-batch-size", 0) as s:
        for i in range(3):
            assert s.call("POST", f"/v2/models/{NAME}/infer", _infer_body(x[i:i + 2]))[0] == 200
        m = s.metrics()
        assert m[f'onnxforge_execution_count_total{{model="{NAME}",version="2"}}'] == 3
        assert m[f'onnxforge_inference_count_total{{model="{NAME}",version="2"}}'] == 6


def test_sigterm_drains_accepted_requests(run_dir, digits):
    """Requests held in the batch queue when SIGTERM arrives are all answered, with their own logits; then the
    process exits 0 and nothing listens any more."""
    x, want = digits
    n = 6
    s = Served(run_dir, "--max-queue-delay-ms", 2000, "--max-batch-size", 64)
    try:
        got: dict[int, tuple] = {}

        def one(i):
            got[i] = s.json("POST", f"/v2/models/{NAME}/infer", _infer_body(x[i:i + 1]))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        key = f'onnxforge_queue_depth{{model="{NAME}",version="2"}}'
        while s.metrics().get(key, 0) < n:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert sorted(got) == list(range(n))
        for i in range(n):
            status, doc = got[i]
            assert status == 200, doc
            np.testing.assert_allclose(_logits(doc), want[i:i + 1], rtol=1e-5, atol=1e-4)
        assert s.proc.wait(30) == 0, "\n".join(s.lines[-20:])
        with pytest.raises(OSError):
            s.call("GET", "/v2/health/live", timeout=2)
        assert not any("Traceback" in ln for ln in s.lines), "\n".join(s.lines[-30:])
    finally:
        s.stop()


def test_json_tensor_outputs_are_plain_lists(run_dir, digits):
    x, _ = digits
    with Served(run_dir) as s:
        status, headers, raw = s.call("POST", f"/v2/models/{NAME}/infer", _infer_body(x[:2]))
        assert status == 200 and headers["content-type"].startswith("application/json")
        doc = json.loads(raw)
        assert doc["outputs"][0]["datatype"] == "FP32" and doc["outputs"][0]["shape"] == [2, 10]

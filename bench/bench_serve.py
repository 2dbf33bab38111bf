"""`onnxforge serve` under bounded load on loopback (issue #17): req/s and p50/p99 at concurrency 1, 16 and 64 for a
tabular model (the cancer random forest) and the digits CNN, against (a) in-process `session.run` on the same row
and (b) a minimal hand-written FastAPI endpoint of the usual tutorial kind (pydantic body, `session.run` per
request, same model, same uvicorn), each server one process.

The load comes from `wrk` (one thread, `make wrk`): a Python client eats the CPU the server needs on a 2-core box.
Each cell runs a fixed time and stops by itself; servers alternate order per cell (interleaved), each cell twice,
and the table shows the run with the upper-median req/s. Every server's answer to the timed request is checked against
in-process onnxruntime before timing, wrk's non-2xx count must be 0, and the server's onnxruntime threads are
read back from its session (/models)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 16, 64)
MODELS = {  # name → (config, input name, one request's row(s) from the fixtures)
    "forest (tabular)": "sklearn_forest",
    "digits CNN": "torch_cnn",
}
TUTORIAL = '''
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
so = ort.SessionOptions()
so.intra_op_num_threads = {threads}
sess = ort.InferenceSession({model!r}, so, providers=["CPUExecutionProvider"])
NAME = sess.get_inputs()[0].name


class Item(BaseModel):
    data: list


@app.post("/predict")
def predict(item: Item):
    x = np.array(item.data, dtype=np.float32)
    outs = sess.run(None, {{NAME: x}})
    return {{o.name: v.tolist() for o, v in zip(sess.get_outputs(), outs)}}
'''


def _convert(config: str, work: Path) -> Path:
    res = subprocess.run([sys.executable, "-m", "onnxforge", "run", str(ROOT / "configs" / f"{config}.yaml"),
                          "--until", "convert"], cwd=work, capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise RuntimeError(f"{config}: convert exited {res.returncode}: {res.stderr[-500:]}")
    return next((work / "runs").glob(f"{config.replace('_', '-')}*/01-convert/model.onnx"))


def _row(config: str) -> np.ndarray:
    if config == "torch_cnn":
        return np.load(ROOT / "fixtures/data/digits_test.npz")["input"][:1]
    import pandas as pd

    cols = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave_points",
            "symmetry", "fractal_dimension"]
    return pd.read_csv(ROOT / "fixtures/data/cancer_test.csv")[cols].head(1).to_numpy(np.float32)


class Proc:
    def __init__(self, cmd: list[str], port: int, env: dict | None = None, cwd: Path | None = None):
        self.port = port
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                                  stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                get(port, "/openapi.json")
                return
            except OSError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[:4]} did not start") from None
                time.sleep(0.2)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST" if body is not None else "GET", path, body=body,
                  headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(port: int, path: str, body: bytes, conns: int, seconds: int, work: Path) -> dict:
    script = work / f"post-{port}.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s",
                          str(script), f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def run(quick: bool = False) -> list[dict]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed — run `make wrk` (apt-get install -y wrk)")
    import onnxruntime as ort

    from bench import ort_threads
    from onnxforge import timing

    seconds = 2 if quick else 8
    rounds = 1 if quick else 2
    threads = 1
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    rows, notes, data = [], [], {}
    try:
        for label, config in MODELS.items():
            model = _convert(config, work)
            x = _row(config)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
            ok, read = ort_threads(sess, threads)
            assert ok, read
            name = sess.get_inputs()[0].name
            want = sess.run(None, {name: x})
            feeds = {name: x}
            inproc = timing.measure(lambda s=sess, f=feeds: s.run(None, f), runs=2000, warmup=50,
                                    max_seconds=3)["p50_ms"]
            oip = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                          "data": x.reshape(-1).tolist()}]}).encode()
            tut = json.dumps({"data": x.tolist()}).encode()
            app = work / f"tutorial_{config}.py"
            app.write_text(textwrap.dedent(TUTORIAL.format(threads=threads, model=str(model))))
            servers = {}
            p1, p2 = _free_port(), _free_port()
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            servers["onnxforge serve"] = (Proc([sys.executable, "-m", "onnxforge", "serve", str(model), "--port",
                                                str(p1), "--threads", str(threads), "--name", "m"], p1, env),
                                          "/v2/models/m/infer", oip)
            # `uvicorn main:app` as the tutorials start it: its access log on (info), like onnxforge serve's
            servers["tutorial FastAPI"] = (Proc([sys.executable, "-m", "uvicorn", app.stem + ":app", "--port",
                                                 str(p2)], p2, env, work), "/predict", tut)
            try:
                # outputs checked before timing: each server's answer to the timed request vs in-process ORT
                status, raw = get(p1, servers["onnxforge serve"][1], oip)
                doc = json.loads(raw)
                assert status == 200, doc
                for o, w in zip(doc["outputs"], want, strict=True):
                    np.testing.assert_allclose(np.asarray(o["data"]).reshape(w.shape).astype(w.dtype) if
                                               w.dtype.kind == "f" else np.asarray(o["data"]).reshape(w.shape),
                                               w, rtol=1e-6, atol=1e-6)
                status2, raw2 = get(p2, "/predict", tut)
                tdoc = json.loads(raw2)
                assert status == 200 and status2 == 200
                for o, w in zip(sess.get_outputs(), want, strict=True):
                    np.testing.assert_allclose(np.asarray(tdoc[o.name]), w, rtol=1e-6, atol=1e-6)
                _, models = get(p1, "/models")
                served_threads = json.loads(models)["versions"][0]["ort_threads"]
                assert served_threads == threads, served_threads
                cells: dict[tuple, list[dict]] = {}
                for c in CONCURRENCY:
                    for r in range(rounds):
                        order = list(servers) if (r + c) % 2 == 0 else list(servers)[::-1]
                        for s in order:
                            proc, path, body = servers[s]
                            wrk(proc.port, path, body, c, 1, work)  # warm-up, untimed
                            cells.setdefault((s, c), []).append(wrk(proc.port, path, body, c, seconds, work))
                for c in CONCURRENCY:
                    mid = {}
                    for s in servers:
                        runs = sorted(cells[(s, c)], key=lambda d: d["rps"])
                        mid[s] = runs[len(runs) // 2]
                        assert all(d["non2xx"] == 0 for d in runs), (s, c, runs)
                    ours, tut_ = mid["onnxforge serve"], mid["tutorial FastAPI"]
                    rows.append([label, c, ours["rps"], ours["p50"], ours["p99"], tut_["rps"], tut_["p50"],
                                 tut_["p99"], f"{ours['rps'] / tut_['rps']:.2f}×", inproc,
                                 ours["p50"] - inproc if c == 1 else float("nan")])
                data[label] = {"cells": {f"{s}@{c}": v for (s, c), v in cells.items()}, "inprocess_p50_ms": inproc,
                               "threads": read, "served_threads": served_threads}
            finally:
                for proc, _, _ in servers.values():
                    proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes.append(f"wrk -t1, {seconds} s per cell, {rounds} round(s) per cell with the server order alternating; the "
                 "row shows the upper-median-req/s round (with 2 rounds: the faster one). One request = one row (OIP v2 JSON for onnxforge, a "
                 "{\"data\": [[...]]} body for the tutorial endpoint). Both servers: one uvicorn process, "
                 f"onnxruntime intra-op {threads} thread (read back), access logs on and discarded. onnxforge "
                 "serve at its defaults: max_batch_size 64, max_queue_delay_ms 0 (a batch is what queued while "
                 "the previous run was busy). In-process: session.run on the same row, p50. Overhead = served p50 "
                 "at concurrency 1 − in-process p50. Goals: overhead ≤ 1 ms at c=1; ≥ 2× the tutorial's req/s "
                 "at c=64; p99 ≤ 20 ms at c=16.")
    return [{"title": "onnxforge serve vs a tutorial FastAPI endpoint (wrk on loopback)",
             "columns": ["model", "concurrency", "serve req/s", "serve p50 ms", "serve p99 ms", "tutorial req/s",
                         "tutorial p50 ms", "tutorial p99 ms", "serve / tutorial", "in-process p50 ms",
                         "overhead p50 ms"],
             "rows": rows, "notes": " ".join(notes), "data": data}]

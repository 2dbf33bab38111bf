"""`onnxforge serve` on a PyMC posterior-predictive artifact (Bayesian linear regression): /predict returns mean,
std, quantiles by level and draws per record; a per-request seed replays the same draws, and they are the draws
`onnxforge predict --seed` writes for the same rows (one scoring path online and offline)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONFIGS, FIXTURES, run_cli
from serve_http_server import Served

ROWS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-pymc")
    res = run_cli("run", CONFIGS / "pymc_linear.yaml", "--until", "convert", cwd=work)
    assert res.code == 0, res.stderr
    return work / "runs" / "pymc-linear"


@pytest.fixture(scope="module")
def server(run_dir):
    with Served(run_dir) as s:
        yield s


@pytest.fixture(scope="module")
def rows():
    d = np.load(FIXTURES / "data/pymc_linear.npz")
    return {k: d[k][:ROWS] for k in ("bmi", "bp", "s5")}


def _records(rows):
    return [{k: float(rows[k][i]) for k in rows} for i in range(ROWS)]


def test_named_bayesian_outputs_per_record(server, run_dir, rows, tmp_path):
    status, doc = server.json("POST", "/predict", _records(rows))
    assert status == 200, doc
    preds = doc["predictions"]
    assert len(preds) == ROWS
    p = preds[0]
    assert set(p["quantiles"]) == {"q0.05", "q0.5", "q0.95"} and len(p["draws"]) == 500
    assert p["quantiles"]["q0.05"] < p["quantiles"]["q0.5"] < p["quantiles"]["q0.95"] and p["std"] > 0
    # mean/std/quantiles are deterministic: the offline scorer's values for the same rows
    np.savez(tmp_path / "rows.npz", **rows)
    res = run_cli("predict", run_dir / "01-convert/model.onnx", "--input", tmp_path / "rows.npz", "--output",
                  tmp_path / "out.npz", "--seed", 11)
    assert res.code == 0, res.stderr
    off = np.load(tmp_path / "out.npz")
    mean_name = next(k for k in off if k.endswith("mean") or k == "mean")
    np.testing.assert_allclose([q["mean"] for q in preds], off[mean_name].reshape(-1), rtol=1e-6)


def test_seeded_draws_replay_and_match_offline_predict(server, run_dir, rows, tmp_path):
    body = {"records": _records(rows), "seed": 11}
    s1, a = server.json("POST", "/predict", body)
    s2, b = server.json("POST", "/predict", body)
    s3, c = server.json("POST", "/predict", dict(body, seed=12))
    assert s1 == s2 == s3 == 200
    draws = np.array([p["draws"] for p in a["predictions"]])
    assert draws.tolist() == [p["draws"] for p in b["predictions"]]  # same seed, same draws
    assert draws.tolist() != [p["draws"] for p in c["predictions"]]
    np.savez(tmp_path / "rows.npz", **rows)
    res = run_cli("predict", run_dir / "01-convert/model.onnx", "--input", tmp_path / "rows.npz", "--output",
                  tmp_path / "out.npz", "--seed", 11)
    assert res.code == 0, res.stderr
    off = np.load(tmp_path / "out.npz")
    draws_name = next(k for k in off if "draw" in k)
    np.testing.assert_array_equal(draws.astype(np.float32), off[draws_name].astype(np.float32))
    # unseeded requests draw afresh
    _, d = server.json("POST", "/predict", _records(rows))
    _, e = server.json("POST", "/predict", _records(rows))
    assert [p["draws"] for p in d["predictions"]] != [p["draws"] for p in e["predictions"]]


def test_bad_seed_is_400(server, rows):
    status, doc = server.json("POST", "/predict", {"records": _records(rows), "seed": -1})
    assert status == 400 and "seed" in doc["error"]

"""examples/node (issue #18): the artifacts score the same in Node.js with onnxruntime-node as in Python — a
tabular sklearn Pipeline (string and int64 columns, label + probabilities) and a PyMC posterior predictive (string
category encoded in the graph, seeded draws). The pinned npm package is installed by `npm ci` from the committed
package-lock.json into a cache folder reused across runs (`make test` installs node/npm where missing)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS, FIXTURES, ROOT, run_cli

from onnxforge.score import Scorer

EXAMPLE = ROOT / "examples" / "node"
pytestmark = pytest.mark.slow


def node_folder() -> Path:
    """examples/node with its node_modules, in a cache folder keyed by the lock file (npm ci once per lock)."""
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    base = Path(os.environ.get("ONNXFORGE_NODE_CACHE", Path.home() / ".cache" / "onnxforge" / "node"))
    folder = base / hashlib.sha256(lock).hexdigest()[:16]
    if not (folder / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(EXAMPLE / name, folder / name)
        # the postinstall would fetch CUDA binaries (unreachable here); the CPU binaries ship in the package
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip", "ONNXRUNTIME_NODE_INSTALL_CUDA": "skip"}
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-2000:]
    shutil.copy(EXAMPLE / "score.js", folder / "score.js")  # beside node_modules, where require() looks
    return folder


def to_json(feeds: dict) -> dict:
    kinds = {"f": "float32", "i": "int64", "O": "string", "U": "string"}
    out = {}
    for k, v in feeds.items():
        a = np.asarray(v)
        out[k] = {"type": kinds[a.dtype.kind], "dims": list(a.shape),
                  "data": [str(x) for x in a.reshape(-1)] if a.dtype.kind in "OU" else a.reshape(-1).tolist()}
    return out


def node_outputs(folder: Path, model: Path, feeds: dict, tmp: Path) -> dict[str, np.ndarray]:
    (tmp / "feeds.json").write_text(json.dumps(to_json(feeds)))
    p = subprocess.run(["node", "score.js", str(model), str(tmp / "feeds.json"), str(tmp / "out.json")],
                       cwd=folder, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = {}
    for name, t in json.loads((tmp / "out.json").read_text()).items():
        dtype = {"float32": np.float32, "int64": np.int64, "string": object}[t["type"]]
        data = [int(x) for x in t["data"]] if t["type"] == "int64" else t["data"]
        out[name] = np.asarray(data, dtype=dtype).reshape(t["dims"])
    return out


@pytest.mark.parametrize("config", ["sklearn_pipeline", "pymc_hier"])
def test_node_scores_like_python(config, tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed: `make node` installs them (apt-get install nodejs npm)")
    res = run_cli("convert", "--config", CONFIGS / f"{config}.yaml", "-o", tmp_path / "model.onnx")
    assert res.code == 0, res.stderr
    if config == "sklearn_pipeline":
        rows = pd.read_csv(FIXTURES / "data/cancer_test.csv")
    else:
        z = np.load(FIXTURES / "data/pymc_hier.npz")
        rows = pd.DataFrame({"x": z["x"], "group": z["group"]})
    scorer = Scorer(tmp_path / "model.onnx", threads=1)  # a fresh session: the seed baked in at convert
    feeds = scorer.feeds(rows)
    want = scorer.run(feeds)
    got = node_outputs(node_folder(), tmp_path / "model.onnx", feeds, tmp_path)
    assert list(got) == list(want)
    for name, w in want.items():
        w = np.asarray(w)
        assert got[name].shape == w.shape, name
        if w.dtype.kind in "OUi":
            np.testing.assert_array_equal(got[name].astype(w.dtype), w, err_msg=name)
        else:  # the same kernels (onnxruntime-node 1.30, Python 1.32): equal to float32 rounding
            np.testing.assert_allclose(got[name], w, rtol=1e-6, atol=1e-6, err_msg=name)

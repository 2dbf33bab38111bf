"""Default tolerances (Frontend.tolerance), set from measurement (bench/bench_tolerances.py → bench/out/tolerances.md):
each frontend's real conversion passes validate at its defaults, and the same artifact with a 1000× loss of exactness
at its final output fails — exit 1, naming the output — where the former default (rtol 1e-3, atol 1e-5) let it pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import CONFIGS, ROOT, run_cli

F32_EPS = float(np.finfo(np.float32).eps)

# case → (example config, the output checked, its default (rtol, atol), the error the real conversion achieves on
# that output relative to its largest |value| — max_abs / max|ref| in bench/out/tolerances.md, at least float32's eps)
CASES = {
    "sklearn-linear": ("sklearn_pipeline", "probabilities", (0.0, 1e-5), 9.6e-8),
    "sklearn-trees": ("sklearn_forest", "probabilities", (0.0, 1e-5), 1.3e-7),
    "xgboost": ("xgboost_regressor", "prediction", (1e-4, 1e-4), 1.6e-7),
    "lightgbm": ("lightgbm_classifier", "probabilities", (0.0, 1e-5), 7.1e-8),
    "torch": ("torch_mlp", "logits", (1e-5, 1e-4), 5.1e-7),
    "keras": ("keras_functional", "logits", (1e-5, 1e-4), 1.5e-7),
    "pymc": ("pymc_linear", "mean", (1e-5, 1e-5), 8e-8),
}
OLD_DEFAULT = (1e-3, 1e-5)  # what every framework but pymc/onnx had before the measurement


def config_for(example: str, tmp: Path) -> Path:
    """The example config with its paths made absolute and no per-output tolerance of its own (the defaults rule)."""
    text = (CONFIGS / f"{example}.yaml").read_text().replace("../", f"{ROOT}/")
    cfg = yaml.safe_load(text)
    cfg["stages"] = {"convert": {}, "validate": {}}
    cfg["name"] = f"tol-{example}".replace("_", "-")
    out = tmp / f"{example}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def perturbed(model_path: Path, output: str, k: float, out: Path) -> Path:
    """The model with its output `output` multiplied by (1 + k): a relative loss of exactness at the final output."""
    m = onnx.load(str(model_path))
    g = m.graph
    inner = f"{output}__exact"
    for node in g.node:
        node.output[:] = [inner if o == output else o for o in node.output]
        node.input[:] = [inner if i == output else i for i in node.input]
    factor = onnx.helper.make_tensor(f"{output}__loss", onnx.TensorProto.FLOAT, [], [1.0 + k])
    g.initializer.append(factor)
    g.node.append(onnx.helper.make_node("Mul", [inner, factor.name], [output], name=f"{output}__lose_exactness"))
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """Each case's example config run (convert + validate at the defaults) once."""
    tmp = tmp_path_factory.mktemp("tolerances")
    out = {}
    for case, (example, *_rest) in CASES.items():
        cfg = config_for(example, tmp)
        res = run_cli("run", cfg, "--run-dir", tmp / "runs", "--json")
        out[case] = (cfg, res, tmp / "runs" / yaml.safe_load(cfg.read_text())["name"])
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_tolerance_passes_the_real_conversion(converted, case):
    _, output, (rtol, atol), _ = CASES[case]
    cfg, res, run = converted[case]
    assert res.code == 0, res.stderr[-2000:]
    v = json.loads((run / "02-validate/validation.json").read_text())
    assert v["verdict"] == "pass" and v["against"] == "source"
    mine = [c for c in v["comparisons"] if c["output"] == output]
    assert mine and all(c["pass"] and (c["rtol"], c["atol"]) == (rtol, atol) for c in mine), mine
    # convert's self-check holds the artifact to the same per-output default
    conv = next(s for s in json.loads(res.stdout)["result"]["stages"] if s["name"] == "convert")
    o = conv["summary"]["verified"]["outputs"][output]
    assert o["pass"] and (o["rtol"], o["atol"]) == (rtol, atol), o


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_1000x_loss_of_exactness_fails(converted, case, tmp_path):
    _, output, _, achieved = CASES[case]
    cfg, res, run = converted[case]
    assert res.code == 0, res.stderr[-2000:]
    k = 1000 * max(achieved, F32_EPS)
    assert k < OLD_DEFAULT[0]  # a loss the former rtol 1e-3 absorbed
    bad = perturbed(run / "01-convert/model.onnx", output, k, tmp_path / "lossy.onnx")
    got = run_cli("validate", bad, "-c", cfg, "--json")
    assert got.code == 1, (got.stdout[-2000:], got.stderr[-2000:])
    assert output in got.stderr
    result = json.loads(got.stdout)
    failing = (result.get("result") or result.get("error", {}).get("details") or {}).get("failing")
    assert failing is None or output in failing, result
    # the former default let exactly this model through
    old = run_cli("validate", bad, "-c", cfg, "--rtol", OLD_DEFAULT[0], "--atol", OLD_DEFAULT[1])
    assert old.code == 0, old.stderr[-2000:]


def test_onnx_frontend_default(converted, tmp_path):
    """framework: onnx (the reference is the file itself without graph optimizations): the torch MLP's artifact."""
    from onnxforge.registry import frontend

    _, res, run = converted["torch"]
    assert res.code == 0
    src = run / "01-convert/model.onnx"
    fe = frontend("onnx")
    rtol, atol = fe.tolerance(None, None, "logits")
    cfg = {"name": "tol-onnx", "source": {"framework": "onnx", "path": str(src)},
           "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}],
           "data": {"path": str(ROOT / "fixtures/data/digits_test.npz")}, "stages": {"validate": {}}}
    path = tmp_path / "onnx.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ok = run_cli("validate", src, "-c", path, "--json")
    assert ok.code == 0, ok.stderr[-2000:]
    comps = json.loads(ok.stdout)["result"]["summary"]["comparisons"]
    assert comps and all(c["pass"] and (c["rtol"], c["atol"]) == (rtol, atol) for c in comps if c["output"] == "logits")
    bad = perturbed(src, "logits", 1000 * CASES["torch"][3], tmp_path / "lossy.onnx")
    got = run_cli("validate", bad, "-c", path, "--json")
    assert got.code == 1 and "logits" in got.stderr, (got.stdout[-1500:], got.stderr[-1500:])


def test_tolerance_by_family_and_output_kind():
    """The sklearn frontend tells tree ensembles, linear models and the rest apart, and probabilities from values."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    from onnxforge.config import parse_config
    from onnxforge.registry import frontend

    fe = frontend("sklearn")
    cfg = parse_config({"name": "t", "source": {"framework": "sklearn", "path": str(ROOT / "pyproject.toml")}},
                       ROOT / "t.yaml")
    X, y = np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20) % 2
    assert fe.family(make_pipeline(StandardScaler(), Ridge()).fit(X, y)) == "linear"
    assert fe.family(RandomForestRegressor(3).fit(X, y)) == "trees"
    assert fe.family(SVR().fit(X, y)) == "other"
    clf = LogisticRegression().fit(X, y)
    assert fe.output_kind(clf, cfg, "probabilities") == "probabilities"
    assert fe.output_kind(clf, cfg, "label") == "value"  # labels are compared exactly whatever the tolerance
    assert fe.output_kind(Ridge().fit(X, y), cfg, "variable") == "value"
    assert fe.tolerance(clf, cfg, "probabilities") != fe.tolerance(Ridge().fit(X, y), cfg, "variable")

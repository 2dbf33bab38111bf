"""pymc frontend: every example posterior converts through the real convert stage, and the artifact's
deterministic outputs (mean, std, quantiles) equal a reference recomputed from the raw netcdf without onnxforge
(tests/test_bayes_reference.py's helpers) to 1e-5 — at batch 1 and for the whole test split. Plus the graph's contract: opset, no Bernoulli op,
metadata, in-graph category encoding with both unseen policies, seeds, thinning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_bayes_reference import encode, example_feeds, moments, summaries, thinned

from onnxforge.config import parse_config, read_yaml
from onnxforge.data import feeds_from_table, load_table
from onnxforge.errors import UserError
from onnxforge.pipeline import run_pipeline
from onnxforge.registry import frontend

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("linear", "logistic", "poisson", "hier")
TOL = {"rtol": 1e-5, "atol": 1e-5}


def convert(name: str, run_dir: Path, run_name: str | None = None, **source):
    """configs/pymc_NAME.yaml through the real convert stage, with source overrides. Returns (cfg, model path)."""
    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    raw["source"] = {**raw["source"], **source}
    raw.update(stages={"convert": {}}, name=run_name or raw["name"])
    cfg = parse_config(raw, path, lines, run_dir=run_dir)  # as `run --run-dir`: outside the config's folder
    manifest = run_pipeline(cfg, force=True)
    return cfg, cfg.run_path / manifest["final_model"]


def session(path: Path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess, feeds) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bayes")
    out = {}
    for name in EXAMPLES:
        cfg, model = convert(name, tmp)
        fe = frontend("pymc")
        native = fe.load(cfg)
        feeds = feeds_from_table(load_table(cfg.data.path), cfg.inputs)
        out[name] = (cfg, model, native, feeds)
    return out


def _reference(name: str, feeds, cfg, samples=1000, qs=None) -> dict[str, np.ndarray]:
    """mean/std/quantiles from the raw posterior file: own reader, thinning, encoding and model math."""
    post, levels = thinned(cfg.source.path, samples)
    mean_s, var_s, _ = moments(name, post, levels, feeds)
    return summaries(mean_s, var_s, cfg.source.outputs.quantiles if qs is None else qs)


@pytest.mark.parametrize("name", EXAMPLES)
def test_deterministic_outputs_equal_raw_reference(built, name):
    cfg, model, native, feeds = built[name]
    ref = _reference(name, example_feeds(name), cfg)
    assert set(ref) == {"mean", "std", "quantiles"}
    # the loader-based numpy evaluation (validate's reference) agrees with the independent one
    mine = frontend("pymc").predict(native, feeds, cfg)
    for key, want in ref.items():
        np.testing.assert_allclose(mine[key], want, rtol=1e-10, atol=1e-12, err_msg=f"{name}.{key} (numpy ref)")
    sess = session(model)
    got = run(sess, feeds)
    rows = len(feeds[cfg.inputs[0].name])
    for key, want in ref.items():
        assert got[key].shape == want.shape and got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], want, **TOL, err_msg=f"{name}.{key}")
    for i in range(8):  # batch 1 through the same graph
        one = run(sess, {k: v[i:i + 1] for k, v in feeds.items()})
        for key, want in ref.items():
            np.testing.assert_allclose(one[key][0], want[i], **TOL, err_msg=f"{name}.{key} row {i}")
    assert got["draws"].shape == (rows, 500)
    # the reference is not degenerate: rows differ, quantiles bracket the mean
    assert np.ptp(ref["mean"]) > 0.1
    q = ref["quantiles"]
    assert (q[:, 0] <= q[:, 1]).all() and (q[:, 1] <= q[:, 2]).all() and (q[:, 0] < ref["mean"]).all()


@pytest.mark.parametrize("name", EXAMPLES)
def test_graph_contract(built, name):
    cfg, model_path, native, _ = built[name]
    model = onnx.load(str(model_path))
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert opsets["ai.onnx"] <= 21
    ops = {n.op_type for n in model.graph.node}
    assert "Bernoulli" not in ops and ops & {"RandomUniformLike", "RandomNormalLike"}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxforge.stochastic_outputs"]) == ["draws"]
    bayes = json.loads(meta["onnxforge.bayes"])
    assert bayes["posterior"]["samples"] == 500 and bayes["posterior"]["float32_error"]["max_rel"] < 1e-7
    assert bayes["family"] == cfg.source.family
    assert [i.name for i in model.graph.input] == [s.name for s in cfg.inputs]
    # only the variables the transform and the family use are embedded
    assert set(bayes["variables"]) == native.used
    if name == "hier":
        assert "z_alpha" not in native.used
        assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.STRING
        assert "LabelEncoder" in ops
        assert json.loads(meta["onnxforge.categories"]) == {"group": ["setosa", "versicolor", "virginica"]}


def test_seeded_draws_replay_and_reseed_changes_them(built):
    from onnxforge.score import reseed

    cfg, model_path, _, feeds = built["logistic"]
    a = run(session(model_path), feeds)["draws"]
    b = run(session(model_path), feeds)["draws"]
    np.testing.assert_array_equal(a, b)  # seed baked in: a fresh session replays the same draws
    model = onnx.load(str(model_path))
    assert reseed(model, 7) == 1
    c = run(ort.InferenceSession(model.SerializeToString()), feeds)["draws"]
    assert not np.array_equal(a, c) and set(np.unique(c)) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["linear", "hier"])
def test_predictor_serves_the_same_outputs_and_draw_stream(built, name):
    """The low-latency Predictor (bound buffers; strings go through run) against plain session.run: equal
    deterministic outputs row by row, and the same seeded draw stream call after call."""
    from onnxforge.score import Predictor

    cfg, model_path, _, feeds = built[name]
    pred, sess = Predictor(model_path), session(model_path)
    assert pred.bindable is (name != "hier")
    for i in (0, 1, 2, 1, 0):
        one = {k: v[i:i + 1] for k, v in feeds.items()}
        got, want = pred(one), run(sess, one)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}.{key} row {i}")


def test_thinning_is_recorded_and_still_exact(tmp_path):
    cfg, model_path = convert("logistic", tmp_path, samples=120, outputs={"draws": 0, "quantiles": [0.0, 0.3, 1.0]})
    model = onnx.load(str(model_path))
    bayes = json.loads({p.key: p.value for p in model.metadata_props}["onnxforge.bayes"])
    assert bayes["posterior"]["samples"] == 120 and bayes["posterior"]["thinned"]
    assert [o.name for o in model.graph.output] == ["mean", "std", "quantiles"]
    feeds = feeds_from_table(load_table(cfg.data.path), cfg.inputs)
    got, ref = run(session(model_path), feeds), _reference("logistic", feeds, cfg, samples=120)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], **TOL)


def test_unseen_level_population_uses_hierarchical_mean(built):
    import xarray as xr

    cfg, model_path, native, _ = built["hier"]
    x = np.array([-1.0, 0.0, 1.5], dtype=np.float32)
    groups = np.array(["setosa", "unheard-of", "virginica"], dtype=object)
    got = run(session(model_path), {"x": x, "group": groups})
    ref = _reference("hier", {"x": x, "group": groups}, cfg)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], **TOL)
    ds = xr.open_dataset(cfg.source.path, group="posterior", engine="h5netcdf")
    mu = ds["mu_alpha"].values.reshape(-1) + ds["beta"].values.reshape(-1) * 0.0
    np.testing.assert_allclose(got["mean"][1], mu.mean(), **TOL)  # the population intercept, independently


def test_unseen_level_error_policy_graph_refuses(tmp_path):
    cfg, model_path = convert("hier", tmp_path, run_name="hier-error",
                              categorical={"group": {"policy": "error"}}, outputs={"draws": 0})
    sess = session(model_path)
    x = np.array([0.5, 0.5], dtype=np.float32)
    ok = run(sess, {"x": x, "group": np.array(["setosa", "virginica"], dtype=object)})
    assert ok["mean"][0] < ok["mean"][1]  # setosa's petals are shorter
    with pytest.raises(Exception, match="out of data bounds|indices"):
        sess.run(None, {"x": x, "group": np.array(["setosa", "unheard-of"], dtype=object)})
    native = frontend("pymc").load(cfg)
    with pytest.raises(UserError, match="unheard-of"):
        native.outputs({"x": x, "group": np.array(["setosa", "unheard-of"], dtype=object)})


def test_integer_category_levels_encode_in_graph(tmp_path):
    """Integer coords (store ids 10/20/30, deliberately not 0..2) are raw int64 inputs encoded in-graph."""
    import xarray as xr

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"effect": (("chain", "draw", "store"), rng.normal([1.0, 2.0, 3.0], 0.1, (2, 50, 3))),
                     "slope": (("chain", "draw"), rng.normal(0.5, 0.1, (2, 50)))},
                    coords={"chain": [0, 1], "draw": np.arange(50), "store": [30, 10, 20]})
    ds.to_netcdf(tmp_path / "post.nc", engine="h5netcdf", group="posterior")
    (tmp_path / "t.py").write_text("def mu(xp, params, x, store):\n"
                                   "    return params['effect'][store] + params['slope'] * x\n")
    raw = {"name": "stores", "run_dir": str(tmp_path),
           "source": {"framework": "pymc", "path": "post.nc", "transform": "t.py:mu",
                      "params": {"sigma": 0.3}, "categorical": {"store": {"policy": "error"}}},
           "inputs": [{"name": "x", "shape": ["batch"]}, {"name": "store", "dtype": "int64", "shape": ["batch"]}],
           "stages": {"convert": {}}}
    cfg = parse_config(raw, tmp_path / "p.yaml")
    model = cfg.run_path / run_pipeline(cfg)["final_model"]
    feeds = {"x": np.array([0.0, 1.0, 2.0], np.float32), "store": np.array([10, 20, 30], np.int64)}
    got = run(session(model), feeds)
    post, levels = thinned(tmp_path / "post.nc")
    codes = encode(feeds["store"], levels["store"])  # by position in the file's coords [30, 10, 20]
    mu = post["effect"][:, codes] + post["slope"][:, None] * feeds["x"].astype(np.float64)
    ref = summaries(mu, np.full_like(mu, 0.3**2), [])
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], **TOL)
    # store 30 is the first level in the file: its effect (≈1) applies, not the level order's third
    np.testing.assert_allclose(got["mean"], [2.0, 3.5, 2.0], atol=0.1)
    assert json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}["onnxforge.categories"]) == {
        "store": [30, 10, 20]}
    with pytest.raises(Exception, match="out of data bounds"):
        session(model).run(None, {"x": feeds["x"], "store": np.array([10, 40, 20], np.int64)})

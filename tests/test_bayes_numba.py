"""The numba engine (issue #16 part 3): `Predictor(model, engine="numba", source=CONFIG)` scores a PyMC artifact
with onnxforge.bayes.numba_engine — the mean function compiled by PyTensor's numba backend, njit row kernels, exact
quantiles — and must equal the artifact in onnxruntime (rtol 1e-4, atol 1e-5) at 1 and 1000 rows: every PyMC example
(hand transform, and hier zero-code with an unseen level) and every model class of issue #16 (class probabilities
included). Its draws are numba's generators, so they are checked as distributions: each row's draw mean within 4
Monte-Carlo standard errors of the artifact's predictive mean. Bad use is one line naming the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_bayes_reference import EXAMPLES, example_feeds
from test_bayes_zero_code import convert

from onnxforge.errors import CheckFailed, UserError

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow  # converts the examples and compiles an engine per test (PyTensor's numba backend)
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _rows(feeds: dict[str, np.ndarray], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n rows resampled from the example rows, numbers jittered (new x), levels kept."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(next(iter(feeds.values()))), n)
    out = {}
    for k, v in feeds.items():
        v = np.asarray(v)[idx]
        out[k] = (v + rng.normal(scale=0.1, size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
    return out


def _equal(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), what
    for key, w in want.items():
        assert got[key].shape == w.shape, f"{what}.{key}"
        if key != "draws":
            np.testing.assert_allclose(got[key], w, **TOL, err_msg=f"{what}.{key}")


def _draws_agree(got: dict, what: str, bins: int = 20) -> None:
    """Numba's draws against the predictive the artifact states. Rows (per class: the class indicator) are
    grouped by predictive mean into `bins` groups; each group's pooled draw mean must be within 4 Monte-Carlo
    standard errors of its rows' predictive means (s.e. from the predictive std: tens of thousands of draws per
    group, so the normal approximation holds even for rare events), and the average per-row draw variance within
    10 % of the average predictive variance."""
    d = got["draws"].astype(np.float64)
    mean, std = got["mean"].astype(np.float64), got["std"].astype(np.float64)
    if mean.ndim == 2:  # class probabilities: the indicator of each class among the draws
        k = mean.shape[1]
        d = (d[:, None, :] == np.arange(k)[None, :, None]).reshape(-1, d.shape[-1]).astype(np.float64)
        mean, std = mean.reshape(-1), std.reshape(-1)
    n = d.shape[1]
    order = np.argsort(mean, kind="stable")
    for group in np.array_split(order, min(bins, len(order))):
        se = np.sqrt((std[group] ** 2).sum() / n) / len(group)
        z = abs(d[group].mean() - mean[group].mean()) / max(se, 1e-9)
        assert z < 4, f"{what}: draws' mean off by {z:.2f} MC s.e. in rows with mean ≈ {mean[group].mean():.3g}"
    ratio = d.var(-1, ddof=1).mean() / (std**2).mean()
    assert abs(ratio - 1) < 0.1, f"{what}: draws' variance {ratio:.3f}× the predictive variance"


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("numba")
    out = {n: (convert(n, tmp, zero_code=False), ROOT / "configs" / f"pymc_{n}.yaml") for n in EXAMPLES}
    out["hier-zero"] = (convert("hier", tmp, zero_code=True), None)
    return out


def _hier_zero_config(tmp_path):
    from onnxforge.config import parse_config, read_yaml

    path = ROOT / "configs" / "pymc_hier.yaml"
    raw, lines = read_yaml(path)
    raw["source"] = {k: v for k, v in raw["source"].items() if k not in ("transform", "family", "params")}
    return parse_config(raw, path, lines, run_dir=tmp_path)


@slow
@pytest.mark.parametrize("name", [*EXAMPLES, "hier-zero"])
def test_numba_engine_equals_the_artifact(examples, tmp_path, name):
    from onnxforge.score.predictor import Predictor

    model, config = examples[name]
    base = name.removesuffix("-zero")
    fast = Predictor(model, engine="numba", source=config or _hier_zero_config(tmp_path))
    ort = Predictor(model)
    feeds = example_feeds(base)
    if base == "hier":  # an unseen species takes the population level in both
        feeds["group"] = feeds["group"].copy()
        feeds["group"][0] = "unheard-of"
    for n in (1, 1000):
        rows = {k: v[:1] for k, v in feeds.items()} if n == 1 else _rows(feeds, n)
        got, want = fast(rows), ort(rows)
        _equal(got, want, f"{name}@{n}")
    _draws_agree(got, name)


CLASSES = ("gamma", "lognormal", "beta", "zip", "zinb", "ordered", "categorical", "bspline", "hsgp")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    from test_bayes_classes import config

    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("numba-classes")
    out = {}
    for name in CLASSES:
        cfg = parse_config(config(name, tmp), tmp / f"{name}.yaml")
        out[name] = (cfg.run_path / run_pipeline(cfg, force=True)["final_model"], cfg)
    return out


@slow
@pytest.mark.parametrize("name", CLASSES)
def test_numba_engine_equals_the_artifact_for_every_class(classes, name):
    """Class probabilities (ordered, categorical) per class, as the artifact gives them; a parsed config as
    source."""
    from onnxforge.score.predictor import Predictor

    model, cfg = classes[name]
    fast, ort = Predictor(model, engine="numba", source=cfg), Predictor(model)
    rng = np.random.default_rng(1)
    k = 1 if name in ("bspline", "hsgp") else 2
    for n in (1, 1000):
        x = rng.uniform(-2.5, 2.5, size=(n, k)).astype(np.float32)
        got, want = fast(X=x), ort(X=x)
        _equal(got, want, f"{name}@{n}")
    _draws_agree(got, name)


@slow
def test_threads_and_seeded_draws(examples):
    """threads=2 runs the parallel kernels from 64 rows: the same outputs as one thread, draws included (one
    generator per fixed chunk of rows); a seeded config gives every engine the same sequence of draws, an unseeded
    engine draws afresh."""
    from onnxforge.bayes.numba_engine import NumbaPredictive
    from onnxforge.score.predictor import Predictor

    model, config = examples["poisson"]
    one = Predictor(model, engine="numba", source=config, threads=1)
    two = Predictor(model, engine="numba", source=config, threads=2)
    rows = _rows(example_feeds("poisson"), 1000)
    for _ in range(2):  # call after call, the same sequence (seed: 0 in the config)
        a, b = one(rows), two(rows)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # shared between threads (a server's pool): concurrent calls give what serial calls give
    from concurrent.futures import ThreadPoolExecutor

    parts = [{k: v[i::4] for k, v in rows.items()} for i in range(4)]
    serial = [one(p) for p in parts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(two, parts * 2))
    for want, got in zip(serial * 2, together, strict=True):
        for key in ("mean", "std", "quantiles"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    free = NumbaPredictive(one.engine.pred, seed=None, threads=2)
    d1, d2 = free(rows)["draws"], free(rows)["draws"]
    assert not np.array_equal(d1, d2)
    assert not np.array_equal(d1, a["draws"])
    _draws_agree(free(rows), "poisson unseeded, 2 threads")


@slow
def test_bad_use_is_one_line(examples, tmp_path):
    from onnxforge.score.predictor import Predictor

    model, config = examples["linear"]
    with pytest.raises(UserError, match="engines are 'onnxruntime'.*'numba'"):
        Predictor(model, engine="numpy")
    with pytest.raises(UserError, match="pass source='pipeline.yaml'"):
        Predictor(model, engine="numba")
    with pytest.raises(UserError, match="is for engine='numba'"):
        Predictor(model, source=config)
    with pytest.raises(UserError, match="file not found"):
        Predictor(model, engine="numba", source=tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not the one this artifact was converted from"):
        Predictor(model, engine="numba", source=ROOT / "configs" / "pymc_logistic.yaml")
    with pytest.raises(UserError, match="threads=64"):
        Predictor(model, engine="numba", source=config, threads=64)
    fast = Predictor(model, engine="numba", source=config)
    with pytest.raises(UserError, match="call the Predictor with feeds"):
        fast.bind(X=np.zeros((1, 3), np.float32))
    with pytest.raises(UserError, match="takes float32"):  # the artifact's input checks still apply
        fast(X=np.array([["a", "b", "c"]]))


def _identity(tmp_path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_linear_equals_the_artifact_quick(tmp_path):
    """The edit-test loop's check (one conversion, one engine): linear at 1 and 1000 rows equals the artifact."""
    from onnxforge.score.predictor import Predictor

    model = convert("linear", tmp_path, zero_code=False)
    fast, ort = Predictor(model, engine="numba", source=ROOT / "configs" / "pymc_linear.yaml"), Predictor(model)
    feeds = example_feeds("linear")
    for rows in ({"X": feeds["X"][:1]}, _rows(feeds, 1000)):
        _equal(fast(rows), ort(rows), f"linear@{len(rows['X'])}")


def test_engine_choice_is_checked_before_any_compile(tmp_path, monkeypatch):
    """Fast (no conversion): an unknown engine, source without engine='numba', engine='numba' without source or on
    an artifact that is not PyMC, and numba missing — each one line naming the fix."""
    from onnxforge.score.predictor import Predictor

    plain = _identity(tmp_path)
    config = ROOT / "configs" / "pymc_linear.yaml"
    with pytest.raises(UserError, match="engines are 'onnxruntime'.*'numba'"):
        Predictor(plain, engine="numpy")
    with pytest.raises(UserError, match="is for engine='numba'"):
        Predictor(plain, source=config)
    with pytest.raises(UserError, match="PyMC artifacts only.*engine='onnxruntime'"):
        Predictor(plain, engine="numba", source=config)
    with pytest.raises(UserError, match="PyMC artifacts only"):
        Predictor(plain, engine="numba")
    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.raises(UserError, match="pip install numba"):
        Predictor(plain, engine="numba", source=config)


@slow
def test_a_wrong_engine_is_caught_at_construction(examples, monkeypatch):
    """The probe-row check is real: an engine whose mean is off by 1e-3 is refused (exit 1), not served."""
    from onnxforge.bayes import numba_engine
    from onnxforge.score.predictor import Predictor

    model, config = examples["linear"]
    real = numba_engine.NumbaPredictive.run

    def off(self, arrays):
        out = real(self, arrays)
        out["mean"] = out["mean"] * np.float32(1.001)
        return out

    monkeypatch.setattr(numba_engine.NumbaPredictive, "run", off)
    with pytest.raises(CheckFailed, match="disagrees with the artifact on probe rows"):
        Predictor(model, engine="numba", source=config)


def test_kernels_write_no_cache():
    """The row kernels compile in memory only: numba's on-disk cache is off (nothing written beside the code)."""
    from onnxforge.bayes.numba_kernels import kernels

    for name, builds in kernels().items():
        for fn in builds if isinstance(builds, tuple) else (builds,):
            assert type(fn._cache).__name__ == "NullCache", name

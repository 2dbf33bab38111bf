"""scikit-learn breadth (issue #13 item 2). The sweep of bench/bench_sklearn_matrix.py without its timing: every
scikit-learn estimator skl2onnx has a converter for, fitted small and seeded on a bundled dataset, saved with skops,
converted by what `onnxforge convert` runs and compared in onnxruntime with the native predict / predict_proba /
transform on held-out rows (NaN included where the model takes it). Estimators onnxforge cannot convert are refused
with exit 2 naming them and the converter's reason — through the real CLI for representative ones, `--debug` showing
the converter's traceback. HistGradientBoosting* (protobuf 7 refused skl2onnx's numpy bools; categorical features,
the log link and threshold rounding were ignored) convert and match, with skl2onnx itself left as shipped."""

from __future__ import annotations

import importlib.util
import sys
import warnings

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error

_spec = importlib.util.spec_from_file_location("bench_sklearn_matrix", ROOT / "bench" / "bench_sklearn_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
sys.modules["bench_sklearn_matrix"] = matrix
_spec.loader.exec_module(matrix)

CASES = {c.name: c for c in matrix.cases()}

# converted and matching the native model (labels identical, values within matrix.RTOL/ATOL)
CONVERTS = [
    "ARDRegression", "AdaBoostClassifier", "AdaBoostRegressor", "BaggingClassifier", "BaggingRegressor",
    "BayesianRidge", "BernoulliNB", "Binarizer", "CalibratedClassifierCV", "CategoricalNB", "ComplementNB",
    "DecisionTreeClassifier", "DecisionTreeRegressor", "ElasticNet", "ElasticNetCV", "ExtraTreeClassifier",
    "ExtraTreeRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor", "GammaRegressor", "GaussianNB",
    "GaussianProcessRegressor", "GaussianRandomProjection", "GenericUnivariateSelect", "GradientBoostingClassifier",
    "GradientBoostingRegressor", "GridSearchCV", "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
    "HuberRegressor", "IncrementalPCA", "KNeighborsClassifier", "KNeighborsRegressor", "KNeighborsTransformer",
    "KernelCenterer", "KernelPCA", "Lars", "LarsCV", "Lasso", "LassoCV", "LassoLars", "LassoLarsCV", "LassoLarsIC",
    "LinearDiscriminantAnalysis", "LinearRegression", "LinearSVC", "LinearSVR", "LogisticRegression",
    "LogisticRegressionCV", "MLPClassifier", "MLPRegressor", "MaxAbsScaler", "MinMaxScaler", "MultiOutputRegressor",
    "MultiTaskElasticNet", "MultiTaskElasticNetCV", "MultiTaskLasso", "MultiTaskLassoCV", "MultinomialNB",
    "NeighborhoodComponentsAnalysis", "Normalizer", "NuSVC", "NuSVR", "OneHotEncoder", "OneVsOneClassifier",
    "OneVsRestClassifier", "OrdinalEncoder", "OrthogonalMatchingPursuit", "OrthogonalMatchingPursuitCV", "PCA",
    "PLSRegression", "PassiveAggressiveClassifier", "PassiveAggressiveRegressor", "Perceptron", "PoissonRegressor",
    "PolynomialFeatures", "PowerTransformer", "QuadraticDiscriminantAnalysis", "QuantileRegressor",
    "RANSACRegressor", "RandomForestClassifier", "RandomForestRegressor", "Ridge", "RidgeCV", "RidgeClassifier",
    "RidgeClassifierCV", "RobustScaler", "SGDClassifier", "SGDRegressor", "SVC", "SVR", "SelectFdr", "SelectFpr",
    "SelectFromModel", "SelectFwe", "SelectKBest", "SelectPercentile", "SimpleImputer", "StackingClassifier",
    "StackingRegressor", "StandardScaler", "TfidfTransformer", "TheilSenRegressor", "TruncatedSVD",
    "TunedThresholdClassifierCV", "TweedieRegressor", "VarianceThreshold", "VotingRegressor",
    "Pipeline(ColumnTransformer(StandardScaler, OneHotEncoder×2), LogisticRegression)",
    "Pipeline(StandardScaler, PCA, LogisticRegression)", "ColumnTransformer(StandardScaler, MinMaxScaler) by index",
    "FeatureUnion(PCA, SelectKBest)", "HistGradientBoostingClassifier, binary",
    "HistGradientBoostingClassifier, categorical_features", "HistGradientBoostingRegressor, categorical_features",
    "HistGradientBoostingRegressor(loss='poisson')", "FunctionTransformer",
]
# skl2onnx converts them but its graph computes something else: recorded, not hidden
KNOWN_WRONG = {
    "KNNImputer": "mismatch",  # imputed values differ from scikit-learn's (35 on values up to 1,510)
    "QuantileTransformer": "mismatch",  # interpolation differs (≈0.03 on [0, 1])
}
# refused with exit 2, the reason naming the cause (a sample of every kind of refusal)
REFUSED = {
    "KernelRidge": "skl2onnx has no converter for KernelRidge",
    "TransformedTargetRegressor": "skl2onnx has no converter for TransformedTargetRegressor",
    "KMeans": "to 2 outputs (label, scores)",
    "IsolationForest": "to 2 outputs (label, scores)",
    "RFE": "to 1 output (variable), not what onnxforge takes for a classifier",
    "RadiusNeighborsClassifier": "graph fails in onnxruntime",
    "MultiOutputClassifier": "as a sequence or map",
    "GaussianProcessClassifier": "NotImplementedError: Only binary classification",
    "KBinsDiscretizer": "onehot encoding not supported",
    "VotingClassifier": "flatten_transform==True is not implemented",
    "CountVectorizer": "takes raw text documents",
    "LabelEncoder": "encodes targets (y), not features",
    "DictVectorizer": "takes dicts of features",
    "DBSCAN": "skl2onnx has no converter for DBSCAN",
    "FunctionTransformer(np.log1p)": "FunctionTransformer is not supported",
}


def test_lists_cover_every_converter():
    """Every estimator skl2onnx registers a converter for is listed above (a new sklearn/skl2onnx release adds rows
    here, not silently to the sweep)."""
    names = matrix.skl2onnx_names()
    listed = set(CONVERTS) | set(KNOWN_WRONG) | set(REFUSED) | {"Pipeline", "ColumnTransformer", "FeatureUnion"}
    swept = {c.name for c in CASES.values()}
    missing = sorted(n for n in names & swept if n not in listed and n not in EXTRA_REFUSED)
    assert not missing, f"skl2onnx converts these, the test does not list them: {missing}"
    assert set(CONVERTS) | set(KNOWN_WRONG) | set(REFUSED) <= swept


# skl2onnx has a converter, onnxforge refuses (exit 2) for the reason given in the bench table: checked by the
# in-process sweep below like REFUSED, without a specific phrase
EXTRA_REFUSED = {"LocalOutlierFactor", "OneClassSVM", "SGDOneClassSVM", "MiniBatchKMeans", "GaussianMixture",
                 "BayesianGaussianMixture", "RFECV", "TargetEncoder", "RandomTreesEmbedding", "RandomizedSearchCV",
                 "FeatureHasher", "LabelBinarizer", "TfidfVectorizer", "RadiusNeighborsRegressor",
                 "NearestNeighbors"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("breadth")


@pytest.mark.parametrize("name", CONVERTS)
def test_converts_and_matches_native(name, folder):
    row = matrix.run_case(CASES[name], folder)
    assert row["status"] == "converts", row
    assert not row.get("label_mismatch"), row


@pytest.mark.parametrize("name", sorted(KNOWN_WRONG))
def test_known_wrong_stays_recorded(name, folder):
    """If a skl2onnx release fixes one of these, move it to CONVERTS (and the README row)."""
    row = matrix.run_case(CASES[name], folder)
    assert row["status"] == KNOWN_WRONG[name], row


@pytest.mark.parametrize("name", sorted(REFUSED) + sorted(EXTRA_REFUSED))
def test_refused_with_reason(name, folder):
    row = matrix.run_case(CASES[name], folder)
    assert row["status"] == "not supported" and row["exit"] == 2, row
    assert name.split("(")[0] in row["reason"], row  # the estimator is named
    assert REFUSED.get(name, "") in row["reason"], row
    assert "use a supported estimator" not in row["reason"] and "attributes=" not in row["reason"]


# ------------------------------------------------------------------ through the real CLI


def _save(est, path):
    import skops.io as sio

    sio.dump(est, path)
    return path


@pytest.mark.parametrize("name, needle", [
    ("KernelRidge", "skl2onnx has no converter for KernelRidge"),
    ("KMeans", "to 2 outputs (label, scores)"),
    ("GaussianProcessClassifier", "Only binary classification"),
])
def test_cli_refuses_unsupported_naming_the_reason(name, needle, tmp_path, cli):
    case = CASES[name]
    d = matrix.dataset(case.data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = case.make().fit(d.X, d.y)
    path = _save(est, tmp_path / "m.skops")
    args = ["convert", "--framework", "sklearn", "-m", path, "-o", tmp_path / "m.onnx", "--source-opt",
            "trust_pickle=true"]
    line = assert_one_line_error(cli(*args))
    assert name in line and needle in line, line
    assert not (tmp_path / "m.onnx").exists()
    if name == "GaussianProcessClassifier":  # --debug: the converter's own traceback behind the one line
        res = cli(*args, "--debug")
        assert res.code == 2
        assert "Traceback" in res.stderr and "gaussian_process" in res.stderr, res.stderr[-2000:]


# ------------------------------------------------------------------ HistGradientBoosting


def _hgb_data(task: str, categorical: bool):
    """breast_cancer / diabetes with 20 % NaN; with categorical, two integer-coded columns in front (gaps in the
    codes, NaN, and held-out codes the model never saw)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    X, y = (load_breast_cancer if task == "classifier" else load_diabetes)(return_X_y=True)
    rng = np.random.default_rng(0)
    X = X[:, :8].copy()
    X[rng.random(X.shape) < 0.2] = np.nan
    if categorical:
        cats = np.c_[rng.integers(0, 6, len(X)), rng.choice([2, 3, 7, 11, 19, 40], len(X))].astype(float)
        y = np.where(cats[:, 0] % 2 == 0, 1 - y, y) if task == "classifier" else y + 30 * (cats[:, 1] > 8)
        cats[rng.random(len(X)) < 0.05, 1] = np.nan
        X = np.c_[cats, X]
    Xt = X[300:].astype(np.float32)
    if categorical:
        Xt[:8, 0], Xt[8:16, 1], Xt[16:20, 1] = 9.0, 5.0, -1.0  # unknown codes: scikit-learn treats them as missing
    return X[:300], y[:300], Xt


@pytest.mark.parametrize("task, kwargs, via_cli", [
    ("classifier", {}, False),
    ("classifier", {"categorical_features": [0, 1]}, True),
    ("regressor", {}, False),
    ("regressor", {"categorical_features": [0, 1]}, False),
    ("regressor", {"loss": "poisson"}, False),
], ids=["clf", "clf-categorical", "reg", "reg-categorical", "reg-poisson"])
def test_hist_gradient_boosting_converts(task, kwargs, via_cli, tmp_path, cli):
    """Through `onnxforge convert` (one case in a subprocess, the others in-process through the same run_alone)."""
    import onnx
    import onnxruntime as ort
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    X, y, Xt = _hgb_data(task, "categorical_features" in kwargs)
    cls = HistGradientBoostingClassifier if task == "classifier" else HistGradientBoostingRegressor
    est = cls(max_iter=15, random_state=0, **kwargs).fit(X, y)
    path = _save(est, tmp_path / "hgb.skops")
    out = tmp_path / "hgb.onnx"
    trusted = ["functools.partial", "sklearn.utils.validation.check_array"]
    if via_cli:
        args = ["convert", "--framework", "sklearn", "-m", path, "-o", out]
        # the model's own preprocessor holds partial(check_array): named, then trusted
        line = assert_one_line_error(cli(*args))
        assert "functools.partial" in line and "trusted_types" in line
        res = cli(*args, "--source-opt", f"trusted_types=[{','.join(trusted)}]")
        assert res.code == 0, res.stderr
    else:
        matrix.convert(path, {"trusted_types": trusted}, out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": Xt})
    if task == "classifier":
        assert np.array_equal(got[0], est.predict(Xt))
        np.testing.assert_allclose(got[1], est.predict_proba(Xt), rtol=0, atol=1e-6)
    else:
        ref = est.predict(Xt)
        np.testing.assert_allclose(got[0].ravel(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    one = [sess.run(None, {"input": Xt[i:i + 1]})[-1] for i in range(5)]  # batch 1 is the same
    np.testing.assert_allclose(np.concatenate(one).ravel(), got[-1][:5].ravel(), rtol=1e-6, atol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["onnxforge.accepts_missing"] == "true"


def test_hist_gradient_boosting_threshold_exact_at_float32_boundary(tmp_path):
    """A float32 input equal to float32(t) where float32(t) > t: scikit-learn (x <= t in double) sends it right; a
    threshold rounded to nearest would send it left. Every such input, built from the model's own splits."""
    import onnxruntime as ort
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3)) * 1.37
    est = HistGradientBoostingRegressor(max_iter=10, random_state=0).fit(X, X[:, 0] * 2 + np.sin(X[:, 1] * 3))
    edges = [(int(n["feature_idx"]), float(n["num_threshold"])) for p in est._predictors for n in p[0].nodes
             if not n["is_leaf"] and float(np.float32(n["num_threshold"])) > float(n["num_threshold"])]
    assert edges, "no threshold rounds up in float32: the test data no longer exercises the case"
    Xt = np.tile(np.median(X, 0).astype(np.float32), (len(edges), 1))
    for i, (f, t) in enumerate(edges):
        Xt[i, f] = np.float32(t)
    out = tmp_path / "hgb.onnx"
    matrix.convert(_save(est, tmp_path / "hgb.skops"), {}, out)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": Xt})[0].ravel()
    np.testing.assert_allclose(got, est.predict(Xt), rtol=1e-6, atol=1e-6)


def test_skl2onnx_itself_left_as_shipped():
    """The fixes are scoped to onnxforge's call: skl2onnx used directly still fails on protobuf 7 as before."""
    from pathlib import Path

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier

    from onnxforge.frontends import skl_compat

    X, y, _ = _hgb_data("classifier", False)
    est = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(X, y)
    model = skl_compat.convert(est, [("input", FloatTensorType([None, X.shape[1]]))], {}, 17, "hgb")
    assert any(n.op_type == "TreeEnsembleClassifier" for n in model.graph.node)
    import google.protobuf

    if int(google.protobuf.__version__.split(".")[0]) >= 7:
        with pytest.raises(Exception, match="Unable to create node 'TreeEnsembleClassifier'"):
            convert_sklearn(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))])
    assert Path(skl_compat.__file__).name == "skl_compat.py"


def test_reason_is_the_innermost_cause_on_one_line():
    from onnxforge.frontends.skl_compat import reason

    try:
        try:
            raise TypeError("Field onnx.AttributeProto.ints: Expected an int, got a boolean.")
        except TypeError as e:
            raise ValueError("Unable to create node 'TreeEnsembleClassifier' with name='x' and attributes={"
                             + "'a': [1, 2, 3],\n" * 500 + "}") from e
    except ValueError as e:
        assert reason(e) == "TypeError: Field onnx.AttributeProto.ints: Expected an int, got a boolean."

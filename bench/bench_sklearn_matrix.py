"""scikit-learn breadth: every scikit-learn estimator (``sklearn.utils.all_estimators()``), each fitted small and
seeded on a bundled dataset (iris, breast_cancer, digits, diabetes, wine — no downloads), saved as users save it
(skops; a pickle with ``trust_pickle`` only when skops needs types onnxforge does not trust by default), converted
by the very function ``onnxforge convert`` runs (``standalone.run_alone("convert", ...)``), run in onnxruntime and
compared with the frontend's native reference (``predict`` / ``predict_proba`` / ``transform``, what ``validate``
compares against). Estimators skl2onnx has no converter for, or that onnxforge refuses, are recorded with the
one-line reason the CLI prints (exit 2). A few composites (Pipeline + ColumnTransformer on a mixed table,
HistGradientBoosting with native categorical features and NaN) and the XGBoost/LightGBM scikit-learn wrappers
(onnxmltools' converters) are added rows.

Timing (``--no-timing`` skips it): p50 latency of 1 row and 256 rows, onnxruntime (1 intra-op thread) vs the native
call, both single-threaded for real (``n_jobs=1`` on every part, ``threadpoolctl.threadpool_limits(1)`` for BLAS and
OpenMP), bounded (``--max-seconds`` per measurement), in three interleaved rounds (the median of their p50s). Speed
is native time / ORT time: above 1 ONNX is faster.

    python -m bench.bench_sklearn_matrix [--only NAME ...] [--no-timing] [--out bench/out]

writes ``sklearn_matrix.json`` and ``sklearn_matrix.md`` (the README fragment). ``python -m bench sklearn_matrix``
runs it with the other bench suites. ``tests/test_sklearn_breadth.py`` runs every case through ``run_case`` without
timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BATCH = 256
ROUNDS = 3  # ORT and native timed alternately this many times; the median of the rounds' p50s
TEST_ROWS = 64
SEED = 0
# what "matches" means in the matrix: identical labels and every value within allclose(rtol=RTOL,
# atol=ATOL·max(1, max|reference|)) — the absolute part scaled to the output's magnitude (a projection of unscaled
# data loses float32 digits by cancellation)
RTOL, ATOL = 1e-3, 1e-4
TIE = 1e-6  # a label that differs where native's two best probabilities are this close is a tie, not a mismatch


# ------------------------------------------------------------------ data


@dataclass
class Data:
    X: Any  # training inputs (ndarray or DataFrame)
    y: Any
    Xt: Any  # held-out inputs, the rows the ONNX model and the native model both score
    desc: str


def _split(X, y, desc: str, n_train: int = 200) -> Data:
    rng = np.random.default_rng(SEED)
    idx = rng.permutation(len(X))
    tr, te = idx[:n_train], idx[n_train:n_train + TEST_ROWS]
    if len(te) < TEST_ROWS:  # small sets (iris): score rows seen in training too, the conversion is what's checked
        te = idx[:TEST_ROWS]
    take = (lambda a, i: a.iloc[i].reset_index(drop=True)) if hasattr(X, "iloc") else (lambda a, i: a[i])
    return Data(take(X, tr), y[tr] if y is not None else None, take(X, te), desc)


def _with_nan(X: np.ndarray, frac: float = 0.15) -> np.ndarray:
    X = np.array(X, dtype=np.float64)
    X[np.random.default_rng(SEED).random(X.shape) < frac] = np.nan
    return X


_DATA: dict[str, Data] = {}


def dataset(key: str) -> Data:
    if key in _DATA:
        return _DATA[key]
    from sklearn import datasets as ds

    if key == "iris":
        X, y = ds.load_iris(return_X_y=True)
        d = _split(X, y, "iris")
    elif key == "cancer":
        X, y = ds.load_breast_cancer(return_X_y=True)
        d = _split(X, y, "breast_cancer")
    elif key == "cancer_std":  # standardized: a LogisticRegression inside converges in a few iterations
        X, y = ds.load_breast_cancer(return_X_y=True)
        d = _split((X - X.mean(0)) / X.std(0), y, "breast_cancer, standardized")
    elif key == "wine_std":
        X, y = ds.load_wine(return_X_y=True)
        d = _split((X - X.mean(0)) / X.std(0), y, "wine, standardized")
    elif key == "wine":
        X, y = ds.load_wine(return_X_y=True)
        d = _split(X, y, "wine")
    elif key == "digits":
        X, y = ds.load_digits(return_X_y=True)
        d = _split(X, y, "digits")
    elif key == "digits4":  # a few integer-valued pixel columns: categories for the encoders (held-out rows drawn
        X, y = ds.load_digits(return_X_y=True)  # from the fitted ones: an unknown category is an error by default)
        d = _split(X[:, [20, 28, 36, 44]], y, "digits (4 pixel columns)")
        d.Xt = d.X[:TEST_ROWS]
    elif key == "diabetes":
        X, y = ds.load_diabetes(return_X_y=True)
        d = _split(X, y, "diabetes")
    elif key == "diabetes_1col":  # one feature, for IsotonicRegression
        X, y = ds.load_diabetes(return_X_y=True)
        d = _split(X[:, 2:3], y, "diabetes (bmi column)")
    elif key == "diabetes2":  # two targets, for multi-output regressors
        X, y = ds.load_diabetes(return_X_y=True)
        d = _split(X, np.c_[y, X[:, 2] * 100 + y / 3], "diabetes (2 targets)")
    elif key == "iris2":  # two label columns, for multi-output classifiers
        X, y = ds.load_iris(return_X_y=True)
        d = _split(X, np.c_[y, (X[:, 0] > 5.8).astype(int)], "iris (2 label columns)")
    elif key == "wine_nan":
        X, y = ds.load_wine(return_X_y=True)
        d = _split(_with_nan(X), y, "wine, 15 % NaN")
    elif key == "cancer_nan":
        X, y = ds.load_breast_cancer(return_X_y=True)
        d = _split(_with_nan(X), y, "breast_cancer, 15 % NaN")
    elif key == "diabetes_nan":
        X, y = ds.load_diabetes(return_X_y=True)
        d = _split(_with_nan(X), y, "diabetes, 15 % NaN")
    elif key in ("wine_cat", "diabetes_cat"):  # native categorical features (integer codes) + NaN
        X, y = (ds.load_wine if key == "wine_cat" else ds.load_diabetes)(return_X_y=True)
        X = _with_nan(X, 0.1)
        rng = np.random.default_rng(SEED)
        cats = np.c_[rng.integers(0, 7, len(X)), rng.integers(2, 40, len(X))].astype(float)
        cats[:, 1] = np.where(cats[:, 1] % 5 == 0, 3.0, cats[:, 1])  # codes with gaps
        signal = (cats[:, 0] % 3 == 0) * 2.0 - (cats[:, 1] > 20)
        if key == "wine_cat":
            y = np.where(signal > 1, 2, y)
        else:
            y = y + 40 * signal
        cats[rng.random(len(X)) < 0.05, 0] = np.nan
        d = _split(np.c_[cats, X], y, f"{key.split('_')[0]} + 2 categorical columns, NaN")
    elif key == "kernel":  # KernelCenterer centres a kernel matrix: K(test, train) against K(train, train)
        X, y = ds.load_wine(return_X_y=True)
        Xs = (X - X.mean(0)) / X.std(0)
        tr = Xs[:40]
        d = Data(tr @ tr.T, None, Xs[40:40 + TEST_ROWS] @ tr.T, "wine, linear kernel (40 columns)")
    elif key == "text":
        words = ["red", "green", "blue", "fast", "slow", "cat", "dog", "bird", "tree", "river", "stone", "light"]
        rng = np.random.default_rng(SEED)
        X = np.array([" ".join(rng.choice(words, rng.integers(2, 7))) for _ in range(260)], dtype=object)
        d = _split(X, (rng.random(260) > 0.5).astype(int), "generated sentences")
    elif key == "dicts":
        X, y = ds.load_iris(return_X_y=True)
        rows = np.array([{"a": float(r[0]), "b": float(r[1]), "c": float(r[2])} for r in X], dtype=object)
        d = _split(rows, y, "iris as dicts")
    elif key == "labels":
        X, y = ds.load_wine(return_X_y=True)
        d = _split(y.reshape(-1, 1), y, "wine labels")
    elif key == "table":  # the mixed table of the README's pipeline: numbers, a text category, an int category
        import pandas as pd

        b = ds.load_breast_cancer()
        X = pd.DataFrame(b.data[:, :6].astype(np.float32), columns=[f"f{i}" for i in range(6)])
        X["band"] = np.where(b.data[:, 3] > 700, "large", np.where(b.data[:, 3] > 450, "medium", "small"))
        X["grade"] = np.digitize(b.data[:, 6], [0.03, 0.08, 0.15]).astype(np.int64) + 1
        d = _split(X, b.target, "breast_cancer as a mixed table (6 numbers, a text and an int category)")
    else:
        raise KeyError(key)
    _DATA[key] = d
    return d


# ------------------------------------------------------------------ the cases


@dataclass
class Case:
    name: str
    make: Callable[[], Any]
    data: str
    kind: str  # classifier | regressor | transformer | cluster | outlier | composite
    fit: Callable[[Any, Any, Any], Any] | None = None  # (est, X, y) -> fitted; default est.fit(X, y)
    inputs: list[dict] | None = None  # the config's inputs: (a pipeline selecting columns by name needs them)


def _lr():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500)


def _specials() -> dict[str, tuple[Callable[[], Any], str | None]]:
    """Constructor arguments for estimators whose defaults are too big or that need a base estimator, and the
    dataset where the kind's default one does not fit. None as dataset: the kind's default."""
    from sklearn import (
        ensemble as en,
    )
    from sklearn import (
        feature_selection as fs,
    )
    from sklearn import (
        linear_model as lm,
    )
    from sklearn import (
        multioutput as mo,
    )
    from sklearn import (
        tree,
    )
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, TunedThresholdClassifierCV

    def dtc():
        return tree.DecisionTreeClassifier(max_depth=4, random_state=SEED)

    def dtr():
        return tree.DecisionTreeRegressor(max_depth=4, random_state=SEED)

    import sklearn.cluster as cl
    import sklearn.decomposition as dc
    import sklearn.ensemble as ens
    import sklearn.frozen as fz
    import sklearn.gaussian_process as gp
    import sklearn.kernel_approximation as ka
    import sklearn.manifold as mf
    import sklearn.mixture as mx
    import sklearn.multiclass as mc
    import sklearn.neighbors as nb
    import sklearn.neural_network as nn
    import sklearn.preprocessing as pp
    import sklearn.random_projection as rp
    import sklearn.semi_supervised as ss
    import sklearn.svm as svm

    return {
        "AdaBoostClassifier": (lambda: en.AdaBoostClassifier(n_estimators=10, random_state=SEED), None),
        "AdaBoostRegressor": (lambda: en.AdaBoostRegressor(n_estimators=10, random_state=SEED), None),
        "BaggingClassifier": (lambda: en.BaggingClassifier(n_estimators=5, random_state=SEED), None),
        "BaggingRegressor": (lambda: en.BaggingRegressor(n_estimators=5, random_state=SEED), None),
        "RandomForestClassifier": (lambda: en.RandomForestClassifier(10, max_depth=6, random_state=SEED), None),
        "RandomForestRegressor": (lambda: en.RandomForestRegressor(10, max_depth=6, random_state=SEED), None),
        "ExtraTreesClassifier": (lambda: en.ExtraTreesClassifier(10, max_depth=6, random_state=SEED), None),
        "ExtraTreesRegressor": (lambda: en.ExtraTreesRegressor(10, max_depth=6, random_state=SEED), None),
        "GradientBoostingClassifier": (lambda: en.GradientBoostingClassifier(n_estimators=20, random_state=SEED),
                                       None),
        "GradientBoostingRegressor": (lambda: en.GradientBoostingRegressor(n_estimators=20, random_state=SEED),
                                      None),
        "HistGradientBoostingClassifier": (lambda: ens.HistGradientBoostingClassifier(max_iter=20,
                                                                                     random_state=SEED), "wine_nan"),
        "HistGradientBoostingRegressor": (lambda: ens.HistGradientBoostingRegressor(max_iter=20, random_state=SEED),
                                          "diabetes_nan"),
        "IsolationForest": (lambda: en.IsolationForest(n_estimators=20, random_state=SEED), None),
        "RandomTreesEmbedding": (lambda: en.RandomTreesEmbedding(n_estimators=5, max_depth=3, random_state=SEED),
                                 None),
        "StackingClassifier": (lambda: en.StackingClassifier([("lr", _lr()), ("dt", dtc())], cv=3), None),
        "StackingRegressor": (lambda: en.StackingRegressor([("lr", lm.Ridge()), ("dt", dtr())], cv=3), None),
        "VotingClassifier": (lambda: en.VotingClassifier([("lr", _lr()), ("dt", dtc())], voting="soft"), None),
        "VotingRegressor": (lambda: en.VotingRegressor([("lr", lm.Ridge()), ("dt", dtr())]), None),
        "MLPClassifier": (lambda: nn.MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=SEED), None),
        "MLPRegressor": (lambda: nn.MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=SEED), None),
        "BernoulliRBM": (lambda: nn.BernoulliRBM(n_components=8, n_iter=5, random_state=SEED), "digits"),
        "CalibratedClassifierCV": (lambda: __import__("sklearn.calibration").calibration.CalibratedClassifierCV(
            cv=3), None),
        "GridSearchCV": (lambda: GridSearchCV(_lr(), {"C": [0.1, 1.0]}, cv=3), "iris"),
        "RandomizedSearchCV": (lambda: RandomizedSearchCV(_lr(), {"C": [0.1, 1.0]}, n_iter=2, cv=3,
                                                          random_state=SEED), "iris"),
        "TunedThresholdClassifierCV": (lambda: TunedThresholdClassifierCV(_lr(), cv=3), "cancer_std"),
        "FixedThresholdClassifier": (lambda: __import__("sklearn.model_selection").model_selection
                                     .FixedThresholdClassifier(_lr(), threshold=0.3), "cancer_std"),
        "FrozenEstimator": (lambda: fz.FrozenEstimator(_lr().fit(*_xy("iris"))), "iris"),
        "OneVsOneClassifier": (lambda: mc.OneVsOneClassifier(_lr()), None),
        "OneVsRestClassifier": (lambda: mc.OneVsRestClassifier(_lr()), None),
        "OutputCodeClassifier": (lambda: mc.OutputCodeClassifier(_lr(), random_state=SEED), None),
        "ClassifierChain": (lambda: mo.ClassifierChain(_lr()), "iris2"),
        "RegressorChain": (lambda: mo.RegressorChain(lm.Ridge()), "diabetes2"),
        "MultiOutputClassifier": (lambda: mo.MultiOutputClassifier(_lr()), "iris2"),
        "MultiOutputRegressor": (lambda: mo.MultiOutputRegressor(lm.Ridge()), "diabetes2"),
        "MultiTaskElasticNet": (lm.MultiTaskElasticNet, "diabetes2"),
        "MultiTaskElasticNetCV": (lambda: lm.MultiTaskElasticNetCV(cv=3), "diabetes2"),
        "MultiTaskLasso": (lm.MultiTaskLasso, "diabetes2"),
        "MultiTaskLassoCV": (lambda: lm.MultiTaskLassoCV(cv=3), "diabetes2"),
        "SelfTrainingClassifier": (lambda: ss.SelfTrainingClassifier(_lr()), None),
        "RANSACRegressor": (lambda: lm.RANSACRegressor(random_state=SEED), None),
        "TheilSenRegressor": (lambda: lm.TheilSenRegressor(max_subpopulation=200, random_state=SEED), None),
        "QuantileRegressor": (lambda: lm.QuantileRegressor(alpha=0.0), None),
        "RFE": (lambda: fs.RFE(_lr(), n_features_to_select=2), "iris"),
        "RFECV": (lambda: fs.RFECV(_lr(), cv=3), "iris"),
        "SelectFromModel": (lambda: fs.SelectFromModel(_lr()), "iris"),
        "SequentialFeatureSelector": (lambda: fs.SequentialFeatureSelector(_lr(), n_features_to_select=2, cv=3),
                                      "iris"),
        "SelectKBest": (lambda: fs.SelectKBest(k=5), "wine"),
        "GaussianProcessClassifier": (lambda: gp.GaussianProcessClassifier(random_state=SEED), None),
        "GaussianProcessRegressor": (lambda: gp.GaussianProcessRegressor(random_state=SEED), None),
        "NeighborhoodComponentsAnalysis": (lambda: nb.NeighborhoodComponentsAnalysis(2, max_iter=30,
                                                                                    random_state=SEED), "iris"),
        "LocalOutlierFactor": (lambda: nb.LocalOutlierFactor(novelty=True), None),
        "KNeighborsTransformer": (lambda: nb.KNeighborsTransformer(n_neighbors=5), None),
        "RadiusNeighborsTransformer": (lambda: nb.RadiusNeighborsTransformer(radius=40.0), None),
        "RadiusNeighborsClassifier": (lambda: nb.RadiusNeighborsClassifier(radius=2.0), None),
        "RadiusNeighborsRegressor": (lambda: nb.RadiusNeighborsRegressor(radius=0.2), None),
        "KernelDensity": (nb.KernelDensity, None),
        "KMeans": (lambda: cl.KMeans(3, n_init=3, random_state=SEED), "iris"),
        "MiniBatchKMeans": (lambda: cl.MiniBatchKMeans(3, n_init=3, random_state=SEED), "iris"),
        "BisectingKMeans": (lambda: cl.BisectingKMeans(3, random_state=SEED), "iris"),
        "GaussianMixture": (lambda: mx.GaussianMixture(3, random_state=SEED), "iris"),
        "BayesianGaussianMixture": (lambda: mx.BayesianGaussianMixture(n_components=3, random_state=SEED), "iris"),
        "SpectralBiclustering": (lambda: cl.SpectralBiclustering(3, random_state=SEED), "iris"),
        "SpectralCoclustering": (lambda: cl.SpectralCoclustering(3, random_state=SEED), "iris"),
        "PCA": (lambda: dc.PCA(5, random_state=SEED), None),
        "IncrementalPCA": (lambda: dc.IncrementalPCA(5), None),
        "KernelPCA": (lambda: dc.KernelPCA(5, random_state=SEED), "wine_std"),
        "TruncatedSVD": (lambda: dc.TruncatedSVD(5, random_state=SEED), None),
        "SparsePCA": (lambda: dc.SparsePCA(3, max_iter=20, random_state=SEED), None),
        "MiniBatchSparsePCA": (lambda: dc.MiniBatchSparsePCA(3, max_iter=5, random_state=SEED), None),
        "DictionaryLearning": (lambda: dc.DictionaryLearning(3, max_iter=20, random_state=SEED), None),
        "MiniBatchDictionaryLearning": (lambda: dc.MiniBatchDictionaryLearning(3, max_iter=5, random_state=SEED),
                                        None),
        "NMF": (lambda: dc.NMF(3, max_iter=300, random_state=SEED), None),
        "MiniBatchNMF": (lambda: dc.MiniBatchNMF(3, random_state=SEED), None),
        "LatentDirichletAllocation": (lambda: dc.LatentDirichletAllocation(3, max_iter=5, random_state=SEED),
                                      "digits"),
        "FastICA": (lambda: dc.FastICA(3, random_state=SEED), None),
        "FactorAnalysis": (lambda: dc.FactorAnalysis(3, random_state=SEED), None),
        "SparseCoder": (lambda: dc.SparseCoder(np.eye(13)[:3]), None),
        "GaussianRandomProjection": (lambda: rp.GaussianRandomProjection(5, random_state=SEED), None),
        "SparseRandomProjection": (lambda: rp.SparseRandomProjection(5, random_state=SEED), None),
        "Nystroem": (lambda: ka.Nystroem(n_components=20, random_state=SEED), None),
        "RBFSampler": (lambda: ka.RBFSampler(n_components=20, random_state=SEED), None),
        "SkewedChi2Sampler": (lambda: ka.SkewedChi2Sampler(n_components=20, random_state=SEED), None),
        "PolynomialCountSketch": (lambda: ka.PolynomialCountSketch(n_components=20, random_state=SEED), None),
        "Isomap": (lambda: mf.Isomap(n_components=2), None),
        "LocallyLinearEmbedding": (lambda: mf.LocallyLinearEmbedding(n_components=2, random_state=SEED), None),
        "QuantileTransformer": (lambda: pp.QuantileTransformer(n_quantiles=20, random_state=SEED), "iris"),
        "SplineTransformer": (lambda: pp.SplineTransformer(n_knots=4), None),
        "OneHotEncoder": (pp.OneHotEncoder, "digits4"),
        "OrdinalEncoder": (pp.OrdinalEncoder, "digits4"),
        "TargetEncoder": (lambda: pp.TargetEncoder(random_state=SEED), "digits4"),
        "CategoricalNB": (__import__("sklearn.naive_bayes").naive_bayes.CategoricalNB, "digits4"),
        "MultinomialNB": (__import__("sklearn.naive_bayes").naive_bayes.MultinomialNB, "digits"),
        "ComplementNB": (__import__("sklearn.naive_bayes").naive_bayes.ComplementNB, "digits"),
        "TfidfTransformer": (__import__("sklearn.feature_extraction.text").feature_extraction.text
                             .TfidfTransformer, "digits"),
        "CountVectorizer": (__import__("sklearn.feature_extraction.text").feature_extraction.text
                            .CountVectorizer, "text"),
        "TfidfVectorizer": (__import__("sklearn.feature_extraction.text").feature_extraction.text
                            .TfidfVectorizer, "text"),
        "HashingVectorizer": (lambda: __import__("sklearn.feature_extraction.text").feature_extraction.text
                              .HashingVectorizer(n_features=32), "text"),
        "DictVectorizer": (__import__("sklearn.feature_extraction").feature_extraction.DictVectorizer, "dicts"),
        "FeatureHasher": (lambda: __import__("sklearn.feature_extraction").feature_extraction.FeatureHasher(
            n_features=16), "dicts"),
        "LabelEncoder": (pp.LabelEncoder, "labels"),
        "LabelBinarizer": (pp.LabelBinarizer, "labels"),
        "MultiLabelBinarizer": (pp.MultiLabelBinarizer, "labels"),
        "KernelCenterer": (pp.KernelCenterer, "kernel"),
        "SimpleImputer": (__import__("sklearn.impute").impute.SimpleImputer, "wine_nan"),
        "KNNImputer": (__import__("sklearn.impute").impute.KNNImputer, "wine_nan"),
        "IterativeImputer": (lambda: __import__("sklearn.impute").impute.IterativeImputer(random_state=SEED),
                             "wine_nan"),
        "MissingIndicator": (__import__("sklearn.impute").impute.MissingIndicator, "wine_nan"),
        "IsotonicRegression": (__import__("sklearn.isotonic").isotonic.IsotonicRegression, "diabetes_1col"),
        "LinearSVC": (lambda: svm.LinearSVC(random_state=SEED), None),
        "CCA": (lambda: __import__("sklearn.cross_decomposition").cross_decomposition.CCA(2), "diabetes2"),
        "PLSCanonical": (lambda: __import__("sklearn.cross_decomposition").cross_decomposition.PLSCanonical(2),
                         "diabetes2"),
        "PLSSVD": (lambda: __import__("sklearn.cross_decomposition").cross_decomposition.PLSSVD(2), "diabetes2"),
        "LogisticRegressionCV": (lambda: lm.LogisticRegressionCV(Cs=4, cv=3, max_iter=500), None),
        "LinearSVR": (lambda: svm.LinearSVR(random_state=SEED), None),
        "SVC": (lambda: svm.SVC(probability=True, random_state=SEED), None),
        "NuSVC": (lambda: svm.NuSVC(probability=True, random_state=SEED), None),
        "LabelPropagation": (ss.LabelPropagation, None),
        "LabelSpreading": (ss.LabelSpreading, None),
        "TSNE": (lambda: mf.TSNE(2, perplexity=10, max_iter=250, random_state=SEED), "iris"),
        "MDS": (lambda: mf.MDS(2, n_init=1, max_iter=50, random_state=SEED), "iris"),
        "ClassicalMDS": (lambda: mf.ClassicalMDS(2), None),
        "SpectralEmbedding": (lambda: mf.SpectralEmbedding(2, random_state=SEED), None),
    }


def _xy(key: str):
    d = dataset(key)
    return d.X, d.y


def _kind_of(make: Callable[[], Any]) -> str:
    from sklearn.base import is_classifier, is_clusterer, is_outlier_detector, is_regressor

    try:
        est = make()  # constructed: scikit-learn's tags read the parameters
        if is_classifier(est):
            return "classifier"
        if is_regressor(est):
            return "regressor"
        if is_outlier_detector(est):
            return "outlier"
        if is_clusterer(est):
            return "cluster"
    except Exception:
        pass
    return "transformer"


DEFAULT_DATA = {"classifier": "iris", "regressor": "diabetes", "outlier": "cancer", "cluster": "iris",
                "transformer": "wine"}
NO_CONSTRUCT = {"ColumnTransformer", "FeatureUnion", "Pipeline", "PatchExtractor"}  # composites: see _composites


def _seeded(make: Callable[[], Any]) -> Callable[[], Any]:
    def build():
        est = make()
        params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
        fix = {k: v for k, v in (("random_state", SEED), ("n_jobs", 1)) if k in params and params[k] is None}
        return est.set_params(**fix) if fix else est

    return build


def _composites() -> list[Case]:
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_selection import SelectKBest
    from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OneHotEncoder, StandardScaler

    def table_pipeline():
        ct = ColumnTransformer([("num", StandardScaler(), [f"f{i}" for i in range(6)]),
                                ("band", OneHotEncoder(handle_unknown="ignore"), ["band"]),
                                ("grade", OneHotEncoder(handle_unknown="ignore"), ["grade"])])
        return Pipeline([("prep", ct), ("clf", _lr())])

    return [
        Case("Pipeline(ColumnTransformer(StandardScaler, OneHotEncoder×2), LogisticRegression)", table_pipeline,
             "table", "composite", inputs=[*({"name": f"f{i}", "dtype": "float32", "shape": ["batch", 1]}
                                             for i in range(6)),
                                           {"name": "band", "dtype": "string", "shape": ["batch", 1],
                                            "categories": ["small", "medium", "large"]},
                                           {"name": "grade", "dtype": "int64", "shape": ["batch", 1]}]),
        Case("Pipeline(StandardScaler, PCA, LogisticRegression)",
             lambda: make_pipeline(StandardScaler(), PCA(5), _lr()), "wine", "composite"),
        Case("ColumnTransformer(StandardScaler, MinMaxScaler) by index",
             lambda: ColumnTransformer([("s", StandardScaler(), [0, 1, 2]), ("m", MinMaxScaler(), [3, 4, 5])]),
             "wine", "composite"),
        Case("FeatureUnion(PCA, SelectKBest)", lambda: FeatureUnion([("pca", PCA(3)), ("kb", SelectKBest(k=3))]),
             "wine", "composite"),
        Case("FunctionTransformer(np.log1p)", lambda: FunctionTransformer(np.log1p), "wine", "transformer"),
        Case("HistGradientBoostingClassifier, binary", lambda: HistGradientBoostingClassifier(
            max_iter=20, random_state=SEED), "cancer_nan", "classifier"),
        Case("HistGradientBoostingClassifier, categorical_features", lambda: HistGradientBoostingClassifier(
            max_iter=20, categorical_features=[0, 1], random_state=SEED), "wine_cat", "classifier"),
        Case("HistGradientBoostingRegressor, categorical_features", lambda: HistGradientBoostingRegressor(
            max_iter=20, categorical_features=[0, 1], random_state=SEED), "diabetes_cat", "regressor"),
        Case("HistGradientBoostingRegressor(loss='poisson')", lambda: HistGradientBoostingRegressor(
            loss="poisson", max_iter=20, random_state=SEED), "diabetes_nan", "regressor"),
    ]


def _boosters() -> list[Case]:
    out = []
    try:
        import xgboost

        out += [Case("XGBClassifier (onnxmltools)", lambda: xgboost.XGBClassifier(n_estimators=10, max_depth=3,
                                                                                  n_jobs=1), "iris", "classifier"),
                Case("XGBRegressor (onnxmltools)", lambda: xgboost.XGBRegressor(n_estimators=10, max_depth=3,
                                                                                n_jobs=1), "diabetes", "regressor")]
    except ImportError:
        pass
    try:
        import lightgbm

        out += [Case("LGBMClassifier (onnxmltools)", lambda: lightgbm.LGBMClassifier(
                    n_estimators=10, num_leaves=8, n_jobs=1, verbose=-1), "iris", "classifier"),
                Case("LGBMRegressor (onnxmltools)", lambda: lightgbm.LGBMRegressor(
                    n_estimators=10, num_leaves=8, n_jobs=1, verbose=-1), "diabetes", "regressor")]
    except ImportError:
        pass
    return out


def cases() -> list[Case]:
    """Every scikit-learn estimator (one row each), then the composites and the booster wrappers."""
    from sklearn.utils import all_estimators

    specials = _specials()
    out = []
    for name, cls in all_estimators():
        if name in NO_CONSTRUCT:
            continue
        make, data = specials.get(name, (cls, None))
        kind = _kind_of(make)
        out.append(Case(name, _seeded(make), data or DEFAULT_DATA[kind], kind, _FIT.get(name)))
    return out + _composites() + _boosters()


_FIT: dict[str, Callable] = {
    "LabelEncoder": lambda est, X, y: est.fit(y),
    "LabelBinarizer": lambda est, X, y: est.fit(y),
    "MultiLabelBinarizer": lambda est, X, y: est.fit(X),
    "SelfTrainingClassifier": lambda est, X, y: est.fit(X, np.where(np.arange(len(y)) % 3 == 0, -1, y)),
}


def skl2onnx_names() -> set[str]:
    """Class names skl2onnx registers a converter for."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return {c.__name__ for c in sklearn_operator_name_map if c is not None}


# ------------------------------------------------------------------ one case


def _short(msg: str, n: int = 220) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


def _single_thread(est) -> None:
    from onnxforge.frontends._tabular import parts

    for p in parts(est):
        try:
            params = p.get_params(deep=False)
        except Exception:
            continue
        for key in ("n_jobs", "nthread", "num_threads"):
            if key in params:
                with contextlib.suppress(Exception):
                    p.set_params(**{key: 1})


def _save(est, folder: Path, slug: str) -> tuple[Path, dict]:
    """Saved as users save: skops; a pickle (trust_pickle: true) only when skops cannot write it."""
    import skops.io as sio

    path = folder / f"{slug}.skops"
    try:
        sio.dump(est, path)
        return path, {}
    except Exception as e:  # skops cannot serialize some objects
        import joblib

        path = folder / f"{slug}.joblib"
        joblib.dump(est, path)
        return path, {"trust_pickle": True, "_skops": f"skops cannot save it ({_short(e, 80)})"}


def config(path: Path, source: dict, inputs: list[dict] | None = None):
    """The config `onnxforge convert --framework sklearn -m PATH [-i ...]` builds."""
    from onnxforge.standalone import build_config

    return build_config("convert", None, None, {}, source={"framework": "sklearn", "path": str(path), **source},
                        top={"name": "m", **({"inputs": inputs} if inputs else {})})


def convert(path: Path, source: dict, out: Path, inputs: list[dict] | None = None) -> None:
    """What `onnxforge convert --framework sklearn -m PATH -o OUT` runs."""
    from onnxforge.standalone import run_alone

    run_alone("convert", config(path, source, inputs), None, out)


def _feeds(model, native, cfg, Xt) -> dict[str, np.ndarray]:
    """The held-out rows as the ONNX model's inputs (the frontend's own input schema)."""
    from onnxforge.registry import frontend

    specs = frontend("sklearn").specs(native, cfg)
    if len(specs) == 1 and not hasattr(Xt, "columns"):
        dt = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "string": object}[specs[0].dtype]
        X = np.asarray(Xt)
        return {specs[0].name: (X.astype(str) if dt is object else X).astype(dt).reshape(len(X), -1)}
    from onnxforge import data

    return data.feeds_from_table({c: np.asarray(Xt[c]) for c in Xt.columns}, specs, nonfinite="allow")


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """Per output: max abs error, allclose at RTOL/ATOL; labels: how many differ."""
    out: dict[str, Any] = {"max_abs": 0.0, "ok": True, "outputs": {}}
    for name, r in ref.items():
        g = got.get(name)
        if g is None:
            out["ok"] = False
            out["outputs"][name] = "missing"
            continue
        r = _dense(r)
        g = np.asarray(g)
        if r.dtype.kind in "OUSb" or (name == "label"):
            rr, gg = r.reshape(len(r), -1).astype(str), g.reshape(len(g), -1).astype(str)
            if rr.shape != gg.shape:
                out["ok"], out["outputs"][name] = False, f"shape {gg.shape} vs {rr.shape}"
                continue
            differ = (rr != gg).any(axis=1)
            ties = _ties(ref, differ)
            bad = int(differ.sum()) - ties
            out["outputs"][name] = f"{bad}/{len(rr)} labels differ" + (f" ({ties} at ties)" if ties else "")
            out["label_mismatch"] = out.get("label_mismatch", 0) + bad
            out["label_ties"] = out.get("label_ties", 0) + ties
            out["ok"] = out["ok"] and bad == 0
            continue
        r = r.astype(np.float64).reshape(len(r), -1)
        g = g.astype(np.float64).reshape(len(g), -1)
        if r.shape != g.shape:
            out["ok"], out["outputs"][name] = False, f"shape {g.shape} vs {r.shape}"
            continue
        both_nan = np.isnan(r) & np.isnan(g)
        diff = np.where(both_nan, 0.0, np.abs(r - g))
        err = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
        out["max_abs"] = max(out["max_abs"], err)
        scale = float(np.nanmax(np.abs(r))) if r.size and np.isfinite(r).any() else 0.0
        out["outputs"][name] = {"max_abs": err, "max_ref": scale}
        out["ok"] = out["ok"] and bool(np.allclose(np.where(both_nan, 0, g), np.where(both_nan, 0, r), rtol=RTOL,
                                                   atol=ATOL * max(1.0, scale)))
    return out


def _ties(ref: dict, differ: np.ndarray) -> int:
    """Rows whose labels differ where the native model's two best classes are within TIE in probability: float32
    rounding decides such a row either way."""
    proba = next((np.asarray(v, dtype=np.float64) for k, v in ref.items() if k != "label" and np.ndim(v) == 2
                  and np.asarray(v).dtype.kind == "f"), None)
    if proba is None or proba.shape[0] != len(differ) or proba.shape[1] < 2 or not differ.any():
        return 0
    top = np.sort(proba, axis=1)[:, -2:]
    return int((differ & (top[:, 1] - top[:, 0] <= TIE)).sum())


def _dense(a):
    if hasattr(a, "toarray"):
        return np.asarray(a.toarray())
    return np.asarray(a)


def _native_call(native, X):
    from onnxforge.frontends._tabular import task_of

    task = task_of(native)
    if task == "classifier" and hasattr(native, "predict_proba"):
        return lambda: native.predict_proba(X)
    if task in ("classifier", "regressor"):
        return lambda: native.predict(X)
    return lambda: native.transform(X)


def _tile(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    reps = -(-n // len(next(iter(feeds.values()))))
    return {k: np.concatenate([v] * reps)[:n] for k, v in feeds.items()}


def time_case(sess, native, cfg, feeds, max_seconds: float) -> dict:
    from threadpoolctl import threadpool_limits

    from onnxforge.frontends._tabular import native_input
    from onnxforge.registry import frontend
    from onnxforge.timing import measure

    specs = frontend("sklearn").specs(native, cfg)
    out = {}
    with threadpool_limits(limits=1):
        for n in (1, BATCH):
            f = _tile(feeds, n)
            X = native_input(native, f, specs)
            ort, nat = [], []
            for _ in range(ROUNDS):  # interleaved: a busy neighbour slows both sides alike
                ort.append(measure(lambda f=f: sess.run(None, f), runs=100, warmup=2, max_seconds=max_seconds / ROUNDS,
                                   rows=n)["p50_ms"])
                nat.append(measure(_native_call(native, X), runs=100, warmup=2, max_seconds=max_seconds / ROUNDS,
                                   rows=n)["p50_ms"])
            out[f"ort_{n}_ms"], out[f"native_{n}_ms"] = float(np.median(ort)), float(np.median(nat))
            out[f"speedup_{n}"] = out[f"native_{n}_ms"] / out[f"ort_{n}_ms"]
    return out


def run_case(case: Case, folder: Path, timing: bool = False, max_seconds: float = 0.5) -> dict:
    """Fit, save, convert through onnxforge, score in onnxruntime, compare with the native reference."""
    from onnxforge import runtime
    from onnxforge.errors import UserError, one_line
    from onnxforge.registry import frontend

    slug = re.sub(r"[^A-Za-z0-9]+", "_", case.name).strip("_")[:60]
    d = dataset(case.data)
    row: dict[str, Any] = {"estimator": case.name, "kind": case.kind, "data": d.desc, "skl2onnx": None}
    t0 = time.perf_counter()
    est = case.make()
    try:
        from threadpoolctl import threadpool_limits

        with warnings.catch_warnings(), threadpool_limits(limits=1):  # BLAS threads on a busy 2-core box: slower
            warnings.simplefilter("ignore")
            est = (case.fit or (lambda e, X, y: e.fit(X, y)))(est, d.X, d.y)
    except Exception as e:
        row.update(status="fit failed", reason=_short(f"{type(e).__name__}: {one_line(e)}"))
        return row
    _single_thread(est)
    row["fit_s"] = time.perf_counter() - t0
    path, source = _save(est, folder, slug)
    note = source.pop("_skops", None)
    out = folder / f"{slug}.onnx"
    t0 = time.perf_counter()
    try:
        untrusted = None
        try:
            convert(path, source, out, case.inputs)
        except UserError as e:
            if "does not trust by default" not in str(e):
                raise
            untrusted = e
        if untrusted is not None:  # what the message asks: trust the listed types (not inside the except block)
            note = f"skops: {one_line(untrusted)}"
            source = {"trust_pickle": True}
            convert(path, source, out, case.inputs)
    except UserError as e:
        row.update(status="not supported", reason=_short(one_line(e), 400), exit=2, note=note)
        return row
    except Exception as e:  # an onnxforge bug (the CLI's exit 3)
        row.update(status="error", reason=_short(f"{type(e).__name__}: {one_line(e)}", 400), exit=3, note=note)
        return row
    row["convert_s"] = time.perf_counter() - t0
    row["note"] = note
    fe = frontend("sklearn")
    cfg = config(path, source, case.inputs)
    native = fe.load(cfg)
    _single_thread(native)
    try:
        feeds = _feeds(None, native, cfg, d.Xt)
        sess = runtime.session(out, threads=1)
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, feeds), strict=True))
        one = [sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(4)]  # batch 1 too
        for j, n in enumerate(names):
            b1 = np.concatenate([np.asarray(o[j]).reshape(1, -1) for o in one])
            if not np.array_equal(b1.astype(str), np.asarray(got[n])[:4].reshape(4, -1).astype(str)) and \
                    b1.dtype.kind == "f" and not np.allclose(b1, np.asarray(got[n])[:4].reshape(4, -1), rtol=1e-5,
                                                             atol=1e-6, equal_nan=True):
                row["batch1"] = f"{n}: batch of 1 differs from the full batch"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = fe.predict(native, feeds, cfg)
    except Exception as e:
        row.update(status="runs wrong", reason=_short(f"{type(e).__name__}: {one_line(e)}", 300))
        return row
    cmp = compare(got, ref)
    row.update(status="converts" if cmp["ok"] and "batch1" not in row else "mismatch", max_abs=cmp["max_abs"],
               outputs=cmp["outputs"], label_mismatch=cmp.get("label_mismatch"), rows=len(next(iter(feeds.values()))))
    if timing:
        try:
            row.update(time_case(sess, native, cfg, feeds, max_seconds))
        except Exception as e:
            row["timing_error"] = _short(f"{type(e).__name__}: {one_line(e)}")
    return row


# ------------------------------------------------------------------ the sweep and its table


def sweep(only: list[str] | None = None, timing: bool = True, max_seconds: float = 0.5,
          progress: bool = True) -> list[dict]:
    names = skl2onnx_names()
    rows = []
    todo = [c for c in cases() if not only or any(o.lower() in c.name.lower() for o in only)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(todo):
            t0 = time.perf_counter()
            row = run_case(case, Path(tmp), timing=timing, max_seconds=max_seconds)
            row["skl2onnx"] = case.name.split(" ")[0].split("(")[0].split(",")[0] in names
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if progress:
                print(f"[{i + 1}/{len(todo)}] {case.name}: {row['status']} ({row['seconds']:.1f}s) "
                      f"{row.get('reason', '') or ''}"[:200], file=sys.stderr, flush=True)
    return rows


def _err(v) -> str:
    return "—" if v is None else "0" if v == 0 else f"{v:.1e}"


def _speed(r: dict, n: int) -> str:
    s = r.get(f"speedup_{n}")
    return "—" if s is None else f"{s:.1f}×"


def short_reason(r: dict) -> str:
    """The CLI's one-line reason without the file name and the generic fix."""
    text = r.get("reason", "")
    text = re.sub(r"^skl2onnx cannot convert .+? from [^\s:]+: ", "", text)
    text = re.sub(r"^skl2onnx converts .+? from \S+ ", "skl2onnx converts it ", text)
    text = re.sub(r"^[\w(),×' =.]+ from \S+: ", "", text)
    text = re.sub(r" — (replace it|rerun with --debug|give a fitted).*$", "", text)
    text = re.sub(r", not what onnxforge takes for a \w+ \(.*?\) — not supported", " — onnxforge takes a "
                  "classifier's label + probabilities or one output", text)
    return text.replace("|", "/")


def _note(text: str) -> str:
    m = re.search(r"does not trust by default \(([^)]*)\)", text)
    if m:
        names = sorted({t.rsplit(".", 1)[-1] for t in m.group(1).split(", ")})
        return f"skops file needs `trusted_types` ({', '.join(names)})"
    return text.split(" — ")[0]


def markdown(rows: list[dict], meta: dict) -> str:
    conv = [r for r in rows if r["status"] in ("converts", "mismatch", "runs wrong")]
    refused = [r for r in rows if r not in conv]
    lines = [
        f"_{meta['summary']}_",
        "",
        "| estimator | data | converts | max abs error vs native | speed 1 row | speed 256 rows | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in conv:
        ok = {"converts": "yes", "mismatch": "**mismatch**", "runs wrong": "**fails in onnxruntime**"}[r["status"]]
        notes = []
        if r.get("label_mismatch"):
            notes.append(f"{r['label_mismatch']}/{r['rows']} labels differ")
        if r.get("label_ties"):
            notes.append(f"{r['label_ties']}/{r['rows']} labels differ at probability ties (≤ {TIE:g})")
        if r.get("batch1"):
            notes.append(r["batch1"])
        if r["status"] == "mismatch" and not r.get("label_mismatch"):
            notes.append("outputs differ beyond tolerance")
        if r["status"] == "runs wrong":
            notes.append(_short(r.get("reason", ""), 120).replace("|", "/"))
        if r.get("note"):
            notes.append(_note(r["note"]))
        lines.append(f"| {r['estimator']} | {r['data']} | {ok} | {_err(r.get('max_abs'))} | {_speed(r, 1)} | "
                     f"{_speed(r, BATCH)} | {'; '.join(notes)} |")
    no_conv = [r for r in refused if short_reason(r).startswith("skl2onnx has no converter")]
    other = [r for r in refused if r not in no_conv]
    lines += ["", f"Not converted: {len(refused)} of {len(rows)}, each refused with exit 2 and this reason "
              "(`onnxforge convert` prints it on one line, `--debug` adds the converter's traceback):", "",
              "| estimator | skl2onnx has a converter | why |", "|---|---|---|"]
    for r in other:
        lines.append(f"| {r['estimator']} | {'yes' if r['skl2onnx'] else 'no'} | {short_reason(r)} |")
    lines += ["", f"skl2onnx has no converter for these {len(no_conv)}: "
              + ", ".join(r["estimator"] for r in no_conv) + "."]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], seconds: float, timing: bool) -> str:
    import onnxruntime
    import skl2onnx
    import sklearn

    n_ok = sum(r["status"] == "converts" for r in rows)
    return (f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, Python {platform.python_version()}: {n_ok} of {len(rows)} rows convert "
            f"and match (outputs within rtol {RTOL:g} / atol {ATOL:g}·max|ref|, identical labels) on "
            f"{TEST_ROWS} held-out rows. Speed = native p50 / onnxruntime p50, both 1 thread"
            f"{'' if timing else ' (not measured in this run)'}. Sweep: {seconds:.0f} s.")


def run() -> list[dict]:
    """`python -m bench sklearn_matrix`: the table as a bench suite."""
    t0 = time.perf_counter()
    rows = sweep(progress=False)
    table = []
    for r in rows:
        table.append([r["estimator"], r["status"], _err(r.get("max_abs")), _speed(r, 1), _speed(r, BATCH),
                      r.get("reason", "")])
    return [{"title": "scikit-learn breadth: every estimator through onnxforge convert",
             "columns": ["estimator", "status", "max abs error", "speed 1 row", f"speed {BATCH} rows", "why not"],
             "rows": table, "notes": summary(rows, time.perf_counter() - t0, True), "data": rows}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_sklearn_matrix")
    ap.add_argument("--only", nargs="*", help="case names containing any of these")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=0.5, help="per latency measurement")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = sweep(args.only, timing=not args.no_timing, max_seconds=args.max_seconds)
    seconds = time.perf_counter() - t0
    meta = {"summary": summary(rows, seconds, not args.no_timing), "seconds": round(seconds, 1),
            "timing": not args.no_timing, "rtol": RTOL, "atol": ATOL, "test_rows": TEST_ROWS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sklearn_matrix.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    (out / "sklearn_matrix.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'sklearn_matrix.json'} and {out / 'sklearn_matrix.md'} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

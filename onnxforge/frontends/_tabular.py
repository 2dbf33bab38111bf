"""What the scikit-learn, XGBoost and LightGBM frontends share: recognizing and safely loading model files, input
schemas from the config, skl2onnx conversion with automatically chosen opsets, and native reference predictions.

Not a registered frontend itself (the leading underscore keeps the registry from importing it as one).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from onnxforge.config import SourceBase, TensorSpec
from onnxforge.errors import UserError, one_line
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends.base import Frontend, ThreadLimit, pool_threads, refuse_pickle, require
from onnxforge.registry import dist_version

BOOSTER_MAX_OPSET = 15  # onnxmltools 1.16 refuses a higher target_opset for XGBoost and LightGBM
BOOSTER_MAX_ML_OPSET = 3  # ... and ai.onnx.ml above 3
CLASSIFIER_OUTPUTS = ("label", "probabilities")
VALUE_OUTPUTS = ("variable",)
RANKER_OUTPUTS = ("scores",)  # XGBRanker/LGBMRanker: one relevance score per row (the raw margin, as predict)


class TabularSource(SourceBase):
    trusted_types: list[str] = Field(default_factory=list, description="skops types to trust beyond the built-in "
                                     "allowlist (scikit-learn, XGBoost and LightGBM estimator classes)")


class BoosterSource(TabularSource):
    task: Literal["auto", "classifier", "regressor", "ranker"] = Field(
        "auto", description="native model files: classifier, regressor or ranker (auto: from the model's objective)")


def model_path(cfg) -> Path:
    path = cfg.source.path
    if path is None:
        raise UserError(f"source.path is required for framework '{cfg.source.framework}' — point it at the model file")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} — check source.path")
    return path


# ------------------------------------------------------------------ safe loading of sklearn-API objects


# skops types trusted without asking. A name in a .skops file is only a string: it is trusted when the object it
# imports IS that class (its own __module__ + __qualname__; re-exports such as `…fcompiler.gnu.Popen` or
# `sklearn.datasets._covtype.GzipFile` are refused) and the class is an estimator of the libraries we convert, or
# one of the inert data holders those estimators keep. Functions are never trusted without `trusted_types`.
SKOPS_PACKAGES = ("sklearn", "xgboost", "lightgbm")  # only these are imported to resolve a name
SKOPS_EXACT = {"numpy.dtype", "collections.OrderedDict", "xgboost.core.Booster", "lightgbm.basic.Booster",
               "sklearn.utils._bunch.Bunch"}
SKOPS_BASES = (  # (module, class): subclasses of these, defined in SKOPS_PACKAGES, are trusted
    ("sklearn.base", "BaseEstimator"),
    ("sklearn.tree._tree", "Tree"),
    ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
    ("sklearn.neighbors._binary_tree", "BinaryTree64"),
    ("sklearn.neighbors._kd_tree", "KDTree"),
    ("sklearn.neighbors._ball_tree", "BallTree"),
    ("sklearn.metrics._dist_metrics", "DistanceMetric64"),
    ("sklearn.metrics._dist_metrics", "DistanceMetric32"),
    ("sklearn.neural_network._stochastic_optimizers", "BaseOptimizer"),
)


def _resolve_class(name: str) -> type | None:
    """The class `name` denotes, if it is defined (not merely imported) under that very name; imports nothing
    outside SKOPS_PACKAGES and the standard modules of SKOPS_EXACT."""
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] not in (*SKOPS_PACKAGES, "numpy", "collections"):
        return None
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    if not isinstance(obj, type) or f"{obj.__module__}.{obj.__qualname__}" != name:
        return None
    return obj


def _bases() -> tuple[type, ...]:
    found = []
    for module, attr in SKOPS_BASES:
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except Exception:  # moved in another release: that base is simply not trusted
            continue
    return tuple(found)


def _known_safe(name: str) -> bool:
    if name in SKOPS_EXACT:
        return _resolve_class(name) is not None
    cls = _resolve_class(name)
    return (cls is not None and cls.__module__.split(".")[0] in SKOPS_PACKAGES
            and issubclass(cls, _bases()))


def load_skops(path: Path, source) -> Any:
    sio = require("skops.io", "sklearn")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:
        raise UserError(f"{path.name}: not a readable skops file ({one_line(e)[:200]}) — re-save it with "
                        "skops.io.dump") from None
    refused = [t for t in untrusted if t not in source.trusted_types and not _known_safe(t)]
    if refused and not source.trust_pickle:
        raise UserError(f"{path.name} holds types onnxforge does not trust by default ({', '.join(refused[:6])}) — "
                        "list them under source.trusted_types if you trust them")
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as e:
        raise UserError(f"{path.name}: skops cannot load it ({type(e).__name__}: {one_line(e)[:200]}) — check the "
                        "library versions it was saved with") from None


def skops_packages(path: Path) -> set[str]:
    """Top-level packages of the objects in a skops file, read from its schema without constructing anything."""
    import json

    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("__module__"), str):
                found.add(node["__module__"].split(".")[0])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        with zipfile.ZipFile(path) as z:
            walk(json.loads(z.read("schema.json")))
    except (zipfile.BadZipFile, KeyError, ValueError):
        pass
    return found


def load_estimator_with(path: Path, source, wanted: str, package: str, label: str) -> Any:
    """A skops/pickle file that must hold a `package` model somewhere (e.g. a Pipeline ending in XGBClassifier)."""
    if sniff(path) == "skops" and package not in skops_packages(path):  # checked before constructing anything
        raise UserError(f"{path.name} holds no {label} model — use source.framework: sklearn")
    est = load_estimator(path, source, wanted)
    if not uses(est, package):
        raise UserError(f"{path.name} holds {describe(est)}, which has no {label} model — use "
                        "source.framework: sklearn")
    return est


def load_estimator(path: Path, source, wanted: str) -> Any:
    """A skops file, or a pickle/joblib file only when the config trusts pickles."""
    kind = sniff(path)
    if kind == "skops":
        return load_skops(path, source)
    if kind == "pickle":
        refuse_pickle(path, source.trust_pickle)
        joblib = require("joblib", "sklearn")
        try:
            return joblib.load(path)
        except Exception as e:
            raise UserError(f"{path.name}: cannot unpickle it ({type(e).__name__}: {one_line(e)[:200]}) — check "
                            "the library versions it was saved with") from None
    raise wrong_file(path, kind, wanted)


# ------------------------------------------------------------------ estimator structure


def parts(est) -> list:
    """The estimator and every estimator nested in it (Pipeline steps, ColumnTransformer transformers, ...)."""
    found = [est]
    if hasattr(est, "get_params"):
        try:
            params = est.get_params(deep=True)
        except Exception:
            params = {}
        found += [v for v in params.values() if hasattr(v, "fit") and not isinstance(v, type)]
    for attr in ("transformers_", "estimators_"):
        items = getattr(est, attr, None)  # GradientBoosting keeps an ndarray of trees: no truth value
        for item in (np.ravel(items) if isinstance(items, np.ndarray) else items or []):
            obj = item[1] if isinstance(item, tuple) else item
            if hasattr(obj, "fit"):
                found += parts(obj)
    return found


def final_estimator(est):
    while hasattr(est, "steps"):
        est = est.steps[-1][1]
    return est


def uses(est, package: str) -> bool:
    return any(type(p).__module__.split(".")[0] == package for p in parts(est))


# Estimators whose ONNX conversion scores NaN as the library does: a missing value follows each split's learned
# default branch (ONNX TreeEnsemble's missing_value_tracks_true). Measured against native predictions on held-out
# rows with 30 % NaN: XGBoost and LightGBM (native files and sklearn API, also after a StandardScaler) to ≤ 6e-5;
# HistGradientBoosting (skl_compat builds its node) exact, categorical features too. Not RandomForest/DecisionTree:
# sklearn ≥ 1.4 routes their NaN, skl2onnx does not (28 of 143 labels differed).
NAN_AWARE = {("xgboost", "XGBClassifier"), ("xgboost", "XGBRegressor"), ("xgboost", "XGBRanker"),
             ("lightgbm", "LGBMClassifier"), ("lightgbm", "LGBMRegressor"), ("lightgbm", "LGBMRanker"), ("sklearn", "HistGradientBoostingClassifier"),
             ("sklearn", "HistGradientBoostingRegressor")}
NAN_PASSING = {("sklearn", "Pipeline"), ("sklearn", "StandardScaler")}  # NaN in, NaN out, in sklearn and in ONNX


def _kind(obj) -> tuple[str, str]:
    return type(obj).__module__.split(".")[0], type(obj).__name__


def _nan_imputer(obj) -> bool:
    """A SimpleImputer of NaN (skl2onnx's Imputer op replaces NaN with the same fitted statistics)."""
    missing = getattr(obj, "missing_values", None)
    return (_kind(obj) == ("sklearn", "SimpleImputer") and isinstance(missing, float) and np.isnan(missing)
            and not getattr(obj, "add_indicator", False))


def imputes_first(est, specs=()) -> bool:
    """Every raw column that can hold NaN meets a NaN imputer before anything else: a Pipeline(SimpleImputer, ...),
    or a first ColumnTransformer whose every branch starts with one — but for branches whose columns are all
    declared text or integer inputs (those cannot hold NaN: a null text cell is refused)."""
    first = est
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    if _nan_imputer(first):
        return True
    floats = {s.column or s.name for s in specs if s.dtype in ("float32", "float64")} if specs else None
    branches = [(t, np.atleast_1d(cols)) for _, t, cols in getattr(first, "transformers_", [])
                if t != "drop" and len(np.atleast_1d(cols))]
    if not branches:
        return False
    for t, cols in branches:
        if floats is not None and not floats & {str(c) for c in cols}:
            continue
        while hasattr(t, "steps"):
            t = t.steps[0][1]
        if not _nan_imputer(t):
            return False
    return True


def accepts_missing(est, specs=()) -> bool:
    """Whether the converted model takes NaN as a missing value exactly as `est` does (stamped at convert time so
    predict can let NaN through): it imputes them first, or its trees route them as the library does. Only
    defaults are trusted: a custom `missing` marker or LightGBM's use_missing=False / zero_as_missing=True were
    not measured."""
    if imputes_first(est, specs):
        return True
    final = final_estimator(est)
    if _kind(final) not in NAN_AWARE or not all(_kind(p) in NAN_AWARE | NAN_PASSING for p in parts(est)):
        return False
    params = final.get_params() if hasattr(final, "get_params") else {}
    missing = params.get("missing", np.nan)
    return ((missing is None or (isinstance(missing, float) and np.isnan(missing)))
            and params.get("use_missing", True) is not False and not params.get("zero_as_missing", False))


def confirm_task(task: str, asked: str, objective: str, name: str) -> str:
    """A booster's task comes from its objective; a `source.task` that contradicts it is a config error."""
    if asked != "auto" and asked != task:
        raise UserError(f"source.task is {asked} but {name} was trained with objective '{objective}', a {task} — "
                        f"set task: {task} (or auto)")
    return task


def task_of(est) -> str:
    from sklearn.base import is_classifier, is_regressor

    final = final_estimator(est)
    if getattr(final, "_estimator_type", None) == "ranker" or _kind(final) == ("lightgbm", "LGBMRanker"):
        return "ranker"  # XGBRanker says so; LGBMRanker does not (nor do sklearn's tags)
    if is_classifier(est):
        return "classifier"
    if is_regressor(est) or hasattr(est, "predict"):
        return "regressor"
    if hasattr(est, "transform"):
        return "transformer"
    raise UserError(f"{type(est).__name__} has neither predict nor transform — give a fitted estimator or pipeline")


def model_family(est) -> str:
    """trees: the prediction is a tree ensemble's (sklearn trees and ensembles, XGBoost, LightGBM — float32 sums
    over many leaves); linear: a linear model, possibly after scalers/encoders; other: kernels, neighbours, networks,
    naive Bayes, ..."""
    final = final_estimator(est)
    mod = type(final).__module__.split(".")
    if mod[0] in ("xgboost", "lightgbm") or mod[:2] in (["sklearn", "tree"], ["sklearn", "ensemble"]):
        return "trees"
    if mod[:2] == ["sklearn", "linear_model"] or type(final).__name__ in ("LinearSVC", "LinearSVR"):
        return "linear"
    return "other"


def describe(est) -> str:
    if hasattr(est, "steps"):
        return f"Pipeline({', '.join(describe(s) for _, s in est.steps)})"
    if hasattr(est, "transformers"):
        return f"ColumnTransformer({', '.join(describe(t) for _, t, _ in est.transformers if not isinstance(t, str))})"
    return type(est).__name__


def _column_transformer(est):
    """The ColumnTransformer that receives the raw inputs (first step of a pipeline), if any."""
    while hasattr(est, "steps"):
        est = est.steps[0][1]
    return est if hasattr(est, "transformers_") else None


def _first_encoder(trans):
    """The encoder a ColumnTransformer branch starts with, behind SimpleImputers only; None otherwise."""
    steps = [t for _, t in trans.steps] if hasattr(trans, "steps") else [trans]
    for t in steps:
        if hasattr(t, "categories_"):
            return t
        if _kind(t) != ("sklearn", "SimpleImputer"):
            return None
    return None


def refused_levels(est, specs) -> dict[str, list]:
    """Inputs whose encoder refuses an unseen level in scikit-learn (handle_unknown='error', OrdinalEncoder's and
    OneHotEncoder's default) → its fitted levels. The graph does not refuse them (OrdinalEncoder's LabelEncoder maps
    them to a default code), so the scorer must: stamped as onnxforge.categories with the 'error' policy."""
    ct = _column_transformer(est)
    if ct is None:
        return {}
    names = {s.column or s.name: s.name for s in specs if len(s.keys) == 1}
    out: dict[str, list] = {}
    for _, trans, cols in ct.transformers_:
        enc = None if isinstance(trans, str) else _first_encoder(trans)
        if enc is None or getattr(enc, "handle_unknown", None) != "error":
            continue
        for col, levels in zip(np.atleast_1d(cols), enc.categories_, strict=False):
            values = np.asarray(levels).tolist()
            if str(col) in names and not any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
                out[names[str(col)]] = values  # a NaN level is a category sklearn accepts: not stamped
    return out


def classes_of(est) -> list | None:
    classes = getattr(est, "classes_", None)
    if classes is None:
        classes = getattr(final_estimator(est), "classes_", None)
    return None if classes is None else np.asarray(classes).tolist()


# ------------------------------------------------------------------ input schema


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"  # no [..]: the CLI prints errors as rich markup


def _width(spec) -> int | None:
    if len(spec.shape) != 2:
        raise UserError(f"input '{spec.name}' has shape {_fmt_shape(spec.shape)} — tabular models take 2-D inputs: "
                        "(batch, 1) per column or (batch, k) for a matrix")
    w = spec.shape[1]
    return w if isinstance(w, int) else (len(spec.columns) if spec.columns else None)


def default_specs(n_features: int | None, what: str) -> list:
    if not n_features:
        raise UserError(f"cannot tell how many features {what} takes — declare inputs: in the config")
    return [TensorSpec(name="input", dtype="float32", shape=["batch", n_features])]


def _encoded_kind(trans) -> str | None:
    """'string' or 'number' for an encoder's fitted categories; None for a numeric transformer."""
    cats = getattr(trans, "categories_", None)
    if cats is None:
        return None
    return "string" if any(np.asarray(c).dtype.kind in "OUS" for c in cats) else "number"


def _column_kinds(trans, n: int) -> list[str | None]:
    """Per column of a ColumnTransformer branch: 'string'/'number' as its encoder's fitted categories (each column
    its own: one encoder may hold text and integer columns), behind imputers too (Pipeline(SimpleImputer,
    OneHotEncoder), the usual categorical branch); None for numbers; 'skip' for drop/passthrough."""
    if isinstance(trans, str):
        return ["skip"] * n
    enc = _first_encoder(trans)
    if enc is None:
        return [None] * n
    return ["string" if np.asarray(c).dtype.kind in "OUS" else "number" for c in enc.categories_][:n]


def check_specs(est, specs, n_features: int | None, what: str) -> None:
    """Refuse an input spec that cannot feed this model (before the converter fails obscurely)."""
    names = getattr(est, "feature_names_in_", None) if hasattr(est, "n_features_in_") else None
    ct = _column_transformer(est)
    by_name = ct is not None and names is not None and any(
        isinstance(c, str) for _, _, cols in ct.transformers_ for c in np.atleast_1d(cols))
    if by_name:
        given = {s.name for s in specs}
        features = {str(n) for n in names}
        # the converter matches an input to the column it selects by the input's name, so a spec named otherwise
        # (e.g. the graph-safe 'sepal_length__cm_' with column: 'sepal length (cm)') can feed nothing
        renamed = next((s for s in specs if s.name not in features and s.column in features - given), None)
        if renamed is not None:
            raise UserError(f"input '{renamed.name}' reads column '{renamed.column}', which {what} selects by "
                            f"name — name the input '{renamed.column}' and drop its column: (the graph input keeps "
                            "that name, spaces and all)")
        if any((_width(s) or 1) != 1 for s in specs) or given != features:
            missing = [str(n) for n in names if str(n) not in given]
            extra = sorted(given - {str(n) for n in names})
            raise UserError(f"the input spec does not match {what}: it selects columns by name, so declare one "
                            f"input per column, each of shape (batch, 1) (missing {missing[:8]}, unknown {extra[:8]})"
                            " — fix inputs: in the config")
        dtypes = {s.name: s.dtype for s in specs}
        for tname, trans, cols in ct.transformers_:
            cols = np.atleast_1d(cols)
            for c, kind in zip(cols, _column_kinds(trans, len(cols)), strict=True):
                dt = dtypes.get(str(c))
                if kind == "skip" or dt is None:
                    continue
                if kind == "string" and dt != "string":
                    raise UserError(f"input '{c}' is {dt} but '{tname}' encodes it as text categories — "
                                    f"declare it dtype: string")
                if kind != "string" and dt == "string":
                    raise UserError(f"input '{c}' is a string but '{tname}' treats it as numbers — declare it "
                                    "dtype: float32 or int64")
        return
    if len(specs) != 1:
        raise UserError(f"{what} takes one matrix input, but the input spec declares {len(specs)} inputs — declare "
                        f"one input of shape (batch, {n_features or 'k'}) with columns: listing the table columns")
    spec = specs[0]
    width = _width(spec)
    first = est
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    text = _encoded_kind(first) == "string"  # e.g. Pipeline(OneHotEncoder, ...) fitted on a string matrix
    if spec.dtype == "string" and not text:
        raise UserError(f"input '{spec.name}' is a string input but {what} takes numbers — declare dtype: float32")
    if text and spec.dtype != "string":
        raise UserError(f"input '{spec.name}' is {spec.dtype} but {what} encodes text categories — declare "
                        "dtype: string")
    if n_features and width is not None and width != n_features:
        raise UserError(f"input '{spec.name}' has {width} features, shape {_fmt_shape(spec.shape)}, but {what} "
                        f"expects {n_features} — fix its shape/columns in the config")
    if names is not None and spec.columns and [str(n) for n in names] != list(spec.columns):
        raise UserError(f"input '{spec.name}': columns {list(spec.columns)[:6]}... differ from the model's feature "
                        f"names {[str(n) for n in names][:6]}... — list the model's columns in its order")


def native_input(est, feeds: dict[str, np.ndarray], specs):
    """The same values the ONNX model gets, shaped as the native model expects (a DataFrame when it was fitted
    with column names). Dtypes are kept: the reference is the native model on the very same tensors."""
    names = getattr(est, "feature_names_in_", None) if hasattr(est, "n_features_in_") else None
    arrays = [np.asarray(feeds[s.name]).reshape(len(feeds[s.name]), -1) for s in specs]
    if names is None:
        return arrays[0] if len(arrays) == 1 else np.hstack(arrays)
    import pandas as pd

    names = [str(n) for n in names]
    if len(specs) == 1 and arrays[0].shape[1] == len(names):
        return pd.DataFrame(arrays[0], columns=names)
    cols = {s.name: (a[:, 0].astype(str) if a.dtype == object else a[:, 0]) for s, a in zip(specs, arrays, strict=True)}
    return pd.DataFrame(cols)[names]


def specs_for(cfg, est, n_features: int | None, what: str) -> list:
    specs = list(cfg.inputs) or default_specs(n_features, what)
    check_specs(est, specs, n_features, what)
    return specs


def output_names(task: str, cfg) -> list[str]:
    default = list(CLASSIFIER_OUTPUTS if task == "classifier" else RANKER_OUTPUTS if task == "ranker" else
                   VALUE_OUTPUTS)
    if not cfg.outputs:
        return default
    if len(cfg.outputs) != len(default):
        raise UserError(f"outputs: lists {len(cfg.outputs)} names but a {task} has {len(default)} outputs "
                        f"({', '.join(default)}) — list {len(default)} names or drop outputs:")
    return list(cfg.outputs)


# ------------------------------------------------------------------ conversion


def register_boosters(est) -> None:
    """Teach skl2onnx the XGBoost/LightGBM estimators found in `est` (onnxmltools' converters)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    cls_opts = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if uses(est, "xgboost"):
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(xgboost.XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost, options=cls_opts)
        update_registered_converter(xgboost.XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
        # a ranker's score is its raw margin: onnxmltools' regressor conversion (no link), measured equal
        update_registered_converter(xgboost.XGBRanker, "XGBoostXGBRanker",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
    if uses(est, "lightgbm"):
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(lightgbm.LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm, options=cls_opts)
        update_registered_converter(lightgbm.LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm,
                                    options={"split": None})
        update_registered_converter(lightgbm.LGBMRanker, "LightGbmLGBMRanker",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm,
                                    options={"split": None})


def plan_opset(requested: int | None, booster: bool) -> tuple[int | dict[str, int], int | None]:
    """(target_opset for the converter, opset to upgrade to afterwards or None). Boosters get an explicit
    ai.onnx.ml version: the one released with that opset, capped at what onnxmltools writes."""
    import onnx
    from skl2onnx import get_latest_tested_opset_version

    cap = BOOSTER_MAX_OPSET if booster else min(get_latest_tested_opset_version(), onnx.defs.onnx_opset_version())
    at, upgrade = ((requested or cap), None) if requested is None or requested <= cap else (cap, requested)
    if not booster:
        return at, upgrade
    ml = max((row[3] for row in onnx.helper.VERSION_TABLE if row[2] <= at), default=1)
    return {"": at, "ai.onnx.ml": min(ml, BOOSTER_MAX_ML_OPSET)}, upgrade


def _skl_type(spec, mltools: bool = False):
    if mltools:
        from onnxmltools.convert.common import data_types as t
    else:
        from skl2onnx.common import data_types as t
    types = {"float32": "FloatTensorType", "float64": "DoubleTensorType", "int64": "Int64TensorType",
             "int32": "Int32TensorType", "string": "StringTensorType", "bool": "BooleanTensorType"}
    if spec.dtype not in types or not hasattr(t, types[spec.dtype]):
        raise UserError(f"input '{spec.name}': dtype {spec.dtype} is not supported for tabular models — use "
                        "float32, float64, int64 or string")
    return getattr(t, types[spec.dtype])([d if isinstance(d, int) else None for d in spec.shape])


def initial_types(specs, mltools: bool = False) -> list:
    return [(s.name, _skl_type(s, mltools)) for s in specs]


def convert_estimator(est, specs, opset, what: str):
    """skl2onnx conversion of any sklearn-API estimator: tensors, not ZipMap, for classifier probabilities, and
    StandardScaler dividing like sklearn (multiplying by 1/scale flips tree splits for some rows)."""
    require("skl2onnx", "sklearn")
    from sklearn.preprocessing import StandardScaler

    from onnxforge.frontends import skl_compat  # skl2onnx's gaps on this stack (HistGradientBoosting, ...)

    register_boosters(est)
    est = _text_imputers(est)
    options: dict[Any, dict] = {StandardScaler: {"div": "div"}}
    task = task_of(est)
    if task == "classifier":
        options[id(final_estimator(est))] = {"zipmap": False}
    model = skl_compat.convert(est, initial_types(specs), options, opset, what)
    skl_compat.check_outputs(model, task, what)
    return model


def _text_imputers(est):
    """skl2onnx converts a SimpleImputer of text only when its missing value is a string, but one fitted on a
    pandas frame looks for NaN. A text input cannot hold NaN here (a null cell is refused, or is the text 'nan'
    under --allow-nan), so a copy whose imputers look for 'nan' computes what scikit-learn does on a null."""
    def text_imputers(obj) -> list:  # the fitted ones: parts() also lists a ColumnTransformer's unfitted clones
        kids = [t for _, t in getattr(obj, "steps", [])] + [t for _, t, _ in getattr(obj, "transformers_", [])]
        own = [obj] if _nan_imputer(obj) and np.asarray(getattr(obj, "statistics_", [0.0])).dtype.kind == "O" else []
        return own + [i for k in kids if not isinstance(k, str) for i in text_imputers(k)]

    if not text_imputers(est):
        return est
    import copy

    est = copy.deepcopy(est)
    for imputer in text_imputers(est):
        imputer.missing_values = "nan"
    return est


def fix_lightgbm_thresholds(model, boosters) -> dict[str, int]:
    """LightGBM compares x <= t in double; ONNX stores t as float32, rounded to nearest. When float32(t) > t, an
    input exactly equal to float32(t) goes left in ONNX and right in LightGBM. For float32 inputs, x <= t holds iff
    x <= (largest float32 <= t): store that instead. The doubles come from the boosters' own dumps, matched by
    (feature, float32 threshold); a key shared by thresholds on both sides of their rounding is left alone."""
    below: dict[tuple[int, float], set[bool]] = {}
    for booster in boosters:
        for tree in booster.dump_model()["tree_info"]:
            stack = [tree["tree_structure"]]
            while stack:
                n = stack.pop()
                if "split_feature" not in n:
                    continue
                stack += [n["left_child"], n["right_child"]]
                if n.get("decision_type") == "<=":
                    t = float(n["threshold"])
                    with np.errstate(over="ignore"):  # LightGBM's 1e300 (missing-value) thresholds round to inf
                        f = float(np.float32(t))
                    below.setdefault((int(n["split_feature"]), f), set()).add(f > t)
    fixed = ambiguous = 0
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml" or not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" not in attrs:
            continue
        values, feats, modes = attrs["nodes_values"].floats, attrs["nodes_featureids"].ints, attrs["nodes_modes"].strings
        for i in range(len(values)):
            if modes[i] != b"BRANCH_LEQ":
                continue
            v = np.float32(values[i])
            side = below.get((int(feats[i]), float(v)))
            if side == {True}:
                values[i] = float(np.nextafter(v, np.float32(-np.inf)))
                fixed += 1
            elif side == {True, False}:
                ambiguous += 1
    return {"fixed": fixed, "ambiguous": ambiguous}


def _normalize_opsets(model) -> None:
    """Converters sometimes list a domain twice; keep one entry per domain, the highest version."""
    best: dict[str, int] = {}
    for o in model.opset_import:
        dom = "" if o.domain == "ai.onnx" else o.domain
        best[dom] = max(best.get(dom, 0), o.version)
    del model.opset_import[:]
    for dom, ver in sorted(best.items()):
        model.opset_import.add(domain=dom, version=ver)


def _rename_outputs(model, names: list[str]) -> None:
    graph = model.graph
    old = [o.name for o in graph.output]
    if len(old) != len(names):
        raise UserError(f"outputs: lists {len(names)} names but the converted model has {len(old)} outputs "
                        f"({', '.join(old)}) — fix outputs:")
    mapping = {o: n for o, n in zip(old, names, strict=True) if o != n}
    if not mapping:
        return
    inputs = {i.name for i in graph.input}
    taken = _value_names(graph)
    clash = [n for n in mapping.values() if n in taken and n not in mapping]
    if any(n in inputs for n in clash):
        raise UserError(f"output name {clash[0]} is already used inside the model — choose other outputs: names")
    # an inner tensor holds the name (skl2onnx calls a ColumnTransformer's parts 'variable'): it moves aside
    _move_aside(mapping, taken)
    _substitute(graph, mapping)


def _move_aside(mapping: dict[str, str], taken: set[str]) -> None:
    """A new name that a value inside the graph already holds (and that is not itself being renamed): that value
    moves to a fresh '<name>_innerN', added to `mapping` (one substitution then renames both at once)."""
    for n in [n for n in mapping.values() if n in taken and n not in mapping]:
        fresh = next(f"{n}_inner{i}" for i in range(len(taken) + 1) if f"{n}_inner{i}" not in taken)
        taken.add(fresh)
        mapping[n] = fresh


def _float_trees(model) -> int:
    """Trees fed float64 (a float64 input through a scaler computed in double, as sklearn does): XGBoost and
    scikit-learn's trees cast their features to float32 before comparing, so the ensemble gets a Cast to float
    (compared in double, 32 of 50 rows moved across a threshold, by up to 78 on values ≈ 150). And onnxmltools
    declares such an ensemble's scores double while ONNX-ML's TreeEnsemble* always emits float (onnx.checker
    fails): the scores are cast back to the declared type."""
    from onnx import TensorProto, helper, shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    declared = {v.name: v.type.tensor_type.elem_type
                for v in (*model.graph.input, *model.graph.output, *model.graph.value_info, *inferred.value_info)}
    nodes, added = [], 0
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml" or not node.op_type.startswith("TreeEnsemble"):
            nodes.append(node)
            continue
        x = node.input[0]
        if declared.get(x) == TensorProto.DOUBLE:
            nodes.append(helper.make_node("Cast", [x], [f"{x}_float"], to=TensorProto.FLOAT,
                                          name=f"{node.name or x}_features_to_float"))
            node.input[0] = f"{x}_float"
            added += 1
        nodes.append(node)
        scores = 1 if node.op_type == "TreeEnsembleClassifier" else 0  # (label, scores) or (scores)
        out = node.output[scores] if len(node.output) > scores else ""
        if declared.get(out) == TensorProto.DOUBLE:
            node.output[scores] = f"{out}_float"
            nodes.append(helper.make_node("Cast", [f"{out}_float"], [out], to=TensorProto.DOUBLE,
                                          name=f"{node.name or out}_to_double"))
            added += 1
    if added:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return added


def _value_names(graph) -> set[str]:
    """Every value name a graph and its subgraphs use."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.input, node.output)
        for a in node.attribute:
            for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                names |= _value_names(g)
    return names


def _substitute(graph, mapping: dict[str, str]) -> None:
    """Rename values everywhere they occur, subgraphs included (a Scan body may read an outer input)."""
    for node in graph.node:
        for seq in (node.input, node.output):
            for i, v in enumerate(seq):
                if v in mapping:
                    seq[i] = mapping[v]
        for a in node.attribute:
            for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                _substitute(g, mapping)
    for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        v.name = mapping.get(v.name, v.name)


def _rename_inputs(model, specs) -> None:
    """skl2onnx and onnxmltools turn input names into C identifiers ('sepal length (cm)' → 'sepal_length__cm_');
    ONNX names are any strings, so the graph takes the declared names back: the columns a ColumnTransformer selects,
    the data's headers and serve's JSON keys are then the graph's input names too."""
    graph = model.graph
    initialized = {t.name for t in graph.initializer}
    old = [i.name for i in graph.input if i.name not in initialized]
    if len(old) != len(specs):
        return  # convert names the mismatch
    mapping = {o: s.name for o, s in zip(old, specs, strict=True) if o != s.name}
    if not mapping:
        return
    _move_aside(mapping, _value_names(graph))
    _substitute(graph, mapping)


def finish(model, specs, names: list[str], upgrade_to: int | None, notes: dict[str, Any]):
    """Normalize what converters leave behind: one opset per domain (upgraded if asked beyond the converter's cap),
    the config's output names, and the batch dimension named on every output."""
    import onnx

    from onnxforge.artifact import stamp

    _normalize_opsets(model)
    if _float_trees(model):
        notes["trees_cast_to_float"] = True
    if upgrade_to is not None:
        current = next(o.version for o in model.opset_import if o.domain == "")
        try:
            model = onnx.version_converter.convert_version(model, upgrade_to)
        except Exception as e:
            raise UserError(f"exported at opset {current} (the converter's cap) but onnx cannot upgrade it to "
                            f"{upgrade_to} ({one_line(e)[:160]}) — drop convert.opset or choose ≤ {current}") from None
        _normalize_opsets(model)
        notes["opset_upgraded_from"] = current
    _rename_inputs(model, specs)  # before the outputs: an output name an input takes is then refused there
    _rename_outputs(model, names)
    batch = specs[0].shape[0] if specs and isinstance(specs[0].shape[0], str) else "batch"
    by_name = {s.name: s for s in specs}
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        spec = by_name.get(value.name)
        for i, d in enumerate(dims):  # converters leave dynamic dims unnamed (or, for some outputs, wrong)
            want = spec.shape[i] if spec is not None and i < len(spec.shape) else (batch if i == 0 else None)
            if isinstance(want, str):
                d.Clear()
                d.dim_param = want
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    stamp(model, opsets=opsets, **{f"convert.{k}": v for k, v in notes.items()})
    return model


# ------------------------------------------------------------------ the shared frontend


def _xgb_nthread(est) -> str | None:
    """The nthread an XGBoost estimator's booster really holds (its saved config), None when it has no booster."""
    try:
        return json.loads(est.get_booster().save_config())["learner"]["generic_param"]["nthread"]
    except Exception:
        return None


def limit_parts(est, n: int, stack: contextlib.ExitStack) -> list[str]:
    """n_jobs=n on every estimator in `est` that has it (an XGBoost booster's nthread too), each restored when
    `stack` closes; returns what does not read back as n (empty: the limit holds)."""
    off, seen = [], set()
    for p in parts(est):
        if id(p) in seen or not hasattr(p, "get_params"):
            continue
        seen.add(id(p))
        xgb_prev = _xgb_nthread(p) if type(p).__module__.startswith("xgboost") else None
        if xgb_prev is not None:  # set_params(n_jobs=None) keeps the booster at n: restore its nthread itself
            stack.callback(lambda p=p, v=xgb_prev: p.get_booster().set_param({"nthread": int(v)}))
        try:
            params = p.get_params(deep=False)
        except Exception:
            continue
        if "n_jobs" not in params:
            continue
        stack.callback(lambda p=p, v=params["n_jobs"]: p.set_params(n_jobs=v))
        p.set_params(n_jobs=n)
        if xgb_prev is not None:
            p.get_booster().set_param({"nthread": n})
            if (got := _xgb_nthread(p)) != str(n):
                off.append(f"{type(p).__name__} booster nthread {got}")
        elif p.get_params(deep=False).get("n_jobs") != n:
            off.append(f"{type(p).__name__} n_jobs {p.get_params(deep=False).get('n_jobs')}")
    return off


class SklearnAPIFrontend(Frontend):
    """Any fitted estimator with the scikit-learn API (Pipelines included), from skops or trusted pickle files."""

    extra: ClassVar[str] = "sklearn"
    wanted: ClassVar[str] = "a scikit-learn model (.skops, or a pickle with trust_pickle: true)"
    # measured (bench/out/tolerances.md, sklearn/XGBoost/LightGBM on diabetes, make_regression, iris, wine, cancer,
    # digits): values (regression, ranking scores) need up to rtol 8.4e-6 at atol 1e-5 (tree ensembles sum float32
    # leaves; a linear model crossing zero loses digits) and up to 3.8e-4 abs on targets of a few hundred:
    # 1e-4 / 1e-4 leaves ≥ 11×. Probabilities are within 6.6e-7 (trees), 2.4e-7 (linear), 1.8e-6 (other: SVC,
    # naive Bayes, MLP) of predict_proba: atol alone, ≥ 15× (54× for other).
    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-4
    tolerances: ClassVar[dict[tuple[str, str], tuple[float, float]]] = {
        ("trees", "probabilities"): (0.0, 1e-5),
        ("linear", "probabilities"): (0.0, 1e-5),
        ("other", "probabilities"): (0.0, 1e-4),
    }
    reads: ClassVar[tuple[str, ...]] = ("skops", "pickle")
    # a converter that is wrong only between some thresholds (skl2onnx's isotonic calibration: nearest threshold
    # for sklearn's interpolation) passed a 32-row check; tabular models run 1024 rows in milliseconds
    verify_rows: ClassVar[int] = 1024
    # validate also compares with predict on the data file's float64 values (see validate.as_loaded)
    float64_reference: ClassVar[bool] = True

    def versions(self) -> dict[str, str]:
        # the boosters' versions matter only when the model used them (they are imported lazily, on demand)
        extra = [p for p, mod in (("xgboost-cpu", "xgboost"), ("xgboost", "xgboost"), ("lightgbm", "lightgbm"),
                                  ("onnxmltools", "onnxmltools")) if mod in sys.modules]
        return {p: v for p in (*self.packages, *extra) if (v := dist_version(p))}

    def load(self, cfg):
        return load_estimator(model_path(cfg), cfg.source, self.wanted)

    def what(self, est, cfg) -> str:
        return f"{describe(est)} from {Path(cfg.source.path).name}"

    def n_features(self, est) -> int | None:
        return getattr(est, "n_features_in_", None)

    def specs(self, est, cfg) -> list:
        return specs_for(cfg, est, self.n_features(est), self.what(est, cfg))

    def export(self, native, cfg, opset, workdir):
        from onnxforge.frontends.skl_compat import refuse_inexact

        refuse_inexact(native, self.what(native, cfg))
        specs = self.specs(native, cfg)
        booster = uses(native, "xgboost") or uses(native, "lightgbm")
        at, upgrade = plan_opset(opset, booster)
        model = convert_estimator(native, specs, at, self.what(native, cfg))
        notes: dict[str, Any] = {}
        if uses(native, "lightgbm"):
            notes["lightgbm_thresholds"] = fix_lightgbm_thresholds(
                model, [p.booster_ for p in parts(native) if type(p).__module__.startswith("lightgbm")])
        if booster:
            notes["opset_cap"] = f"{BOOSTER_MAX_OPSET} (onnxmltools' limit for XGBoost/LightGBM)"
        return finish(model, specs, output_names(task_of(native), cfg), upgrade, notes)

    @contextlib.contextmanager
    def threads(self, native, n: int):
        """n_jobs=n on every estimator that has it (XGBoost: the booster's nthread, read back from its config;
        LightGBM: n_jobs becomes predict's num_threads) and every OpenMP/BLAS pool at n; restored after."""
        with contextlib.ExitStack() as stack:
            off = limit_parts(native, n, stack)
            pools = stack.enter_context(pool_threads(n))
            ok = not off and pools.applied
            yield ThreadLimit(ok, (f"n_jobs={n} read back from every estimator that has it; {pools.how}" if ok else
                                   "; ".join([*off, *([] if pools.applied else [pools.how])])))

    def predict(self, native, feeds, cfg):
        specs = self.specs(native, cfg)
        X = native_input(native, feeds, specs)
        task = task_of(native)
        names = output_names(task, cfg)

        def call(method):  # scikit-learn refusing the values (unknown categories, NaN) is about the inputs: exit 2
            try:
                out = getattr(native, method)(X)
            except ValueError as e:
                raise UserError(f"{describe(native)}.{method} refuses these inputs ({one_line(e)[:200]}) — check "
                                "the data against what the model was fitted on") from e
            return np.asarray(out.toarray() if hasattr(out, "toarray") else out)  # sparse (TfidfTransformer, ...)

        if task == "classifier":
            out = {names[0]: call("predict")}
            if hasattr(native, "predict_proba"):  # e.g. SVC(probability=False) has none: labels are still checked
                out[names[1]] = call("predict_proba")
            return out
        return {names[0]: call("transform" if task == "transformer" else "predict")}

    def family(self, native) -> str:
        return model_family(native)

    def output_kind(self, native, cfg, output: str) -> str:
        task = self.task(native)
        names = output_names(task, cfg)
        return "probabilities" if task == "classifier" and output in names[1:] else "value"

    def task(self, native) -> str:
        return task_of(native)

    def metadata(self, native, cfg):
        task = task_of(native)
        meta: dict[str, Any] = {"task": task, "estimator": describe(native)}
        if task == "classifier":
            meta["classes"] = classes_of(native)
        specs = self.specs(native, cfg)
        if accepts_missing(native, specs):
            meta["accepts_missing"] = True  # predict lets NaN through only for models stamped so
        levels = refused_levels(native, specs)
        if levels:
            meta["categories"], meta["unseen_policy"] = levels, {k: "error" for k in levels}
        return meta

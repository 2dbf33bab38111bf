"""skl2onnx 1.20 on this stack (scikit-learn 1.9, protobuf 7, onnx 1.23): what its converters get wrong and how
onnxforge works around it, all within one `convert_sklearn` call — a converter passed as its
`custom_conversion_functions`, options it accepts, a retry, a repair of what it declares. Nothing global is changed:
skl2onnx used directly, in the same process, behaves as shipped.

- HistGradientBoosting*: skl2onnx hands numpy bools (`nodes_missing_value_tracks_true`) and uint32s to
  `onnx.helper.make_attribute`, which protobuf 7 refuses (`AttributeProto.ints: Expected an int, got a boolean`).
  Its converter also ignores native categorical features (`categorical_features=`: the model's own OrdinalEncoder
  and column order, and set-membership splits) and a log link (`loss='poisson'`/`'gamma'` predict exp of the
  trees), and rounds thresholds to the nearest float32. `convert_hist_gradient_boosting` runs skl2onnx's own
  converter through a container that rewrites the tree node before it is made: plain Python ints, categorical
  splits as chains of BRANCH_EQ nodes sharing their child (what onnxmltools does for LightGBM, and what
  onnxruntime accepts), the encoder and column order in front, Exp behind, each threshold the largest float32 at or
  below the double (float32 inputs then split exactly as scikit-learn's `x <= t` in double).
- TunedThresholdClassifierCV: skl2onnx drops the tuned threshold (labels from argmax); `convert_tuned_threshold`
  thresholds the positive class's probability as scikit-learn does.
- SimpleImputer on a float64 input: skl2onnx's Imputer in double has no onnxruntime kernel (the artifact does not
  load); `convert_simple_imputer` writes IsNaN/Equal + Where with the statistics in double.
- Options a converter does not take (`zipmap` for LinearSVC) are dropped instead of failing the conversion.
- Models whose converter writes ai.onnx.ml 4 nodes it cannot version (IsolationForest) are retried at ai.onnx.ml 3.
- Declared shapes skl2onnx gets wrong (PLSRegression's output; OneVsOne's label [N, 1], QDA's [1, N]) fail
  onnx.checker's full check or reach users: intermediate value_info is dropped, an output's declared dims replaced
  by the ones shape inference derives where they contradict, and a label that is not [N] reshaped to [N].
- What cannot be converted is refused by name before anything else (`refuse_unsupported`: no converter, inputs that
  are not a table, OneVsOne with classes other than 0..n-1), or right after conversion (`check_outputs`: outputs
  that are not onnxforge's label + probabilities / one tensor); a converter failure names the estimator and the
  real reason on one line (`reason`: the innermost cause, not skl2onnx's dump of attributes), its traceback chained
  for `--debug`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from onnxforge.errors import UserError, one_line

ML_RETRY = re.compile(r"version \d+ of domain 'ai\.onnx\.ml' not supported yet.*target_opset=\{'ai\.onnx\.ml': (\d+)\}")


# ------------------------------------------------------------------ what skl2onnx can convert


def registered(cls: type) -> bool:
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return cls in sklearn_operator_name_map


def unconvertible(est) -> list[str]:
    """Estimator types in `est` (itself, pipeline steps, ColumnTransformer/FeatureUnion members) that skl2onnx has
    no converter for. Parameters such as a search's unfitted `estimator` are not looked at: the converter decides."""
    out: list[str] = []

    def walk(obj):
        if isinstance(obj, str) or obj is None:
            return
        if not registered(type(obj)) and type(obj).__name__ not in out:
            out.append(type(obj).__name__)
        for _, step in getattr(obj, "steps", None) or []:
            walk(step)
        for item in getattr(obj, "transformer_list", None) or []:
            walk(item[1])
        for item in getattr(obj, "transformers_", None) or []:
            walk(item[1])

    walk(est)
    return out


# estimators onnxforge's tabular inputs (one matrix, or one tensor per table column) cannot feed
NOT_TABULAR = {
    **dict.fromkeys(("LabelEncoder", "LabelBinarizer", "MultiLabelBinarizer"),
                    "encodes targets (y), not features: there is nothing to deploy — convert the model that is fed "
                    "the features"),
    **dict.fromkeys(("CountVectorizer", "TfidfVectorizer", "HashingVectorizer"),
                    "takes raw text documents; onnxforge's tabular inputs are table columns — not supported"),
    **dict.fromkeys(("DictVectorizer", "FeatureHasher"),
                    "takes dicts of features; onnxforge's tabular inputs are table columns — not supported"),
}


def refuse_unsupported(est, what: str) -> None:
    """Before any input schema is derived: an estimator fed something other than a table, or a part skl2onnx has no
    converter for, is refused by name (exit 2) instead of failing later on its inputs or deep in the converter."""
    from onnxforge.frontends._tabular import register_boosters

    first = est
    while hasattr(first, "steps"):
        first = first.steps[0][1]
    why = NOT_TABULAR.get(type(first).__name__)
    if why:
        raise UserError(f"{what}: {type(first).__name__} {why}")
    final = est
    while hasattr(final, "steps"):
        final = final.steps[-1][1]
    classes = getattr(final, "classes_", None)
    if type(final).__name__ == "OneVsOneClassifier" and classes is not None and \
            not np.array_equal(np.asarray(classes, dtype=object), np.arange(len(classes)).astype(object)):
        raise UserError(f"skl2onnx cannot convert {what}: its OneVsOneClassifier converter returns the class index, "
                        f"and the classes are {[str(c) for c in list(classes)[:4]]} — fit it on labels 0..n-1 (a LabelEncoder on y)")
    if type(final).__name__ in ("RadiusNeighborsClassifier", "RadiusNeighborsRegressor"):
        raise UserError(f"skl2onnx cannot convert {what}: skl2onnx's {type(final).__name__} graph fails in onnxruntime "
                        "(ArrayFeatureExtractor index -1) when rows have different numbers of neighbours within the "
                        "radius — use KNeighbors* instead")
    register_boosters(est)  # XGBoost/LightGBM parts get onnxmltools' converters
    missing = unconvertible(est)
    if missing:
        raise UserError(f"skl2onnx cannot convert {what}: skl2onnx has no converter for {', '.join(missing)} — "
                        "replace it, or register a converter for it with skl2onnx.update_registered_converter")


def refuse_inexact(est, what: str) -> None:
    """Parts skl2onnx converts without an error into a graph that computes something else, refused by name (exit 2):
    convert's own check runs on 32 rows, which need not reach the rows where they differ."""
    from onnxforge.frontends._tabular import parts

    for p in parts(est):
        name = type(p).__name__
        # skl2onnx looks up the nearest calibration threshold; IsotonicRegression interpolates between the two around
        # it (measured: probabilities off by up to 0.09 on held-out breast_cancer rows)
        if name == "CalibratedClassifierCV" and getattr(p, "method", None) == "isotonic":
            raise UserError(f"skl2onnx cannot convert {what} exactly: CalibratedClassifierCV(method='isotonic') "
                            "becomes a nearest-threshold lookup where scikit-learn interpolates linearly — refit it "
                            "with method='sigmoid', which converts exactly")
        # the ONNX OneHotEncoder fails on a level not seen in fit; scikit-learn encodes it as infrequent (or zeros)
        if name == "OneHotEncoder" and getattr(p, "handle_unknown", None) == "infrequent_if_exist":
            raise UserError(f"skl2onnx cannot convert {what} exactly: OneHotEncoder(handle_unknown="
                            "'infrequent_if_exist') gives a graph that fails in onnxruntime on a level not seen in "
                            "fit — refit it without min_frequency/max_categories, with handle_unknown='ignore' "
                            "or 'error'")


def allowed_options(cls: type) -> dict | None:
    """The options skl2onnx's converter for `cls` accepts (None: unknown, pass everything)."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    alias = sklearn_operator_name_map.get(cls)
    try:
        return get_converter(alias).get_allowed_options() or {}
    except Exception:
        return None


def applicable(options: dict, est_by_id: dict[int, Any]) -> dict:
    """`options` without what a converter would refuse (skl2onnx raises NameError on an unknown option)."""
    out = {}
    for key, opts in options.items():
        cls = type(est_by_id[key]) if isinstance(key, int) and key in est_by_id else key
        allowed = allowed_options(cls) if isinstance(cls, type) else None
        # a dict lists what the converter takes; anything else ('passthrough' for GridSearchCV) forwards the options
        keep = {k: v for k, v in opts.items() if k in allowed} if isinstance(allowed, dict) else opts
        if keep:
            out[key] = keep
    return out


# ------------------------------------------------------------------ one line from a converter failure


def _innermost(e: BaseException) -> BaseException:
    """The end of the explicit `raise … from` chain (not __context__: that may be anything being handled)."""
    seen = 0
    while seen < 10 and e.__cause__ is not None:
        e = e.__cause__
        seen += 1
    return e


def reason(e: BaseException, limit: int = 200) -> str:
    """The converter's real reason on one line: the innermost cause (skl2onnx wraps protobuf's complaint in a dump
    of every attribute), a missing converter named by its class."""
    inner = _innermost(e)
    text = str(inner)
    m = re.search(r"(?:shape calculator|converter) for (?:type|alias) '<class '([\w.]+)'>'", text) or \
        re.search(r"(?:shape calculator|converter) for (?:type|alias) '([\w.]+)'", text)
    if m:
        return f"skl2onnx has no converter for {m.group(1).rsplit('.', 1)[-1]}"
    text = re.split(r" and attributes=| with name=|\.? You may raise an is+ue", text, maxsplit=1)[0]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = one_line(f"{type(inner).__name__}: {first}")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def conversion_error(e: BaseException, what: str) -> UserError:
    r = reason(e)
    fix = ("replace it, or register a converter for it with skl2onnx.update_registered_converter"
           if r.startswith("skl2onnx has no converter") else "rerun with --debug for the converter's traceback")
    return UserError(f"skl2onnx cannot convert {what}: {r} — {fix}")


# ------------------------------------------------------------------ attribute values protobuf 7 accepts


def plain(value):
    """numpy scalars and bool/integer arrays as Python ints/floats (protobuf 7 refuses numpy bools in `ints`)."""
    if isinstance(value, np.ndarray):
        return value.astype(np.int64).tolist() if value.dtype.kind in "biu" else value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_, np.integer)):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# ------------------------------------------------------------------ HistGradientBoosting


def _bitset_members(bitset) -> list[int]:
    """Category codes set in one of scikit-learn's 8×uint32 bitsets."""
    words = np.asarray(bitset, dtype=np.uint32)
    return [i * 32 + b for i, w in enumerate(words) for b in range(32) if (int(w) >> b) & 1]


def _floor32(t: float) -> float:
    """The largest float32 ≤ t: for a float32 x, x <= t (in double) exactly when x <= _floor32(t)."""
    f = np.float32(t)
    if np.isfinite(t) and float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _categories(est) -> dict[int, int]:
    """{column of the encoded matrix: number of known category codes} for a model with native categorical
    features (codes are 0..k-1 after its OrdinalEncoder; unknown and missing are NaN)."""
    pre = est._preprocessor
    enc = pre.named_transformers_["encoder"]
    cols = np.arange(pre.n_features_in_)[pre.output_indices_["encoder"]]
    out = {}
    for col, cats in zip(cols, enc.categories_, strict=True):
        cats = np.asarray(cats)
        out[int(col)] = int(len(cats) - (1 if len(cats) and cats.dtype.kind == "f" and np.isnan(cats[-1]) else 0))
    return out


def hgb_tree_attributes(est, attrs: dict, float32: bool) -> dict:
    """skl2onnx's TreeEnsemble attributes for a HistGradientBoosting model, rebuilt from the model's own nodes:
    numeric splits at the float32 floor of their double threshold (float32 inputs), categorical splits as BRANCH_EQ
    chains on the encoded codes, NaN (missing and unknown categories) where scikit-learn sends it."""
    predictors = [p for it in est._predictors for p in it]  # skl2onnx's tree id k·n_trees_per_iteration + j
    n_known = _categories(est) if getattr(est, "_preprocessor", None) is not None else {}
    keys = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
            "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true", "nodes_hitrates")
    old = {k: list(attrs[k]) for k in keys if k in attrs}
    new: dict[str, list] = {k: [] for k in old}
    next_id: dict[int, int] = {}

    def emit(tree, node, feat, mode, value, true, false, missing):
        row = {"nodes_treeids": tree, "nodes_nodeids": node, "nodes_featureids": feat, "nodes_modes": mode,
               "nodes_values": value, "nodes_truenodeids": true, "nodes_falsenodeids": false,
               "nodes_missing_value_tracks_true": missing, "nodes_hitrates": 1.0}
        for k in new:
            new[k].append(row[k])

    for i in range(len(old["nodes_nodeids"])):
        tree, nid = int(old["nodes_treeids"][i]), int(old["nodes_nodeids"][i])
        pred = predictors[tree]
        node = pred.nodes[nid]
        next_id.setdefault(tree, len(pred.nodes))
        if node["is_leaf"]:
            emit(tree, nid, 0, "LEAF", 0.0, 0, 0, 0)
            continue
        feat, left, right = int(node["feature_idx"]), int(node["left"]), int(node["right"])
        nan_left = bool(node["missing_go_to_left"])
        if not node["is_categorical"]:
            t = float(node["num_threshold"])
            emit(tree, nid, feat, "BRANCH_LEQ", _floor32(t) if float32 else t, left, right, int(nan_left))
            continue
        if feat not in n_known:
            raise NotImplementedError(f"categorical split on feature {feat}, which the model's encoder does not "
                                      "encode")
        in_left = set(_bitset_members(pred.raw_left_cat_bitsets[int(node["bitset_idx"])]))
        codes = range(n_known[feat])
        lefts = [c for c in codes if c in in_left]
        rights = [c for c in codes if c not in in_left]
        # test the shorter list; a value not in it (or NaN) falls through to the other side
        chain, hit, miss = (lefts, left, right) if len(lefts) <= len(rights) else (rights, right, left)
        nan_to_hit = nan_left == (hit == left)
        if not chain:  # every known code on one side: a test that never holds, NaN routed by missing
            emit(tree, nid, feat, "BRANCH_LT", -1.0, hit, miss, int(nan_to_hit))
            continue
        ids = [nid] + [next_id[tree] + k for k in range(len(chain) - 1)]
        next_id[tree] += len(chain) - 1
        for k, code in enumerate(chain):
            false = ids[k + 1] if k + 1 < len(chain) else miss
            emit(tree, ids[k], feat, "BRANCH_EQ", float(code), hit, false, int(nan_to_hit and k == 0))
    out = dict(attrs)
    for k, v in new.items():
        ref = attrs[k]
        out[k] = np.asarray(v, dtype=ref.dtype) if isinstance(ref, np.ndarray) else v
    return out


class _HGBContainer:
    """skl2onnx's container as its HistGradientBoosting converter sees it: every call passes through, except that
    the TreeEnsemble node is rewritten (hgb_tree_attributes), fed the encoded matrix when the model has categorical
    features, followed by Exp for a log link, and every node gets plain attribute values."""

    def __init__(self, container, scope, operator):
        object.__setattr__(self, "_c", container)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_op", operator)

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __setattr__(self, name, value):
        setattr(self._c, name, value)

    def add_node(self, op_type, inputs, outputs, op_domain="", op_version=None, name=None, **attrs):
        est = self._op.raw_operator
        if op_domain == "ai.onnx.ml" and op_type.startswith("TreeEnsemble"):
            from skl2onnx.common.data_types import DoubleTensorType

            if isinstance(self._op.inputs[0].type, DoubleTensorType):
                raise NotImplementedError(f"{type(est).__name__} with a float64 input: skl2onnx builds a float32 "
                                          "tree ensemble and declares float64 outputs; declare the input float32")
            attrs = hgb_tree_attributes(est, attrs, True)
            if getattr(est, "_preprocessor", None) is not None:
                inputs = [self._encode(inputs[0] if isinstance(inputs, list) else inputs)]
            link = type(getattr(getattr(est, "_loss", None), "link", None)).__name__
            if op_type == "TreeEnsembleRegressor" and link not in ("IdentityLink", "NoneType"):
                if link != "LogLink":
                    raise NotImplementedError(f"{type(est).__name__} with a {link} (loss={est.loss!r})")
                final = outputs[0] if isinstance(outputs, list) else outputs
                raw = self._scope.get_unique_variable_name("hgb_raw")
                self._c.add_node(op_type, inputs, raw, op_domain=op_domain, op_version=op_version, name=name,
                                 **{k: plain(v) for k, v in attrs.items()})
                return self._c.add_node("Exp", raw, final, name=self._scope.get_unique_operator_name("HgbLink"))
        return self._c.add_node(op_type, inputs, outputs, op_domain=op_domain, op_version=op_version, name=name,
                                **{k: plain(v) for k, v in attrs.items()})

    def _encode(self, x: str) -> str:
        """What the model's `_preprocessor` does: each categorical column through its OrdinalEncoder (known
        category → its code, anything else → NaN; categories a float32 cannot hold are unreachable from float32
        inputs, as in scikit-learn), encoded columns first, then the numeric ones in order."""
        from onnx import TensorProto

        est, scope, c = self._op.raw_operator, self._scope, self._c
        pre = est._preprocessor
        enc = pre.named_transformers_["encoder"]
        cols = np.arange(pre.n_features_in_)
        cat_cols, num_cols = cols[est.is_categorical_], cols[~est.is_categorical_]
        xf = scope.get_unique_variable_name("hgb_x")
        c.add_node("Cast", x, xf, to=TensorProto.FLOAT, name=scope.get_unique_operator_name("HgbCast"))
        parts = []
        for col, cats in zip(cat_cols, enc.categories_, strict=True):
            cats = np.asarray(cats)
            if cats.dtype.kind not in "fiub":
                raise NotImplementedError(f"{type(est).__name__} with text categories in column {int(col)}: encode "
                                          "them before the model (an OrdinalEncoder in a Pipeline)")
            keys, codes = [], []
            for code, v in enumerate(cats):
                v = float(v)
                if not np.isnan(v) and float(np.float32(v)) == v:
                    keys.append(v)
                    codes.append(float(code))
            idx = scope.get_unique_variable_name("hgb_col")
            c.add_initializer(idx, TensorProto.INT64, [1], [int(col)])
            colv, code_v = scope.get_unique_variable_name("hgb_raw_cat"), scope.get_unique_variable_name("hgb_code")
            c.add_node("Gather", [xf, idx], colv, axis=1, name=scope.get_unique_operator_name("HgbGather"))
            c.add_node("LabelEncoder", colv, code_v, op_domain="ai.onnx.ml", op_version=2, keys_floats=keys,
                       values_floats=codes, default_float=float("nan"),
                       name=scope.get_unique_operator_name("HgbEncode"))
            parts.append(code_v)
        if len(num_cols):
            idx = scope.get_unique_variable_name("hgb_num")
            c.add_initializer(idx, TensorProto.INT64, [len(num_cols)], [int(i) for i in num_cols])
            nums = scope.get_unique_variable_name("hgb_nums")
            c.add_node("Gather", [xf, idx], nums, axis=1, name=scope.get_unique_operator_name("HgbGather"))
            parts.append(nums)
        out = scope.get_unique_variable_name("hgb_encoded")
        c.add_node("Concat", parts, out, axis=1, name=scope.get_unique_operator_name("HgbConcat"))
        return out


def convert_hist_gradient_boosting(scope, operator, container):
    """skl2onnx's own HistGradientBoosting converter, through _HGBContainer."""
    from skl2onnx.common._registration import get_converter

    get_converter(operator.type)(scope, operator, _HGBContainer(container, scope, operator))


# ------------------------------------------------------------------ TunedThresholdClassifierCV


def convert_tuned_threshold(scope, operator, container):
    """skl2onnx forwards TunedThresholdClassifierCV to its inner classifier and drops the tuned threshold (labels
    then come from argmax, 3 of 64 differed on breast_cancer). Here: the inner classifier's probabilities as the
    probabilities, and the label as scikit-learn decides it: classes[score >= best_threshold_], the score being the
    positive class's probability."""
    from onnx import TensorProto
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common.data_types import Int64TensorType, guess_proto_type

    model = operator.raw_operator
    inner = model.estimator_
    if model.response_method not in ("auto", "predict_proba") or not hasattr(inner, "predict_proba"):
        raise NotImplementedError(f"{type(model).__name__} thresholding {model.response_method} (only "
                                  "predict_proba scores are converted)")
    classes = np.asarray(model.classes_)
    pos_label = model._curve_scorer._get_pos_label()
    pos = 1 if pos_label is None else int(np.flatnonzero(classes == pos_label)[0])
    order = [0, 1] if pos_label is None else [int(np.flatnonzero(classes != pos_label)[0]), pos]

    this = scope.declare_local_operator(sklearn_operator_name_map[type(inner)], inner)
    this.inputs = operator.inputs
    label_in = scope.declare_local_variable("label_inner", Int64TensorType())
    proba_in = scope.declare_local_variable("proba_inner", operator.outputs[1].type.__class__())
    this.outputs.append(label_in)
    this.outputs.append(proba_in)
    proba = proba_in.onnx_name
    name = scope.get_unique_variable_name
    c = container
    c.add_node("Identity", [proba], [operator.outputs[1].full_name], name=scope.get_unique_operator_name("TtProba"))
    col, thr, ge, idx, pick, flat = (name(n) for n in ("tt_col", "tt_thr", "tt_ge", "tt_pos", "tt_pick", "tt_flat"))
    c.add_initializer(col, TensorProto.INT64, [], [pos])
    c.add_initializer(thr, guess_proto_type(operator.outputs[1].type), [], [float(model.best_threshold_)])
    score = name("tt_score")
    c.add_node("Gather", [proba, col], score, axis=1, name=scope.get_unique_operator_name("TtScore"))
    c.add_node("GreaterOrEqual", [score, thr], ge, name=scope.get_unique_operator_name("TtGe"))
    c.add_node("Cast", ge, idx, to=TensorProto.INT64, name=scope.get_unique_operator_name("TtCast"))
    mapping = name("tt_map")
    c.add_initializer(mapping, TensorProto.INT64, [2], order)
    c.add_node("Gather", [mapping, idx], pick, axis=0, name=scope.get_unique_operator_name("TtMap"))
    labels = name("tt_classes")
    if classes.dtype.kind in "OUS":
        c.add_initializer(labels, TensorProto.STRING, [len(classes)], [str(v).encode() for v in classes])
    else:
        c.add_initializer(labels, TensorProto.INT64, [len(classes)], [int(v) for v in classes])
    c.add_node("Gather", [labels, pick], flat, axis=0, name=scope.get_unique_operator_name("TtLabel"))
    c.add_node("Identity", flat, operator.outputs[0].full_name, name=scope.get_unique_operator_name("TtOut"))


# ------------------------------------------------------------------ SimpleImputer on float64


def convert_simple_imputer(scope, operator, container):
    """skl2onnx writes a SimpleImputer on a float64 input as ai.onnx.ml Imputer in double, which onnxruntime has no
    kernel for (NOT_IMPLEMENTED: the artifact does not load), and would round the statistics to float32 anyway.
    A float64 input gets the same computation in standard ops instead: Where(IsNaN(x) (or x == missing_values),
    statistics_ in double, x), then the columns scikit-learn keeps (an all-missing column's statistic is NaN and
    it is dropped unless keep_empty_features). Any other input type goes to skl2onnx's own converter."""
    from onnx import TensorProto
    from skl2onnx.common._registration import get_converter
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables

    op = operator.raw_operator
    if not (all(isinstance(v.type, DoubleTensorType) for v in operator.inputs) and hasattr(op, "statistics_")):
        return get_converter(operator.type)(scope, operator, container)
    if getattr(op, "add_indicator", False):
        raise NotImplementedError("SimpleImputer(add_indicator=True) with a float64 input: declare the input float32")
    missing = op.missing_values
    if not isinstance(missing, int | float) or isinstance(missing, bool):
        raise NotImplementedError(f"SimpleImputer(missing_values={missing!r}) with a float64 input")
    stats = np.asarray(op.statistics_, dtype=np.float64)
    name, c = scope.get_unique_variable_name, container
    x = concatenate_variables(scope, operator.inputs, container)
    fill, mask = name("imp_fill"), name("imp_missing")
    c.add_initializer(fill, TensorProto.DOUBLE, [len(stats)], [float(v) for v in stats])
    if np.isnan(float(missing)):
        c.add_node("IsNaN", x, mask, name=scope.get_unique_operator_name("ImpIsNaN"))
    else:
        value = name("imp_value")
        c.add_initializer(value, TensorProto.DOUBLE, [], [float(missing)])
        c.add_node("Equal", [x, value], mask, name=scope.get_unique_operator_name("ImpEqual"))
    keep = np.flatnonzero(~np.isnan(stats)) if not getattr(op, "keep_empty_features", False) else None
    out = operator.outputs[0].full_name
    if keep is None or len(keep) == len(stats):
        c.add_node("Where", [mask, fill, x], out, name=scope.get_unique_operator_name("ImpWhere"))
        return
    filled, cols = name("imp_filled"), name("imp_kept")
    c.add_node("Where", [mask, fill, x], filled, name=scope.get_unique_operator_name("ImpWhere"))
    c.add_initializer(cols, TensorProto.INT64, [len(keep)], [int(i) for i in keep])
    c.add_node("Gather", [filled, cols], out, axis=1, name=scope.get_unique_operator_name("ImpKept"))


def custom_converters() -> dict[type, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import TunedThresholdClassifierCV

    return {HistGradientBoostingClassifier: convert_hist_gradient_boosting,
            HistGradientBoostingRegressor: convert_hist_gradient_boosting,
            TunedThresholdClassifierCV: convert_tuned_threshold, SimpleImputer: convert_simple_imputer}


# ------------------------------------------------------------------ declared shapes


def _inferred_outputs(model) -> dict:
    """Output name → ValueInfo as shape inference derives it with the declared output shapes cleared."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for o in probe.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
    except Exception:
        return {}
    return {o.name: o for o in inferred.graph.output}


def repair_declared_shapes(model) -> None:
    """Drop skl2onnx's intermediate value_info and, where an output's declared dims contradict what shape inference
    derives from the graph, declare the inferred ones (the batch dim keeps its name). A `label` skl2onnx computes as
    [N, 1] (OneVsOneClassifier's ArgMax) or [1, N] (QuadraticDiscriminantAnalysis) while every other classifier
    gives [N] is reshaped to [N]."""
    del model.graph.value_info[:]
    got = _inferred_outputs(model)
    for o in model.graph.output:
        if not o.type.HasField("tensor_type") or not o.type.tensor_type.HasField("shape"):
            continue
        inf = got.get(o.name)
        have = o.type.tensor_type.shape.dim
        want = inf.type.tensor_type.shape.dim if inf is not None and inf.type.tensor_type.HasField("shape") else None
        if o.name == "label" and ((len(have) == 2 and have[0].dim_value == 1) or
                                  (len(have) == 1 and want is not None and len(want) == 2)):
            _flatten(model, o)
            continue
        if want is None:
            continue
        if len(want) != len(have):
            continue  # a rank inference cannot be sure of: left as declared
        for d_have, d_want in zip(have, want, strict=True):
            if d_want.HasField("dim_value") and d_have.HasField("dim_value") and d_have.dim_value != d_want.dim_value:
                d_have.dim_value = d_want.dim_value


def _flatten(model, o) -> None:
    from onnx import TensorProto, helper

    graph = model.graph
    raw, shape = f"{o.name}_unflat", f"{o.name}_flat_shape"
    for node in graph.node:
        node.output[:] = [raw if v == o.name else v for v in node.output]
        node.input[:] = [raw if v == o.name else v for v in node.input]
    graph.initializer.append(helper.make_tensor(shape, TensorProto.INT64, [1], [-1]))
    graph.node.append(helper.make_node("Reshape", [raw, shape], [o.name], name=f"{o.name}_flatten"))
    o.type.tensor_type.shape.ClearField("dim")
    o.type.tensor_type.shape.dim.add()


# ------------------------------------------------------------------ the conversion


def convert(est, initial_types, options: dict, target_opset, what: str):
    """skl2onnx.convert_sklearn with the workarounds above; a failure is a UserError with the converter's reason
    (its traceback chained for --debug)."""
    import warnings

    import skl2onnx

    from onnxforge.frontends._tabular import parts

    by_id = {id(p): p for p in parts(est)}
    kwargs = dict(initial_types=initial_types, options=applicable(options, by_id),
                  custom_conversion_functions=custom_converters())
    opset = target_opset
    for _ in range(2):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = skl2onnx.convert_sklearn(est, target_opset=opset, **kwargs)
            break
        except UserError:
            raise
        except Exception as e:
            m = ML_RETRY.search(str(e))
            if m and opset == target_opset:  # e.g. IsolationForest: retried once at the ai.onnx.ml it names
                main = opset.get("", None) if isinstance(opset, dict) else opset
                opset = {"": main, "ai.onnx.ml": int(m.group(1))} if main else {"ai.onnx.ml": int(m.group(1))}
                continue
            raise conversion_error(e, what) from e
    repair_declared_shapes(model)
    return model


def check_outputs(model, task: str, what: str) -> None:
    """onnxforge's tabular contract: a classifier gives label + probabilities, a regressor or transformer one
    tensor. Converters of other kinds (clusterers, outlier detectors: label + scores; a feature selector that is
    also a classifier) are refused by name instead of failing later on the output names."""
    names = [o.name for o in model.graph.output]
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            raise UserError(f"skl2onnx converts {what} with output '{o.name}' as a sequence or map (e.g. one "
                            "probability array per target of a multi-output classifier) — onnxforge's outputs are "
                            "tensors: not supported")
    want = 2 if task == "classifier" else 1
    if len(names) != want:
        raise UserError(f"skl2onnx converts {what} to {len(names)} output{'s' if len(names) > 1 else ''} "
                        f"({', '.join(names)}), not what onnxforge takes for a {task} (a classifier: label + "
                        "probabilities; a regressor or transformer: one tensor; clusterers and outlier detectors "
                        "are not supported yet) — not supported")

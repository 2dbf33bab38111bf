"""XGBoost: native model files (JSON or UBJSON: classifiers, regressors — multi-target too — and rankers) and sklearn
Pipelines holding an XGBClassifier/XGBRegressor/XGBRanker (converted by skl2onnx with onnxmltools' registered
converters, at opset ≤ 15). What onnxmltools 1.16 gets wrong is repaired here: feature names in the tree dump
(a model trained on a DataFrame), one_output_per_tree multi-target models (every tree added to target 0, the output
declared [N, 1]); multi_output_tree models (vector leaves) are refused with XGBoost's own reason. DART models are
converted as the gbtree their weighted trees make; gblinear is refused."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import warnings
from typing import Any, Literal

import numpy as np

from onnxforge.errors import UserError, one_line
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends._tabular import (
    BoosterSource,
    SklearnAPIFrontend,
    confirm_task,
    load_estimator_with,
    model_path,
    output_names,
    parts,
    task_of,
)
from onnxforge.frontends.base import require
from onnxforge.registry import register_frontend

CLASSIFIER_OBJECTIVES = ("binary:logistic", "binary:hinge", "multi:softprob", "multi:softmax")
RANKER_OBJECTIVES = ("rank:pairwise", "rank:ndcg", "rank:map")


class XGBoostSource(BoosterSource):
    framework: Literal["xgboost"]


def task_for(objective: str, asked: str, name: str) -> str:
    if objective in CLASSIFIER_OBJECTIVES:
        task = "classifier"
    elif objective.startswith("reg:") or objective == "count:poisson":
        task = "regressor"
    elif objective in RANKER_OBJECTIVES:
        task = "ranker"
    else:
        raise UserError(f"{name}: XGBoost objective '{objective}' has no ONNX converter — supported: "
                        f"{', '.join(CLASSIFIER_OBJECTIVES)}, reg:*, count:poisson, {', '.join(RANKER_OBJECTIVES)}")
    return confirm_task(task, asked, objective, name)


def _softmax(est) -> bool:
    return type(est).__name__ == "XGBClassifier" and est.get_xgb_params().get("objective") == "multi:softmax"


def _boosters(est) -> list:
    """The fitted XGBoost estimators in `est` (itself, or inside a Pipeline)."""
    found = []
    for p in parts(est):
        if type(p).__module__.split(".")[0] == "xgboost" and hasattr(p, "get_booster"):
            try:
                p.get_booster()
            except Exception:  # not fitted
                continue
            found.append(p)
    return found


def _learner(est) -> dict[str, Any]:
    return json.loads(est.get_booster().save_config())["learner"]


def num_targets(est) -> int:
    return int(_learner(est)["learner_model_param"].get("num_target", 1) or 1)


def _trees(est) -> dict[str, Any]:
    return json.loads(est.get_booster().save_raw("json"))["learner"]["gradient_booster"]["model"]


def vector_leaves(est) -> bool:
    """Trained with multi_strategy='multi_output_tree' (read off the trees: a file does not keep the parameter)."""
    return any(int(t["tree_param"].get("size_leaf_vector", 1) or 1) > 1 for t in _trees(est).get("trees", []))


def xgboost_reason(e: BaseException, first_line: bool = False) -> str:
    """XGBoost's own message on one line, whole (or its first line): without the '[13:34:16]
    src/tree/tree_model.cc:779: Check failed: !with_stats:' prefix and the native stack trace that follow it."""
    text = str(e).split("Stack trace:")[0]
    if first_line:  # a parse error's next lines quote the file around the error, with a ~~~^ marker
        text = (text.strip().splitlines() or [""])[0]
    text = re.sub(r"^\s*\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*", "", text)
    text = re.sub(r"^Check failed:\s*[^:]*:\s*", "", text)
    return one_line(text).rstrip(".") or type(e).__name__


@contextlib.contextmanager
def quiet_suffix():
    """XGBoost warns 'Unknown file format: model. Using UBJSON as a guess' for a .model/.bin file; sniff has
    recognized the content already, so that warning alone is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Unknown file format", category=UserWarning)
        yield


def refuse_vector_leaves(est, what: str) -> None:
    """multi_strategy='multi_output_tree' (one tree for all targets, vector leaves): onnxmltools' converter starts by
    dumping the trees with statistics, which XGBoost cannot do for such trees. Refused with that reason, whole."""
    for p in _boosters(est):
        if num_targets(p) <= 1 or not vector_leaves(p):
            continue
        try:
            p.get_booster().get_dump(with_stats=True, dump_format="json")  # the converter's first step
        except Exception as e:
            raise UserError(f"onnxmltools cannot convert {what}: XGBoost cannot dump its multi_output_tree trees "
                            f"({xgboost_reason(e)}) — multi_strategy='multi_output_tree' (vector leaves) has no ONNX "
                            "converter; retrain with multi_strategy='one_output_per_tree' (one tree per target), "
                            "which converts") from None


def refuse_gblinear(est, what: str) -> None:
    """booster='gblinear' is a linear model, not trees: onnxmltools' XGBoost converter reads only tree models."""
    for p in _boosters(est):
        if _learner(p)["gradient_booster"]["name"] == "gblinear":
            raise UserError(f"{what} uses booster='gblinear' (a linear model, not trees), which has no ONNX "
                            "converter — retrain with booster='gbtree' (or 'dart'), or fit sklearn's "
                            "LinearRegression/LogisticRegression and use source.framework: sklearn")


def refuse_logistic_regression(est, what: str) -> None:
    """reg:logistic predicts the sigmoid of the trees' sum; onnxmltools' converter applies no sigmoid for it, so
    the graph returns the raw margin (measured: off by up to 3.3 on breast_cancer rows)."""
    for p in _boosters(est):
        if _learner(p)["objective"]["name"] == "reg:logistic":
            raise UserError(f"{what} uses objective 'reg:logistic', whose sigmoid onnxmltools' converter leaves out "
                            "(it returns the raw margin) — retrain an XGBClassifier with objective='binary:logistic' "
                            "(the same loss) and read probabilities[:, 1]")


def undart(est) -> int | None:
    """A DART model predicts (outside training) with every tree, each scaled by its weight_drop: the same model as a
    gbtree whose leaves hold value × weight. onnxmltools reads only gbtree models (it looks for gbtree_model_param),
    so the booster is reloaded as that gbtree. Returns the number of trees whose weight is not 1."""
    raw = json.loads(est.get_booster().save_raw("json"))
    dart = raw["learner"]["gradient_booster"]
    if dart.get("name") != "dart":
        return None
    scaled = 0
    for tree, w in zip(dart["gbtree"]["model"]["trees"], dart["weight_drop"], strict=True):
        if w == 1.0:
            continue
        scaled += 1
        leaves = [i for i, c in enumerate(tree["left_children"]) if c == -1]
        for key in ("split_conditions", "base_weights"):  # a leaf's value is kept in both
            for i in leaves:
                tree[key][i] *= w
    raw["learner"]["gradient_booster"] = dart["gbtree"]
    est.get_booster().load_model(bytearray(json.dumps(raw).encode()))
    if "booster" in est.get_params():
        est.set_params(booster="gbtree")
    return scaled


def categorical_features(est) -> list[int]:
    """Columns an XGBoost model splits on as categories (enable_categorical with pandas category columns)."""
    types = est.get_booster().feature_types if hasattr(est, "get_booster") else None
    return [i for i, t in enumerate(types or []) if t == "c"]


def fix_multi_target(model, est) -> dict[str, int] | None:
    """onnxmltools 1.16 converts a one_output_per_tree model with n_targets right but every tree's leaves added to
    target 0, and skl2onnx declares the output [N, 1]: onnxruntime returns (N, T) with columns 2.. zero. Each tree's
    target is in the model's own `tree_info`; the output is declared [N, T]."""
    targets = num_targets(est)
    if targets <= 1:
        return None
    tree_info = _trees(est)["tree_info"]
    fixed = 0
    outs = set()
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type != "TreeEnsembleRegressor":
            continue
        attrs = {a.name: a for a in node.attribute}
        if attrs["n_targets"].i != targets:
            continue
        ids, trees = attrs["target_ids"].ints, attrs["target_treeids"].ints
        for k in range(len(ids)):
            want = int(tree_info[trees[k]])
            fixed += ids[k] != want
            ids[k] = want
        outs.update(node.output)
    # the regressor's output is the graph's (or feeds the log link's Exp/Mul): every declared [N, 1] becomes [N, T]
    for value in (*model.graph.output, *model.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == 1 and (
                value.name in outs or value in model.graph.output):
            dims[1].dim_value = targets
    return {"targets": targets, "leaves_moved": fixed}


@register_frontend
class XGBoostFrontend(SklearnAPIFrontend):
    name = "xgboost"
    Source = XGBoostSource
    packages = ("xgboost-cpu", "xgboost", "onnxmltools", "skl2onnx", "scikit-learn")
    extra = "xgboost"
    wanted = "an XGBoost model (.json/.ubj, or a .skops Pipeline holding one)"
    reads = ("xgboost-json", "xgboost-ubj", "skops", "pickle")

    def load(self, cfg):
        path = model_path(cfg)
        kind = sniff(path)
        if kind in ("skops", "pickle"):
            return load_estimator_with(path, cfg.source, self.wanted, "xgboost", "XGBoost")
        if kind not in ("xgboost-json", "xgboost-ubj"):
            raise wrong_file(path, kind, self.wanted)
        xgb = require("xgboost", "xgboost")
        try:
            with quiet_suffix():
                booster = xgb.Booster(model_file=str(path))
            objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        except Exception as e:
            raise UserError(f"{path.name}: XGBoost cannot read it ({xgboost_reason(e, first_line=True)[:200]}) — "
                            "re-save it with save_model('model.json')") from None
        task = task_for(objective, cfg.source.task, path.name)
        # the sklearn wrapper gives predict/predict_proba with XGBoost's own semantics, and skl2onnx converts it
        est = {"classifier": xgb.XGBClassifier, "regressor": xgb.XGBRegressor, "ranker": xgb.XGBRanker}[task]()
        try:
            with quiet_suffix():
                est.load_model(str(path))
        except (TypeError, ValueError) as e:  # e.g. saved by another wrapper than its objective says
            raise UserError(f"{path.name}: XGBoost's {type(est).__name__} cannot load it ({one_line(e)[:200]}) — set "
                            "source.task to what the model is") from None
        return est

    def export(self, native, cfg, opset, workdir):
        refuse_vector_leaves(native, self.what(native, cfg))
        refuse_gblinear(native, self.what(native, cfg))
        refuse_logistic_regression(native, self.what(native, cfg))
        native = copy.deepcopy(native)  # converted as a copy: what is changed below is for the converter only
        dart = [n for p in _boosters(native) if (n := undart(p)) is not None]
        for p in parts(native):
            # multi:softmax: onnxmltools would emit raw margins as "probabilities", but XGBClassifier.predict_proba
            # gives their softmax (and predict their argmax), exactly as multi:softprob: convert it as softprob
            if _softmax(p):
                p.set_params(objective="multi:softprob")
        for p in _boosters(native):
            # a model trained on a DataFrame dumps its splits by column name ('age < 3'), which onnxmltools cannot
            # read ('feature names should follow pattern f%d'): the trees index columns by position all the same
            p.get_booster().feature_names = None
        model = super().export(native, cfg, opset, workdir)
        multi = [f for p in _boosters(native) if (f := fix_multi_target(model, p))]
        if multi or dart:
            from onnxforge.artifact import stamp

            stamp(model, **{"convert.multi_target": multi[0] if multi else None,  # None: not stamped
                            "convert.dart_weighted_trees": dart[0] if dart else None})
        return model

    def predict(self, native, feeds, cfg):
        if not categorical_features(native):
            return super().predict(native, feeds, cfg)
        # a model fitted on a DataFrame with category columns: XGBoost refuses a DataFrame whose column is not that
        # category, and re-codes one that is. A matrix is read by position, category columns as their codes (the
        # index in the training categories): exactly what the ONNX model's float input holds
        specs = self.specs(native, cfg)
        X = np.hstack([np.asarray(feeds[s.name]).reshape(len(feeds[s.name]), -1) for s in specs])
        task = task_of(native)
        names = output_names(task, cfg)
        if task == "classifier":
            return {names[0]: np.asarray(native.predict(X)), names[1]: np.asarray(native.predict_proba(X))}
        return {names[0]: np.asarray(native.predict(X))}

    def metadata(self, native, cfg):
        meta = super().metadata(native, cfg)
        if cats := [i for p in _boosters(native) for i in categorical_features(p)]:
            meta["categorical_features"] = cats  # columns fed as category codes
        if hasattr(native, "get_booster"):
            cfg_json = json.loads(native.get_booster().save_config())["learner"]
            meta["objective"] = cfg_json["objective"]["name"]
        return meta

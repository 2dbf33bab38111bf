"""XGBoost: native model files (JSON or UBJSON, classifiers and regressors) and sklearn Pipelines holding an
XGBClassifier/XGBRegressor (converted by skl2onnx with onnxmltools' registered converters, at opset ≤ 15)."""

from __future__ import annotations

import copy
import json
from typing import Literal

from onnxforge.errors import UserError, one_line
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends._tabular import (
    BoosterSource,
    SklearnAPIFrontend,
    confirm_task,
    load_estimator_with,
    model_path,
    parts,
)
from onnxforge.frontends.base import require
from onnxforge.registry import register_frontend

CLASSIFIER_OBJECTIVES = ("binary:logistic", "binary:hinge", "multi:softprob", "multi:softmax")


class XGBoostSource(BoosterSource):
    framework: Literal["xgboost"]


def task_for(objective: str, asked: str, name: str) -> str:
    if objective in CLASSIFIER_OBJECTIVES:
        task = "classifier"
    elif objective.startswith("reg:") or objective == "count:poisson":
        task = "regressor"
    else:
        raise UserError(f"{name}: XGBoost objective '{objective}' has no ONNX converter — supported: "
                        f"{', '.join(CLASSIFIER_OBJECTIVES)}, reg:*, count:poisson")
    return confirm_task(task, asked, objective, name)


def _softmax(est) -> bool:
    return type(est).__name__ == "XGBClassifier" and est.get_xgb_params().get("objective") == "multi:softmax"


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
            booster = xgb.Booster(model_file=str(path))
            objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        except Exception as e:
            raise UserError(f"{path.name}: XGBoost cannot read it ({one_line(e).splitlines()[0][:200]}) — re-save "
                            "it with save_model('model.json')") from None
        task = task_for(objective, cfg.source.task, path.name)
        # the sklearn wrapper gives predict/predict_proba with XGBoost's own semantics, and skl2onnx converts it
        est = (xgb.XGBClassifier if task == "classifier" else xgb.XGBRegressor)()
        est.load_model(str(path))
        return est

    def export(self, native, cfg, opset, workdir):
        # multi:softmax: onnxmltools would emit raw margins as "probabilities", but XGBClassifier.predict_proba
        # gives their softmax (and predict their argmax), exactly as multi:softprob: convert a copy as softprob
        if any(_softmax(p) for p in parts(native)):
            native = copy.deepcopy(native)
            for p in parts(native):
                if _softmax(p):
                    p.set_params(objective="multi:softprob")
        return super().export(native, cfg, opset, workdir)

    def metadata(self, native, cfg):
        meta = super().metadata(native, cfg)
        if hasattr(native, "get_booster"):
            cfg_json = json.loads(native.get_booster().save_config())["learner"]
            meta["objective"] = cfg_json["objective"]["name"]
        return meta

"""LightGBM: native text model files (classifiers, regressors and rankers, converted by onnxmltools at opset ≤ 15) and
sklearn Pipelines holding an LGBMClassifier/LGBMRegressor/LGBMRanker. Thresholds are re-rounded so float32 inputs
split exactly as in LightGBM (see fix_lightgbm_thresholds). Categorical splits and missing values convert exactly;
linear trees (`linear_tree=True`) are refused: onnxmltools keeps only each leaf's constant."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onnxforge.errors import UserError, one_line
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends._tabular import (
    BOOSTER_MAX_OPSET,
    BoosterSource,
    SklearnAPIFrontend,
    confirm_task,
    finish,
    fix_lightgbm_thresholds,
    initial_types,
    load_estimator_with,
    model_path,
    native_input,
    output_names,
    parts,
    plan_opset,
)
from onnxforge.frontends.base import ThreadLimit, pool_threads, require
from onnxforge.registry import register_frontend

REGRESSION_OBJECTIVES = ("regression", "quantile", "huber", "poisson", "gamma", "tweedie")
RANKER_OBJECTIVES = ("lambdarank", "rank_xendcg")


class LightGBMSource(BoosterSource):
    framework: Literal["lightgbm"]


@dataclass
class NativeBooster:
    """A lightgbm.Booster read from a text model file, with what its objective says."""

    booster: Any
    task: str
    objective: str
    num_class: int
    name: str
    num_threads: int | None = None  # predict's num_threads while a thread limit is applied (None: LightGBM's)


def task_for(objective: str, asked: str, name: str) -> str:
    if objective == "binary" or objective == "multiclass":
        task = "classifier"
    elif objective.startswith(REGRESSION_OBJECTIVES):
        task = "regressor"
    elif objective in RANKER_OBJECTIVES:
        task = "ranker"  # the score is the raw sum of the trees, as Booster.predict and LGBMRanker.predict give it
    else:
        raise UserError(f"{name}: LightGBM objective '{objective}' has no exact ONNX converter — supported: binary, "
                        f"multiclass, {', '.join(REGRESSION_OBJECTIVES)}, {', '.join(RANKER_OBJECTIVES)}")
    return confirm_task(task, asked, objective, name)


def linear_leaves(booster) -> int:
    """Trees whose leaves hold a linear model (linear_tree=True): onnxmltools converts only each leaf's value."""
    dump = booster.dump_model()
    n = 0
    for tree in dump.get("tree_info", []):
        stack = [tree.get("tree_structure", {})]
        while stack:
            node = stack.pop()
            if "left_child" in node:
                stack += [node["left_child"], node["right_child"]]
            elif node.get("leaf_coeff"):
                n += 1
                break
    return n


def refuse_linear_trees(boosters, what: str) -> None:
    for b in boosters:
        if (b.params or {}).get("linear_tree") in (True, "true", "1", 1) or linear_leaves(b):
            raise UserError(f"{what} was trained with linear_tree=True (a linear model in each leaf), which "
                            "onnxmltools cannot convert: it keeps only each leaf's constant and drops the linear "
                            "terms — retrain without linear_tree for an ONNX artifact")


@register_frontend
class LightGBMFrontend(SklearnAPIFrontend):
    name = "lightgbm"
    Source = LightGBMSource
    packages = ("lightgbm", "onnxmltools", "skl2onnx", "scikit-learn")
    extra = "lightgbm"
    wanted = "a LightGBM model (text model file, or a .skops Pipeline holding one)"
    reads = ("lightgbm", "skops", "pickle")

    def load(self, cfg):
        path = model_path(cfg)
        kind = sniff(path)
        if kind in ("skops", "pickle"):
            return load_estimator_with(path, cfg.source, self.wanted, "lightgbm", "LightGBM")
        if kind != "lightgbm":
            raise wrong_file(path, kind, self.wanted)
        lgb = require("lightgbm", "lightgbm")
        try:
            booster = lgb.Booster(model_file=str(path))
            dump = booster.dump_model(num_iteration=0)
        except Exception as e:
            raise UserError(f"{path.name}: LightGBM cannot read it ({one_line(e)[:200]}) — re-save it with "
                            "booster.save_model('model.txt')") from None
        objective = str(dump.get("objective", "")).split(" ")[0]
        task = task_for(objective, cfg.source.task, path.name)
        return NativeBooster(booster, task, objective, int(dump.get("num_class", 1)), path.name)

    def n_features(self, est) -> int | None:
        return est.booster.num_feature() if isinstance(est, NativeBooster) else super().n_features(est)

    def what(self, est, cfg) -> str:
        return f"LightGBM {est.objective} model {est.name}" if isinstance(est, NativeBooster) else super().what(est, cfg)

    def export(self, native, cfg, opset, workdir):
        if not isinstance(native, NativeBooster):
            refuse_linear_trees([p.booster_ for p in parts(native) if type(p).__module__.startswith("lightgbm")
                                 and hasattr(p, "booster_")], self.what(native, cfg))
            return super().export(native, cfg, opset, workdir)
        refuse_linear_trees([native.booster], self.what(native, cfg))
        onnxmltools = require("onnxmltools", "lightgbm")
        specs = self.specs(native, cfg)
        at, upgrade = plan_opset(opset, booster=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = onnxmltools.convert_lightgbm(native.booster, initial_types=initial_types(specs, mltools=True),
                                                     zipmap=False, target_opset=at[""])
        except Exception as e:
            raise UserError(f"onnxmltools cannot convert {self.what(native, cfg)} ({type(e).__name__}: "
                            f"{one_line(e)[:240]}) — check inputs: against the model") from None
        notes = {"lightgbm_thresholds": fix_lightgbm_thresholds(model, [native.booster]),
                 "opset_cap": f"{BOOSTER_MAX_OPSET} (onnxmltools' limit for XGBoost/LightGBM)"}
        return finish(model, specs, output_names(native.task, cfg), upgrade, notes)

    def predict(self, native, feeds, cfg):
        if not isinstance(native, NativeBooster):
            return super().predict(native, feeds, cfg)
        X = native_input(native, feeds, self.specs(native, cfg))
        raw = np.asarray(native.booster.predict(X, **({"num_threads": native.num_threads} if native.num_threads
                                                      else {})))
        names = output_names(native.task, cfg)
        if native.task != "classifier":
            return {names[0]: raw}
        proba = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
        # LGBMClassifier.predict: argmax of the probabilities (a tie goes to the first class)
        return {names[0]: proba.argmax(1).astype(np.int64), names[1]: proba}

    @contextlib.contextmanager
    def threads(self, native, n: int):
        """A native text model: Booster.predict(num_threads=n), and LightGBM's OpenMP pool read back at n."""
        if not isinstance(native, NativeBooster):
            with super().threads(native, n) as got:
                yield got
            return
        prev, native.num_threads = native.num_threads, n
        try:
            with pool_threads(n) as pools:
                yield ThreadLimit(pools.applied, f"Booster.predict(num_threads={n}); {pools.how}")
        finally:
            native.num_threads = prev

    def family(self, native) -> str:
        return "trees" if isinstance(native, NativeBooster) else super().family(native)

    def task(self, native) -> str:
        return native.task if isinstance(native, NativeBooster) else super().task(native)

    def metadata(self, native, cfg):
        if not isinstance(native, NativeBooster):
            return super().metadata(native, cfg)
        meta: dict[str, Any] = {"task": native.task, "estimator": "lightgbm.Booster", "objective": native.objective}
        if native.task == "classifier":
            meta["classes"] = list(range(max(native.num_class, 2)))
        params = native.booster.params or {}
        if params.get("use_missing", True) is not False and not params.get("zero_as_missing", False):
            meta["accepts_missing"] = True  # measured: NaN rows score as LightGBM's own (see _tabular.NAN_AWARE)
        return meta

"""LightGBM: native text model files (classifiers, regressors and rankers, converted by onnxmltools at opset ≤ 15) and
sklearn Pipelines holding an LGBMClassifier/LGBMRegressor/LGBMRanker. Thresholds are re-rounded so float32 inputs
split exactly as in LightGBM (see fix_lightgbm_thresholds). Categorical splits and missing values convert exactly;
linear trees (`linear_tree=True`) and zero_as_missing are refused (onnxmltools keeps only each leaf's constant /
compares the 0); boosting='rf' is averaged. A native text file is checked before LightGBM's parser (check_text)."""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
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


def _nodes(booster):
    """Every node of every tree of a booster's dump (splits carry left_child; leaves do not)."""
    for tree in booster.dump_model().get("tree_info", []):
        stack = [tree.get("tree_structure", {})]
        while stack:
            node = stack.pop()
            if "left_child" in node:
                stack += [node["left_child"], node["right_child"]]
            yield node


def linear_leaves(booster) -> int:
    """Leaves holding a linear model (linear_tree=True): onnxmltools converts only each leaf's value."""
    return sum(1 for node in _nodes(booster) if "left_child" not in node and node.get("leaf_coeff"))


def zero_missing_splits(booster) -> int:
    """Splits that treat 0 as missing (zero_as_missing=True): onnxmltools compares the 0 against the threshold."""
    return sum(1 for node in _nodes(booster) if "left_child" in node and node.get("missing_type") == "Zero")


def _refuse(boosters, what: str, param: str, found, why: str) -> None:
    for b in boosters:
        if (b.params or {}).get(param) in (True, "true", "1", 1) or found(b):
            raise UserError(f"{what} was trained with {param}=True ({why}")


def refuse_linear_trees(boosters, what: str) -> None:
    _refuse(boosters, what, "linear_tree", linear_leaves,
            "a linear model in each leaf), which onnxmltools cannot convert: it keeps only each leaf's constant and "
            "drops the linear terms — retrain without linear_tree for an ONNX artifact")


def refuse_zero_as_missing(boosters, what: str) -> None:
    _refuse(boosters, what, "zero_as_missing", zero_missing_splits,
            "a 0 takes the missing-value branch), which onnxmltools cannot convert: it compares the 0 against the "
            "threshold instead — retrain without zero_as_missing (NaN marks missing values) for an ONNX artifact")


def average_rf(model, booster) -> int | None:
    """boosting='rf' averages its trees (per class), where onnxmltools sums a native model's trees: each leaf is
    divided by the number of iterations, so the ensemble's sum is LightGBM's average (before any link function)."""
    dump = booster.dump_model(num_iteration=0)
    if not dump.get("average_output"):
        return None
    iterations = booster.num_trees() // max(int(dump.get("num_tree_per_iteration", 1)), 1)
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type.startswith("TreeEnsemble"):
            for a in node.attribute:
                if a.name in ("target_weights", "class_weights"):
                    a.floats[:] = [w / iterations for w in a.floats]
    return iterations


RESAVE = "re-save it with booster.save_model('model.txt')"
TREE_ARRAYS = (("split_feature", -1), ("threshold", -1), ("decision_type", -1), ("left_child", -1),
               ("right_child", -1), ("leaf_value", 0))  # what LightGBM's parser reads: num_leaves + offset values


def _fields(block: bytes) -> dict[bytes, bytes]:
    return dict(line.partition(b"=")[::2] for line in block.splitlines() if b"=" in line)


def _ints(value: bytes | None) -> list[int] | None:
    try:
        return [int(v) for v in value.split()] if value is not None else None
    except ValueError:
        return None


def check_text(path: Path) -> None:
    """LightGBM's C++ parser trusts the file's structure: on a truncated or damaged text model (an interrupted copy)
    it reads past the buffer or throws inside an OpenMP loop, a segfault or abort rather than an exception. So what it
    relies on is checked here first: the header's counts, the 'end of trees' (and 'end of parameters') markers,
    every Tree= block numbered in order, at the offsets tree_sizes gives, holding the arrays num_leaves says, with
    children and features in range."""
    raw = path.read_bytes()
    end = re.search(rb"^end of trees\r?$", raw, re.M)
    if end is None:
        raise UserError(f"{path.name}: a truncated LightGBM model (no 'end of trees' line: an interrupted copy?) — "
                        f"{RESAVE}")
    tail = raw[end.end():]
    if re.search(rb"^parameters:\r?$", tail, re.M) and not re.search(rb"^end of parameters\r?$", tail, re.M):
        raise UserError(f"{path.name}: a truncated LightGBM model (no 'end of parameters' line: an interrupted "
                        f"copy?) — {RESAVE}")  # LightGBM reads past the end of an unterminated parameters: section
    starts = [m.start() for m in re.finditer(rb"^Tree=", raw[:end.start()], re.M)]
    bounds = [*starts, end.start()]
    head = _fields(raw[:bounds[0]])

    def damaged(what: str) -> UserError:
        return UserError(f"{path.name}: a damaged LightGBM model ({what}) — {RESAVE}")

    counts = {k: _ints(head.get(k.encode())) for k in ("num_class", "num_tree_per_iteration", "max_feature_idx")}
    for key, got in counts.items():
        if not got or len(got) != 1 or got[0] < (0 if key == "max_feature_idx" else 1):
            raise damaged(f"its header has no valid {key}")
    sizes = _ints(head.get(b"tree_sizes"))
    if b"tree_sizes" in head and (sizes is None or sizes != [b - a for a, b in pairwise(bounds)]):
        # the parser jumps to each tree by these byte counts: an edited file (or changed line endings) misleads it
        raise damaged(f"its {len(starts)} Tree= blocks do not match its tree_sizes; edited, or line endings changed?")
    n_features = counts["max_feature_idx"][0] + 1
    for i, (a, b) in enumerate(pairwise(bounds)):
        tree = _fields(raw[a:b])
        leaves = _ints(tree.get(b"num_leaves"))
        if _ints(tree.get(b"Tree")) != [i] or not leaves or len(leaves) != 1 or leaves[0] < 1:
            raise damaged(f"tree {i} is not a whole Tree= block")
        n = leaves[0]
        if n == 1:
            continue
        for key, extra in TREE_ARRAYS:
            value = tree.get(key.encode())
            if value is None or len(value.split()) != n + extra:
                raise damaged(f"tree {i}'s {key} does not hold {n + extra} values")
        cats = _ints(tree.get(b"num_cat", b"0")) or [-1]
        bounds_cat = _ints(tree.get(b"cat_boundaries")) if cats[0] > 0 else [0]
        if cats[0] < 0 or not bounds_cat or len(bounds_cat) != max(cats[0], 0) + 1 or \
                len(tree.get(b"cat_threshold", b"").split()) != bounds_cat[-1]:
            raise damaged(f"tree {i}'s categorical splits are incomplete")
        children = (_ints(tree[b"left_child"]) or []) + (_ints(tree[b"right_child"]) or [])
        feats = _ints(tree[b"split_feature"]) or [-1]
        if len(children) != 2 * (n - 1) or not all(-n <= c < n - 1 for c in children) or \
                not all(0 <= f < n_features for f in feats):
            raise damaged(f"tree {i} points outside itself")


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
        check_text(path)  # before LightGBM's parser, which crashes the process on a damaged file
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
            boosters = [p.booster_ for p in parts(native) if type(p).__module__.startswith("lightgbm")
                        and hasattr(p, "booster_")]
            refuse_linear_trees(boosters, self.what(native, cfg))
            refuse_zero_as_missing(boosters, self.what(native, cfg))
            if any(getattr(p, "boosting_type", None) == "rf" for p in parts(native)):
                # onnxmltools divides an LGBM*(boosting_type='rf') by a fixed 100 instead of its number of trees
                raise UserError(f"{self.what(native, cfg)} uses boosting_type='rf', which onnxmltools converts "
                                "wrongly inside a Pipeline (it divides by 100, not by the number of trees) — save "
                                "the booster itself (booster_.save_model('model.txt')), which converts, or retrain "
                                "with gbdt")
            return super().export(native, cfg, opset, workdir)
        refuse_linear_trees([native.booster], self.what(native, cfg))
        refuse_zero_as_missing([native.booster], self.what(native, cfg))
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
        if rf := average_rf(model, native.booster):
            notes["rf_average_of"] = rf  # iterations
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

"""Task metrics from model outputs: which output is the prediction, accuracy, agreement, MAE/RMSE/R²."""

from __future__ import annotations

import numpy as np

POINT_NAMES = ("mean", "prediction", "variable", "value")
LABEL_NAMES = ("label",)  # the class output of the sklearn, XGBoost and LightGBM frontends


def _prop(model, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == f"onnxforge.{key}"), None)


def hint(model) -> str | None:
    """The output a model declares as its prediction (metadata `onnxforge.prediction_output`)."""
    return _prop(model, "prediction_output")


def kind_hint(model) -> str | None:
    """What the declared prediction output holds, where a name cannot tell (metadata `onnxforge.prediction_kind`):
    'class_probabilities' for a Bayesian categorical's mean, (rows, classes) — its argmax is the class; 'none'
    where no output is a point prediction (a PyMC artifact with quantiles or draws only): no task metrics."""
    return _prop(model, "prediction_kind")


def declared(model, outputs: dict) -> tuple[str | None, str | None]:
    """(the prediction output the model declares, if among `outputs`; what it holds) for task_metrics(name=, kind=)
    — kind 'none' means no task metric at all."""
    name = hint(model)
    return (name if name in outputs else None), kind_hint(model)


def prediction(outputs: dict[str, np.ndarray], name: str | None = None,
               kind: str | None = None) -> tuple[str, np.ndarray, str]:
    """(output name, prediction, kind) with kind 'class' or 'value'. A label output wins; then an output named like
    a point prediction (mean, prediction, variable); else a [N, C>1] float output is argmaxed; else the first float
    output is a regression value. Models may name theirs in `onnxforge.prediction_output` metadata, and say in
    `onnxforge.prediction_kind` that it holds class probabilities."""
    if name is not None and kind == "class_probabilities" and np.ndim(outputs[name]) == 2:
        return name, np.asarray(outputs[name]).argmax(1), "class"
    items = list(outputs.items()) if name is None else [(name, outputs[name])]
    for n, a in items:
        # a classifier fitted on float classes (0.0, 1.0, 3.0) predicts its 'label' as floats: still the class,
        # not a probability column to argmax (the argmax is an index, not the class)
        if np.asarray(a).dtype.kind in "iuUSOb" or (n in LABEL_NAMES and np.asarray(a).dtype.kind == "f"):
            return n, np.asarray(a).reshape(len(a), -1)[:, 0] if np.asarray(a).ndim > 1 else np.asarray(a), "class"
    for n, a in items:
        if n in POINT_NAMES and np.asarray(a).dtype.kind == "f":
            return n, np.asarray(a, dtype=np.float64).reshape(len(a), -1)[:, 0], "value"
    for n, a in items:
        a = np.asarray(a)
        if a.ndim == 2 and a.shape[1] > 1:
            return n, a.argmax(1), "class"
    n, a = items[0]
    return n, np.asarray(a, dtype=np.float64).reshape(len(a), -1)[:, 0], "value"


def check_labels(labels: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Labels are user data too: see data.check_labels (row count, one value per row, finite numbers or strings)."""
    from onnxforge.data import check_labels as check

    return check(labels, rows)


def _numeric_labels(y: np.ndarray, name: str) -> np.ndarray:
    try:
        return check_labels(np.asarray(y, dtype=np.float64))  # numeric text ('nan' too) is checked as numbers
    except (TypeError, ValueError):
        from onnxforge.errors import UserError

        text = next((v for v in y if not _is_number(v)), y[0])
        raise UserError(f"the labels hold text ({str(text)[:20]!r}) but the model's prediction output '{name}' is a "
                        "number (regression) — give numeric targets in the data.labels / --labels column") from None


def _same_class(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, whether the predicted class is the label. A number class (an int64 label output, an argmax) is
    compared as a number, so a label 1, 1.0, "1" or "001" is class 1; a text class as text, as written: "007" is
    not "7" (data.label_column keeps a CSV's spelling)."""
    if pred.dtype.kind in "iuf":  # float classes too: the label 3 is the class 3.0
        try:
            y = labels if labels.dtype.kind in "biuf" else np.asarray(labels, dtype=np.float64)
        except (TypeError, ValueError):  # text that is no number: no number class can be it
            y = None
        if y is not None:
            return pred == y
    return pred.astype(str) == labels.astype(str)


def _agree(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row, whether two predicted classes are the same: numbers as numbers (an int64 ONNX label 1 is the
    native float label 1.0 — as text they never match), text as text."""
    if pred.dtype.kind in "biuf" and ref.dtype.kind in "biuf":
        return pred == ref
    return pred.astype(str) == ref.astype(str)


def _check_label_kinds(pred: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Number labels against text classes that spell a label's number otherwise (the label 7, the class "007"; the
    label 1.0, the class "1"): compared as text they never match, an accuracy that only says the labels lost their
    spelling (an npz of ints, a CSV written from floats) — refused, not scored. Labels that are no class at all are
    left alone (a class the model never predicts)."""
    if pred.dtype.kind not in "USO" or labels.dtype.kind not in "biuf":
        return
    classes = set(pred.astype(str).tolist())
    by_value = {float(c): c for c in classes if _is_number(c)}
    for v in np.unique(labels).tolist():
        if str(v) not in classes and float(v) in by_value:
            from onnxforge.errors import UserError

            raise UserError(f"the labels are numbers and the model's output '{name}' predicts text classes: the "
                            f"label {v!r} is the class {by_value[float(v)]!r} only by value, and text compares as "
                            "written — give the labels as the classes' text (a numpy str array, a CSV column as "
                            "written)")


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def task_metrics(outputs: dict[str, np.ndarray], labels: np.ndarray | None = None,
                 reference: dict[str, np.ndarray] | None = None, name: str | None = None,
                 kind: str | None = None) -> dict:
    name, pred, kind_ = prediction(outputs, name, kind)
    if labels is not None:
        labels = check_labels(labels, len(pred))
    m: dict = {"prediction_output": name, "task": "classification" if kind_ == "class" else "regression"}
    if kind_ == "class":
        if labels is not None:
            _check_label_kinds(pred, labels, name)
            m["accuracy"] = float(np.mean(_same_class(pred, labels)))
        if reference is not None:
            _, rp, _ = prediction(reference, name, kind)
            m["top1_agreement"] = float(np.mean(_agree(pred, rp)))
    else:
        if labels is not None:
            y = _numeric_labels(labels, name)
            err = pred - y
            m["mae"] = float(np.abs(err).mean())
            m["rmse"] = float(np.sqrt((err**2).mean()))
            var = float(((y - y.mean()) ** 2).sum())
            m["r2"] = float(1 - (err**2).sum() / var) if var > 0 else float("nan")
    return m


def accuracy_like(outputs: dict[str, np.ndarray], labels: np.ndarray, name: str | None = None) -> float:
    """One 'higher is better' score: accuracy for classifiers, R² for regressors (for accuracy budgets)."""
    m = task_metrics(outputs, labels, name=name)
    return m.get("accuracy", m.get("r2", float("nan")))

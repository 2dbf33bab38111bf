"""Task metrics from model outputs: which output is the prediction, accuracy, agreement, MAE/RMSE/R²."""

from __future__ import annotations

import numpy as np

POINT_NAMES = ("mean", "prediction", "variable", "value")


def hint(model) -> str | None:
    """The output a model declares as its prediction (metadata `onnxforge.prediction_output`)."""
    return next((p.value for p in model.metadata_props if p.key == "onnxforge.prediction_output"), None)


def prediction(outputs: dict[str, np.ndarray], name: str | None = None) -> tuple[str, np.ndarray, str]:
    """(output name, prediction, kind) with kind 'class' or 'value'. A label output wins; then an output named like
    a point prediction (mean, prediction, variable); else a [N, C>1] float output is argmaxed; else the first float
    output is a regression value. Models may name theirs in `onnxforge.prediction_output` metadata."""
    items = list(outputs.items()) if name is None else [(name, outputs[name])]
    for n, a in items:
        if np.asarray(a).dtype.kind in "iuUSOb":
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


def check_labels(labels: np.ndarray) -> None:
    """Labels are user data too: a NaN/inf target turns MAE, RMSE and R² into NaN (with numpy warnings) and a NaN
    class matches nothing — refuse it, naming the row."""
    y = np.asarray(labels)
    if y.dtype.kind != "f":
        return
    bad = ~np.isfinite(y.reshape(len(y), -1)).all(1)
    if bad.any():
        from onnxforge.errors import UserError

        rows = np.flatnonzero(bad)
        row = y.reshape(len(y), -1)[rows[0]]
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        raise UserError(f"the labels hold {row[~np.isfinite(row)][0]} at row {rows[0]}{more} — drop those "
                        "rows or fix the labels column (data.labels / --labels)")


def task_metrics(outputs: dict[str, np.ndarray], labels: np.ndarray | None = None,
                 reference: dict[str, np.ndarray] | None = None, name: str | None = None) -> dict:
    if labels is not None:
        check_labels(labels)
    name, pred, kind = prediction(outputs, name)
    m: dict = {"prediction_output": name, "task": "classification" if kind == "class" else "regression"}
    if kind == "class":
        if labels is not None:
            lab = np.asarray(labels).reshape(len(labels), -1)[:, 0]
            m["accuracy"] = float(np.mean(pred.astype(str) == lab.astype(str)))
        if reference is not None:
            _, rp, _ = prediction(reference, name)
            m["top1_agreement"] = float(np.mean(pred.astype(str) == rp.astype(str)))
    else:
        if labels is not None:
            y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)[:, 0]
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

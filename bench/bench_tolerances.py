"""How closely each frontend's ONNX artifact reproduces its framework's own predict — the measurement the default
tolerances (Frontend.tolerance) are set from. `python -m bench tolerances`, or `python bench/bench_tolerances.py`
(writes bench/out/tolerances.md and .json only).

Every model is converted by onnxforge's own frontend (the convert stage's code) and scored the way validate scores it:
onnxruntime with its default graph optimizations on the held-out rows in one batch and on the first 16 rows one at a
time, against the frontend's `predict` (the native framework) on the same float32 rows. For each output:
max |got − ref|, max |got − ref| / |ref|, and the smallest rtol that passes at the frontend's default atol (compare.py's
min_rtol). `chosen` is the default the frontend now gives that output; `margin` is how many times the worst observed
error fits inside it (the smallest of atol/max_abs and the tolerance band over the error, element by element).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
BATCH1_ROWS = 16
GRID_RTOL = (0.0, 1e-6, 1e-5, 1e-4, 1e-3)
GRID_ATOL = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# ------------------------------------------------------------------ models


def _split(X, y, test=0.3, seed=0):
    from sklearn.model_selection import train_test_split

    Xtr, Xte, ytr, yte = train_test_split(X.astype(np.float32), y, test_size=test, random_state=seed)
    return Xtr, Xte[:300], ytr, yte[:300]


def datasets() -> dict:
    from sklearn.datasets import (
        load_breast_cancer,
        load_diabetes,
        load_digits,
        load_iris,
        load_wine,
        make_classification,
        make_regression,
    )

    d = {
        "diabetes": _split(*load_diabetes(return_X_y=True)),
        "iris": _split(*load_iris(return_X_y=True)),
        "wine": _split(*load_wine(return_X_y=True)),
        "cancer": _split(*load_breast_cancer(return_X_y=True)),
        "digits": _split(*load_digits(return_X_y=True)),
    }
    X, y = make_regression(n_samples=800, n_features=20, n_informative=12, noise=5.0, random_state=0)
    d["make_regression"] = _split(X, y)
    X, y = make_classification(n_samples=900, n_features=20, n_informative=8, n_classes=3, random_state=0)
    d["make_classification"] = _split(X, y)
    return d


def sklearn_models() -> list[tuple[str, str, object]]:
    """(dataset, label, unfitted estimator)."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    def sc(m):
        return make_pipeline(StandardScaler(), m)

    return [
        ("diabetes", "LinearRegression", LinearRegression()),
        ("diabetes", "Ridge", Ridge(alpha=0.1)),
        ("diabetes", "Lasso", Lasso(alpha=0.05)),
        ("diabetes", "Scaler+ElasticNet", sc(ElasticNet(alpha=0.01))),
        ("diabetes", "Scaler+SVR", sc(SVR(C=100.0))),
        ("diabetes", "KNeighborsRegressor", KNeighborsRegressor()),
        ("diabetes", "Scaler+MLPRegressor", sc(MLPRegressor(hidden_layer_sizes=(32,), max_iter=2000,
                                                             random_state=0))),
        ("diabetes", "DecisionTreeRegressor", DecisionTreeRegressor(random_state=0)),
        ("diabetes", "RandomForestRegressor(200)", RandomForestRegressor(200, random_state=0, n_jobs=1)),
        ("diabetes", "ExtraTreesRegressor(200)", ExtraTreesRegressor(200, random_state=0, n_jobs=1)),
        ("diabetes", "GradientBoostingRegressor(300)", GradientBoostingRegressor(n_estimators=300, random_state=0)),
        ("diabetes", "HistGradientBoostingRegressor(300)",
         HistGradientBoostingRegressor(max_iter=300, early_stopping=False, random_state=0)),
        ("make_regression", "LinearRegression", LinearRegression()),
        ("make_regression", "Scaler+Ridge", sc(Ridge())),
        ("make_regression", "GradientBoostingRegressor(500)",
         GradientBoostingRegressor(n_estimators=500, random_state=0)),
        ("make_regression", "HistGradientBoostingRegressor(200)",
         HistGradientBoostingRegressor(max_iter=200, early_stopping=False, random_state=0)),
        ("make_regression", "RandomForestRegressor(100)", RandomForestRegressor(100, random_state=0, n_jobs=1)),
        ("iris", "LogisticRegression", LogisticRegression(max_iter=2000)),
        ("iris", "Scaler+SVC(proba)", sc(SVC(probability=True, random_state=0))),
        ("iris", "DecisionTreeClassifier", DecisionTreeClassifier(random_state=0)),
        ("wine", "Scaler+LogisticRegression", sc(LogisticRegression(max_iter=2000))),
        ("wine", "GaussianNB", GaussianNB()),
        ("wine", "ExtraTreesClassifier(200)", ExtraTreesClassifier(200, random_state=0, n_jobs=1)),
        ("cancer", "Scaler+LogisticRegression", sc(LogisticRegression(max_iter=2000))),
        ("cancer", "Scaler+MLPClassifier", sc(MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000,
                                                            random_state=0))),
        ("cancer", "GradientBoostingClassifier(300)", GradientBoostingClassifier(n_estimators=300, random_state=0)),
        ("cancer", "HistGradientBoostingClassifier(200)",
         HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=0)),
        ("digits", "Scaler+LogisticRegression", sc(LogisticRegression(max_iter=3000))),
        ("digits", "Scaler+SVC(proba)", sc(SVC(probability=True, random_state=0))),
        ("digits", "RandomForestClassifier(200)", RandomForestClassifier(200, random_state=0, n_jobs=1)),
        ("digits", "HistGradientBoostingClassifier(30)",
         HistGradientBoostingClassifier(max_iter=30, early_stopping=False, random_state=0)),
        ("make_classification", "LogisticRegression", LogisticRegression(max_iter=2000)),
        ("make_classification", "GradientBoostingClassifier(200)",
         GradientBoostingClassifier(n_estimators=200, random_state=0)),
    ]


def booster_models() -> list[tuple[str, str, str, object, str]]:
    """(framework, dataset, label, unfitted estimator, file suffix)."""
    import lightgbm as lgb
    import xgboost as xgb

    x = {"n_jobs": 1}
    lg = {"n_jobs": 1, "verbose": -1}
    return [
        ("xgboost", "diabetes", "XGBRegressor(300)", xgb.XGBRegressor(n_estimators=300, max_depth=6, **x), ".json"),
        ("xgboost", "make_regression", "XGBRegressor(500)", xgb.XGBRegressor(n_estimators=500, **x), ".ubj"),
        ("xgboost", "cancer", "XGBClassifier binary(200)", xgb.XGBClassifier(n_estimators=200, **x), ".json"),
        ("xgboost", "digits", "XGBClassifier softprob(100)", xgb.XGBClassifier(n_estimators=100, **x), ".json"),
        ("xgboost", "make_regression", "XGBRanker(200)", xgb.XGBRanker(n_estimators=200, **x), ".json"),
        ("lightgbm", "diabetes", "LGBMRegressor(300)", lgb.LGBMRegressor(n_estimators=300, **lg), ".txt"),
        ("lightgbm", "make_regression", "LGBMRegressor(500)", lgb.LGBMRegressor(n_estimators=500, **lg), ".txt"),
        ("lightgbm", "cancer", "LGBMClassifier binary(200)", lgb.LGBMClassifier(n_estimators=200, **lg), ".txt"),
        ("lightgbm", "digits", "LGBMClassifier multiclass(100)",
         lgb.LGBMClassifier(n_estimators=100, **lg), ".txt"),
        ("lightgbm", "make_regression", "LGBMRanker(200)", lgb.LGBMRanker(n_estimators=200, **lg), ".txt"),
    ]


FIXTURE_CONFIGS = ["sklearn_forest", "sklearn_pipeline", "xgboost_regressor", "xgboost_classifier",
                   "xgboost_pipeline", "lightgbm_regressor", "lightgbm_classifier", "torch_mlp", "torch_cnn",
                   "keras_sequential", "keras_functional", "keras_normalized", "keras_sequence",
                   "keras_preprocessing", "pymc_linear", "pymc_logistic", "pymc_poisson", "pymc_hier"]


# ------------------------------------------------------------------ measuring


def _errors(ref: np.ndarray, got: np.ndarray, atol: float) -> dict:
    from onnxforge.compare import compare

    c = compare("o", ref, got, 0.0, atol)
    r = np.abs(np.asarray(ref, dtype=np.float64)).reshape(-1)
    return {"max_abs": c["max_abs"], "max_rel": c["max_rel"], "rtol_at_atol": c["min_rtol"],
            "max_ref": float(r.max(initial=0.0))}


def _margin(ref, got, rtol, atol) -> float:
    """How many times the worst element's error fits in its tolerance band atol + rtol·|ref|."""
    r = np.asarray(ref, dtype=np.float64).reshape(np.shape(got))
    d = np.abs(np.asarray(got, dtype=np.float64) - r)
    band = atol + rtol * np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d > 0, band / d, np.inf)
    return float(ratio.min(initial=np.inf))


def measure_config(cfg, label: str, family_hint: str | None, work: Path) -> list[dict]:
    """Convert cfg's source with its frontend, score validate's way, and measure every deterministic output."""
    from onnxforge import data, runtime
    from onnxforge.artifact import meta_json, save_model
    from onnxforge.pipeline import StageContext

    ctx = StageContext(cfg=cfg, stage="validate", stage_dir=work, model=None, source_model=None)
    fe = ctx.frontend
    native = ctx.native()
    model = fe.export(native, cfg, None, work)
    path = save_model(model, work / "model.onnx")
    ctx.model = ctx.source_model = path
    nonfinite = "nan" if any(p.key == "onnxforge.accepts_missing" and p.value == "true"
                             for p in model.metadata_props) else "refuse"
    feeds, _ = ctx.feeds("eval", path, nonfinite=nonfinite)
    feeds = data.take(feeds, 1000)
    rows = data.n_rows(feeds)
    sess = runtime.session(path)
    full = runtime.run(sess, feeds)
    ones = [runtime.run(sess, b) for b in data.batches(data.take(feeds, min(rows, BATCH1_ROWS)), 1)]
    ref = fe.predict(native, feeds, cfg)
    stochastic = set(meta_json(model, "stochastic_outputs", list, [], items=str))
    family = family_hint or fe.family(native)
    out = []
    for name, r in ref.items():
        if name in stochastic or name not in full:
            continue
        r = np.asarray(r)
        g = np.asarray(full[name])
        if r.dtype.kind not in "fc" and g.dtype.kind not in "fc":
            flips = int((r.reshape(-1) != g.reshape(-1)).sum())
            out.append({"model": label, "frontend": fe.name, "family": family, "output": name, "kind": "label",
                        "rows": rows, "flips": flips})
            continue
        g = g.reshape(r.shape) if g.size == r.size else g
        one = np.concatenate([np.asarray(o[name]) for o in ones]).reshape(r[:len(ones)].shape)
        rtol, atol = fe.tolerance(native, cfg, name)
        e_full, e_one = _errors(r, g, atol), _errors(r[:len(ones)], one, atol)
        err = {k: max(e_full[k], e_one[k]) for k in e_full}
        out.append({"model": label, "frontend": fe.name, "family": family, "output": name,
                    "kind": fe.output_kind(native, cfg, name),
                    "rows": rows, **err, "chosen_rtol": rtol, "chosen_atol": atol,
                    "margin": min(_margin(r, g, rtol, atol), _margin(r[:len(ones)], one, rtol, atol)),
                    # what other defaults would leave: the margin at each (rtol, atol) of a grid
                    "margins": {f"{rt:g}/{at:g}": min(_margin(r, g, rt, at), _margin(r[:len(ones)], one, rt, at))
                                for rt in GRID_RTOL for at in GRID_ATOL}})
    return out


def _tabular_cfg(framework: str, model_file: Path, X: np.ndarray, work: Path):
    from onnxforge.config import parse_config

    np.savez(work / "x.npz", x=X)
    return parse_config({"name": "tol", "source": {"framework": framework, "path": str(model_file),
                                                   "trust_pickle": True},
                         "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", X.shape[1]],
                                     "column": "x"}],
                         "data": {"path": str(work / "x.npz")}}, work / "cfg.yaml")


def _onnx_cfg(cfg, work: Path):
    from onnxforge.config import parse_config

    (work / "onnx").mkdir()
    return parse_config({"name": "tol-onnx", "source": {"framework": "onnx", "path": str(work / "model.onnx")},
                         "inputs": [s.model_dump(mode="json", exclude_defaults=True) for s in cfg.inputs],
                         "data": {"path": str(cfg.data.path)}}, work / "onnx" / "cfg.yaml")


def _fit(est, Xtr, ytr, label):
    if "Ranker" in label:  # groups of 20 rows; relevance 0-4 from the target's quintiles
        rel = np.digitize(ytr, np.quantile(ytr, [0.2, 0.4, 0.6, 0.8]))
        n = len(Xtr) // 20 * 20
        return est.fit(Xtr[:n], rel[:n], group=[20] * (n // 20))
    return est.fit(Xtr, ytr)


def run_all(only: str | None = None) -> list[dict]:
    from onnxforge.config import load_config

    rows: list[dict] = []
    ds = datasets()
    with tempfile.TemporaryDirectory(prefix="bench-tol-") as tmp:
        tmp = Path(tmp)

        def guarded(label, fn):
            t0 = time.perf_counter()
            try:
                got = fn()
            except Exception as e:  # a model a converter refuses is reported, not fatal
                got = [{"model": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}]
            print(f"  {label}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
            rows.extend(got)

        for i, (dname, label, est) in enumerate(sklearn_models() if only in (None, "sklearn") else []):
            work = tmp / f"skl{i}"
            work.mkdir()

            def one(dname=dname, label=label, est=est, work=work):
                Xtr, Xte, ytr, _ = ds[dname]
                with open(work / "m.pkl", "wb") as f:
                    pickle.dump(est.fit(Xtr, ytr), f)
                return measure_config(_tabular_cfg("sklearn", work / "m.pkl", Xte, work), f"{label} ({dname})",
                                      None, work)

            guarded(f"{label} ({dname})", one)
        for i, (fw, dname, label, est, suffix) in enumerate(booster_models() if only in (None, "boosters") else []):
            work = tmp / f"boost{i}"
            work.mkdir()

            def one(fw=fw, dname=dname, label=label, est=est, suffix=suffix, work=work):
                Xtr, Xte, ytr, _ = ds[dname]
                fitted = _fit(est, Xtr, ytr, label)
                f = work / f"m{suffix}"
                (fitted.save_model(str(f)) if fw == "xgboost" else fitted.booster_.save_model(str(f)))
                return measure_config(_tabular_cfg(fw, f, Xte, work), f"{label} ({dname})", None, work)

            guarded(f"{label} ({dname})", one)
        for name in FIXTURE_CONFIGS if only in (None, "fixtures") else []:
            work = tmp / name
            work.mkdir()
            guarded(f"configs/{name}.yaml",
                    lambda name=name, work=work: measure_config(load_config(ROOT / "configs" / f"{name}.yaml"),
                                                                f"configs/{name}.yaml", None, work))
            if name.startswith("torch") and (work / "model.onnx").is_file():
                # framework: onnx — that exported file as the source (its reference: no graph optimizations)
                guarded(f"{name}.onnx", lambda name=name, work=work: measure_config(
                    _onnx_cfg(load_config(ROOT / "configs" / f"{name}.yaml"), work), f"{name}.onnx (onnx)", None,
                    work / "onnx"))
    return rows


# ------------------------------------------------------------------ reporting


COLUMNS = ["model", "frontend", "family", "output", "rows", "max abs err", "max rel err", "max |ref|",
           "needed rtol at atol", "chosen rtol / atol", "margin"]


def _table_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["model"], "", "", "not converted", "", r["error"], "", "", "", "", ""])
        elif r["kind"] == "label":
            out.append([r["model"], r["frontend"], r["family"], r["output"] + " (label)", r["rows"],
                        f"{r['flips']} flips", "", "", "", "exact", ""])
        else:
            out.append([r["model"], r["frontend"], r["family"], f"{r['output']} ({r['kind']})", r["rows"],
                        f"{r['max_abs']:.2g}", f"{r['max_rel']:.2g}", f"{r['max_ref']:.3g}",
                        f"{r['rtol_at_atol']:.2g} at {r['chosen_atol']:g}",
                        f"{r['chosen_rtol']:g} / {r['chosen_atol']:g}", f"{r['margin']:.0f}×"])
    return out


def summary(rows: list[dict]) -> list[dict]:
    """Worst figures per (frontend, family, output kind): what each default is set from."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        if "error" in r or r["kind"] == "label":
            continue
        k = (r["frontend"], r["family"], r["kind"])
        g = groups.setdefault(k, {"frontend": k[0], "family": k[1], "kind": k[2], "models": 0, "max_abs": 0.0,
                                  "max_rel": 0.0, "rtol_at_atol": 0.0, "rtol": r["chosen_rtol"],
                                  "atol": r["chosen_atol"], "min_margin": np.inf})
        g["models"] += 1
        for f in ("max_abs", "max_rel", "rtol_at_atol"):
            g[f] = max(g[f], r[f])
        g["min_margin"] = min(g["min_margin"], r["margin"])
    return sorted(groups.values(), key=lambda g: (g["frontend"], g["family"], g["kind"]))


def write(rows: list[dict], out: Path = OUT) -> tuple[Path, Path]:
    import onnxruntime

    out.mkdir(parents=True, exist_ok=True)
    summ = summary(rows)
    meta = {"onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
    (out / "tolerances.json").write_text(json.dumps({"meta": meta, "summary": summ, "rows": rows}, indent=1,
                                                    default=float) + "\n")
    lines = ["# Achieved agreement of converted models with their framework's predict", "",
             f"onnxruntime {meta['onnxruntime']}, Python {meta['python']}; re-measure with "
             "`python -m bench tolerances` (or `python bench/bench_tolerances.py`). Held-out rows, one batch plus "
             f"the first {BATCH1_ROWS} one at a time. `needed rtol` is the smallest rtol that passes at the chosen "
             "atol; `margin` is how many times the worst element's error fits in its band atol + rtol·|ref|.", "",
             "## Worst per frontend, model family and output kind", "",
             "| frontend | family | output kind | models | max abs err | max rel err | needed rtol at atol "
             "| default rtol / atol | smallest margin |", "|---|---|---|---|---|---|---|---|---|"]
    for g in summ:
        lines.append(f"| {g['frontend']} | {g['family']} | {g['kind']} | {g['models']} | {g['max_abs']:.2g} | "
                     f"{g['max_rel']:.2g} | {g['rtol_at_atol']:.2g} | {g['rtol']:g} / {g['atol']:g} | "
                     f"{g['min_margin']:.0f}× |")
    lines += ["", "## Every model", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in _table_rows(rows)]
    (out / "tolerances.md").write_text("\n".join(lines) + "\n")
    return out / "tolerances.md", out / "tolerances.json"


def run() -> list[dict]:
    """bench/__main__.py's entry: measures, writes bench/out/tolerances.*, returns the summary table."""
    rows = run_all()
    write(rows)
    summ = summary(rows)
    return [{"title": "Default tolerances: worst achieved error per frontend / family / output (bench/out/"
                      "tolerances.md has every model)",
             "columns": ["frontend", "family", "kind", "models", "max abs", "max rel", "needed rtol", "rtol", "atol",
                         "margin"],
             "rows": [[g["frontend"], g["family"], g["kind"], g["models"], g["max_abs"], g["max_rel"],
                       g["rtol_at_atol"], g["rtol"], g["atol"], g["min_margin"]] for g in summ]}]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    only = sys.argv[1] if len(sys.argv) > 1 else None  # sklearn | boosters | fixtures: re-measure that part only
    rows = run_all(only)
    if only and (OUT / "tolerances.json").is_file():  # the other parts' rows are kept from the last run
        done = {r["model"] for r in rows}
        rows = [r for r in json.loads((OUT / "tolerances.json").read_text())["rows"] if r["model"] not in done] + rows
    for p in write(rows):
        print(p)

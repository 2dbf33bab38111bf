"""onnxforge.score.Scorer (issue #18): the one scorer under predict, serve and the Python API — named columns in
any shape (dict of arrays, DataFrame, pyarrow Table, records) mapped through the stamped input spec, the same
outputs as onnxruntime on the graph's own inputs, named as predict writes them; strings, NaN and unseen levels
refused as predict refuses them; a per-call seed replays a stochastic artifact's draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest
from conftest import CONFIGS, FIXTURES, run_cli

from onnxforge.errors import UserError
from onnxforge.score import Scorer


def ort_outputs(model: Path, feeds) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("scorer")
    out = {}
    for name in ("sklearn_pipeline", "pymc_hier"):
        res = run_cli("convert", "--config", CONFIGS / f"{name}.yaml", "-o", d / f"{name}.onnx")
        assert res.code == 0, res.stderr
        out[name] = d / f"{name}.onnx"
    out["table"] = pd.read_csv(FIXTURES / "data/cancer_test.csv")
    z = np.load(FIXTURES / "data/pymc_hier.npz")
    out["hier"] = pd.DataFrame({"x": z["x"], "group": z["group"]})
    return out


def pipeline_feeds(df: pd.DataFrame, model: Path) -> dict[str, np.ndarray]:
    """The graph's own inputs, built by hand from the table: one [rows, 1] input per column."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        col = df[i.name].to_numpy()
        dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(string)": object}[i.type]
        feeds[i.name] = col.astype(dtype).reshape(-1, 1)
    return feeds


def test_every_row_shape_gives_onnxruntimes_outputs(models):
    model, df = models["sklearn_pipeline"], models["table"]
    want = ort_outputs(model, pipeline_feeds(df, model))
    scorer = Scorer(model, threads=1)
    shapes = {
        "dataframe": df,
        "dict of arrays": {c: df[c].to_numpy() for c in df.columns},
        "dict of lists": {c: df[c].tolist() for c in df.columns},
        "arrow table": pa.Table.from_pandas(df),
        "arrow batch": pa.RecordBatch.from_pandas(df),
        "records": df.to_dict("records"),
    }
    for what, rows in shapes.items():
        got = scorer(rows)
        # the stamped classes name the probability columns (predict, serve and the Scorer alike)
        assert list(got) == ["label", "probabilities_benign", "probabilities_malignant"], (what, list(got))
        np.testing.assert_array_equal(got["label"].astype(str), want["label"].astype(str), err_msg=what)
        np.testing.assert_array_equal(np.stack([got["probabilities_benign"], got["probabilities_malignant"]], 1),
                                      want["probabilities"], err_msg=what)
    raw = scorer.outputs(df)
    assert set(raw) == {"label", "probabilities"} and raw["probabilities"].shape == (len(df), 2)
    recs = scorer.records(df.head(3))
    assert len(recs) == 3 and recs[0]["label"] == str(want["label"][0])
    assert isinstance(recs[0]["probabilities_benign"], float)


def test_from_bytes_is_the_same_scorer(models):
    model, df = models["sklearn_pipeline"], models["table"]
    a, b = Scorer(model, threads=1), Scorer(model.read_bytes(), threads=1)
    for k, v in a(df).items():
        np.testing.assert_array_equal(v, b(df)[k])
    with pytest.raises(UserError, match="not a readable ONNX model"):
        Scorer(b"not a model")


@pytest.mark.parametrize(("change", "needle"), [
    (lambda df: df.assign(radius=df["radius"].astype(object).where(df.index != 4, "n/a")),
     "input 'radius' expects float32 but the data holds strings ('n/a', row 4)"),
    (lambda df: df.assign(texture=df["texture"].where(df.index != 6, np.nan)),
     "holds NaN (a missing value) at row 6"),
    (lambda df: df.drop(columns=["grade"]), "input 'grade': no 'grade' in the data"),
    (lambda df: df.assign(grade=df["grade"] + 0.5), "holds 1.5 at row 0 and 142 more rows (an int64 input cannot "
     "hold it)"),
], ids=["text-in-number", "nan", "missing-column", "fraction-in-int"])
def test_bad_rows_are_one_line_user_errors(models, change, needle):
    scorer = Scorer(models["sklearn_pipeline"], threads=1)
    with pytest.raises(UserError) as e:
        scorer(change(models["table"].copy()))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_allow_nan_lets_missing_values_through(models):
    df = models["table"].copy()
    df.loc[3, "texture"] = np.nan
    got = Scorer(models["sklearn_pipeline"], threads=1, allow_nan=True)(df)
    assert len(got["label"]) == len(df)


def test_pymc_columns_and_per_call_seed(models):
    model, df = models["pymc_hier"], models["hier"]
    scorer = Scorer(model, threads=1)
    feeds = {"x": df["x"].to_numpy(np.float32), "group": df["group"].to_numpy(object)}
    want = ort_outputs(model, feeds)  # a fresh session: the seed baked in at convert
    got = scorer(df)
    assert list(got)[:5] == ["mean", "std", "quantiles_q0.05", "quantiles_q0.5", "quantiles_q0.95"]
    assert sum(k.startswith("draws_") for k in got) == 500
    np.testing.assert_array_equal(got["mean"], want["mean"])
    np.testing.assert_array_equal(got["draws_7"], want["draws"][:, 7])
    a, b, c = scorer(df, seed=3), scorer(df, seed=3), scorer(df, seed=4)
    np.testing.assert_array_equal(a["draws_0"], b["draws_0"])  # the same seed replays, whatever ran before
    assert not np.array_equal(a["draws_0"], c["draws_0"])
    np.testing.assert_array_equal(a["mean"], c["mean"])  # the posterior mean is no draw
    seeded = Scorer(model, threads=1, seed=3)  # a construction seed: one stream, the same first call
    np.testing.assert_array_equal(seeded(df)["draws_0"], a["draws_0"])


def encoder(policy: str):
    """A string input encoded in the graph, its levels and unseen policy stamped as convert stamps them."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    from onnxforge.artifact import stamp

    g = h.make_graph([h.make_node("LabelEncoder", ["g"], ["code"], domain="ai.onnx.ml", keys_strings=["a", "b"],
                                  values_int64s=[0, 1], default_int64=-1)], "enc",
                     [h.make_tensor_value_info("g", T.STRING, ["N"])], [h.make_tensor_value_info("code", T.INT64,
                                                                                                  ["N"])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("ai.onnx.ml", 3)])
    stamp(m, categories={"g": ["a", "b"]}, unseen_policy={"g": policy})
    return onnx.checker.check_model(m, full_check=True) or m


def test_unseen_levels_follow_the_stamped_policy():
    rows = {"g": ["a", "b", "zz", "a"]}
    with pytest.raises(UserError, match=r"input 'g': unseen level\(s\) \['zz'\] at row\(s\) \[2\] .* 'error'"):
        Scorer(encoder("error"))(rows)
    assert Scorer(encoder("population"))(rows)["code"].tolist() == [0, 1, -1, 0]
    assert Scorer(encoder("error"))([{"g": "b"}, {"g": "a"}])["code"].tolist() == [1, 0]


def test_rows_that_are_no_table_are_refused(models):
    scorer = Scorer(models["sklearn_pipeline"], threads=1)
    for bad, needle in ((42, "not int"), ([], "non-empty list"), ([{"radius": 1.0}, 3], "non-empty list"),
                        ([{"radius": 1.0}, {"texture": 2.0}], "record 1 has no 'radius'")):
        if isinstance(bad, list) and len(bad) == 2 and isinstance(bad[1], dict):  # the first record is complete
            first = models["table"].iloc[0].to_dict()
            bad = [first, {k: v for k, v in first.items() if k != "radius"}]
        with pytest.raises(UserError, match=needle):
            scorer(bad)


def test_class_labels_name_the_probability_columns(tmp_path):
    """A user's classifier with string labels (iris species, saved with skops): predict's table, the Scorer and
    serve's records name the probability columns by class — the stamped classes, the same in all three — and hold
    scikit-learn's own predict_proba."""
    import json

    import pyarrow.parquet as pq
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from onnxforge.serve.scoring import ServedModel

    iris = load_iris()
    X = iris.data.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(X, iris.target_names[iris.target])
    sio.dump(clf, tmp_path / "iris.skops")
    np.savez(tmp_path / "iris.npz", input=X[:20])
    (tmp_path / "iris.yaml").write_text(json.dumps({
        "name": "iris", "source": {"framework": "sklearn", "path": "iris.skops"},
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}], "data": {"path": "iris.npz"},
        "stages": {"convert": {}}}))
    assert run_cli("convert", "--config", "iris.yaml", "-o", "iris.onnx", cwd=tmp_path).code == 0
    cols = [f"probabilities_{c}" for c in ("setosa", "versicolor", "virginica")]
    want = clf.predict_proba(X)
    names = ["sl", "sw", "pl", "pw"]
    pd.DataFrame(X, columns=names).to_csv(tmp_path / "rows.csv", index=False)
    res = run_cli("predict", "iris.onnx", "--input", "rows.csv", "--columns", f"input={','.join(names)}",
                  "-o", "scores.parquet", cwd=tmp_path)
    assert res.code == 0, res.stderr
    table = pq.read_table(tmp_path / "scores.parquet").to_pandas()
    assert list(table.columns) == ["label", *cols]
    np.testing.assert_allclose(table[cols].to_numpy(), want, atol=1e-5)
    got = Scorer(tmp_path / "iris.onnx", threads=1)({"input": X})
    assert list(got) == ["label", *cols]
    rec = ServedModel(tmp_path / "iris.onnx", name="iris", version="1", stage=None, threads=1).records_out(
        {"probabilities": want[:1].astype(np.float32)}, 1)[0]
    assert list(rec["probabilities"]) == ["setosa", "versicolor", "virginica"]


def test_a_missing_text_cell_is_refused_not_scored_as_a_level(models, tmp_path):
    """An empty CSV cell or a null record value in a string column used to reach the model as the text 'nan' or
    'None' (OneHotEncoder(handle_unknown='ignore') then scored it as no category at all, exit 0): now refused like
    a NaN in a numeric column, one line naming the input and row, nothing written; --allow-nan keeps the old text."""
    model, df = models["sklearn_pipeline"], models["table"]
    rows = df.head(4).copy()
    rows.loc[rows.index[2], "size_band"] = None
    rows.to_csv(tmp_path / "blank.csv", index=False)
    res = run_cli("predict", model, "--input", tmp_path / "blank.csv", "-o", tmp_path / "out.csv")
    assert res.code == 2 and "input 'size_band' has a missing value" in res.stderr and "row 2" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.csv").exists()
    res = run_cli("predict", model, "--input", tmp_path / "blank.csv", "-o", tmp_path / "out.csv", "--allow-nan")
    assert res.code == 0, res.stderr
    assert len(pd.read_csv(tmp_path / "out.csv")) == 4
    records = df.head(3).to_dict("records")
    records[1]["size_band"] = None
    with pytest.raises(UserError, match="input 'size_band' has a missing value .* at row 1"):
        Scorer(model, threads=1)(records)


def test_a_category_holding_nul_is_refused_not_scored_as_another(models, tmp_path):
    """numpy's str arrays drop a trailing NUL, so a record's 'medium\\0' was scored as 'medium' (a level the
    source model's OneHotEncoder calls unknown), and a parquet cell holding one reached onnxruntime; refused in one
    line naming the input and row, from records, a dict of lists, a DataFrame and `predict` on a parquet file."""
    model, df = models["sklearn_pipeline"], models["table"]
    scorer = Scorer(model, threads=1)
    rows = df.head(4).drop(columns=["target", "diagnosis"], errors="ignore")  # records name model inputs only
    rows["size_band"] = rows["size_band"].astype(object)
    rows.loc[rows.index[2], "size_band"] = rows["size_band"].iloc[2] + "\0"
    needle = "input 'size_band' holds a NUL character at row 2"
    for given in (rows.to_dict("records"), {k: rows[k].tolist() for k in rows}, rows):
        with pytest.raises(UserError, match=needle):
            scorer.records(given) if isinstance(given, list) else scorer(given)
    rows.to_parquet(tmp_path / "nul.parquet")
    res = run_cli("predict", model, "--input", tmp_path / "nul.parquet", "-o", tmp_path / "out.csv")
    assert res.code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out.csv").exists()
    clean = scorer.records(rows.assign(size_band=df["size_band"].head(4).to_numpy()).to_dict("records"))
    assert len(clean) == 4

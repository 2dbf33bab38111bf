"""Found by sweep 5 (predict's inputs). Text stored as bytes (a numpy `S` array in an .npz, a parquet binary
column, numpy bytes given to a Scorer) is UTF-8 text: it was scored as the text "b'small'", no level the encoder
knew (exit 0, probabilities off by up to 0.12 under handle_unknown='ignore'); bytes that are not UTF-8 are refused
naming the column and the row. A .npy (one unnamed array) feeds a single-input model converted with `columns:`
(it was refused with an empty "available:" list and a --columns fix that cannot name it; a truncated one got that
message too), and a model with several inputs says what a .npy holds and how to fix it. `--output afile/x` under a
regular file was exit 3; `--threads -1` was accepted. An empty text cell is explained as a missing text value, not
with NaN and ±inf; the unseen-level refusal names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from onnxforge import data
from onnxforge.config import TensorSpec
from onnxforge.errors import UserError
from onnxforge.score import Scorer
from onnxforge.score.scorer import nan_policy

skio = pytest.importorskip("skops.io")

TEXT = ["size", "sex"]
SPECS = [TensorSpec(name="size", dtype="string", shape=["batch", 1]),
         TensorSpec(name="sex", dtype="string", shape=["batch", 1]),
         TensorSpec(name="x", dtype="float32", shape=["batch", 1])]
IRIS_COLS = ["sl", "sw", "pl", "pw"]


def _convert(tmp: Path, name: str, model, inputs: list[dict], frame: pd.DataFrame) -> Path:
    skio.dump(model, tmp / f"{name}.skops")
    frame.to_csv(tmp / f"{name}.csv", index=False)
    cfg = {"name": name, "source": {"framework": "sklearn", "path": f"{name}.skops"}, "inputs": inputs,
           "data": {"path": f"{name}.csv"}, "stages": {"convert": {}}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = run_cli("run", tmp / f"{name}.yaml", cwd=tmp)
    assert res.code == 0, res.stderr[-800:]
    return tmp / f"runs/{name}/01-convert/model.onnx"


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    """Pipeline(one-hot 'size' (unknown levels ignored: scored as no level), one-hot 'sex' (unknown refused: the
    'error' policy is stamped), passthrough x) → LogisticRegression, converted by onnxforge."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    tmp = tmp_path_factory.mktemp("bytes")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.choice(["small", "medium", "large"], 48), "sex": rng.choice(["f", "m"], 48),
                          "x": rng.normal(size=48).astype(np.float32)})
    y = (frame["size"].map({"small": 0, "medium": 1, "large": 2}) + (frame["sex"] == "f") + frame["x"] > 1.5)
    ct = ColumnTransformer([("size", OneHotEncoder(handle_unknown="ignore"), ["size"]),
                            ("sex", OneHotEncoder(handle_unknown="error"), ["sex"]), ("num", "passthrough", ["x"])])
    model = make_pipeline(ct, LogisticRegression()).fit(frame, y.astype(int))
    onnx_path = _convert(tmp, "cat", model, [s.model_dump(exclude_none=True) for s in SPECS], frame)
    return tmp, onnx_path, frame, model.predict_proba(frame)[:, 1]


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """LogisticRegression on iris, converted with inputs[].columns: one float32 [batch, 4] input."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    tmp = tmp_path_factory.mktemp("npy")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=500).fit(x, y)
    spec = {"name": "input", "dtype": "float32", "shape": ["batch", 4], "columns": IRIS_COLS}
    onnx_path = _convert(tmp, "iris", model, [spec], pd.DataFrame(x, columns=IRIS_COLS))
    np.save(tmp / "x.npy", x)
    return tmp, onnx_path, x, model.predict_proba(x)


def _bytes_table(frame: pd.DataFrame, bad_row: int | None = None) -> pa.Table:
    cols = {c: [s.encode() for s in frame[c]] for c in TEXT}
    if bad_row is not None:
        cols["size"][bad_row] = b"\xc3("  # not UTF-8
    return pa.table({**{c: pa.array(v, pa.binary()) for c, v in cols.items()}, "x": frame["x"].to_numpy()})


def test_bytes_text_columns_are_scored_as_their_text(cat, tmp_path):
    """An .npz of `S` arrays, a parquet binary column and a folder of such parquet files score as the text
    (before: "b'small'" scored as no level, and "b'f'" refused as an unseen level of 'sex')."""
    _, model, frame, want = cat
    np.savez(tmp_path / "s.npz", size=frame["size"].to_numpy().astype("S"), sex=frame["sex"].to_numpy().astype("S"),
             x=frame["x"].to_numpy())
    table = _bytes_table(frame)
    pq.write_table(table, tmp_path / "b.parquet")
    (tmp_path / "parts").mkdir()
    pq.write_table(table.slice(0, 20), tmp_path / "parts/a.parquet")
    pq.write_table(table.slice(20), tmp_path / "parts/b.parquet")
    for src, out in (("s.npz", "o1.csv"), ("b.parquet", "o2.csv"), ("parts", "o3")):
        folder = ["--workers", "1"] if out == "o3" else []  # predict_dataset's own part reader
        res = run_cli("predict", model, "--input", tmp_path / src, "--output", tmp_path / out, "--chunk-rows", "16",
                      *folder, cwd=tmp_path)
        assert res.code == 0, (src, res.stderr[-600:])
        got = pd.read_parquet(tmp_path / out) if out == "o3" else pd.read_csv(tmp_path / out)
        np.testing.assert_allclose(got["probabilities_1"], want, atol=1e-5, err_msg=src)


def test_bytes_in_the_config_data_and_the_scorer(cat, tmp_path):
    """The config's data (load_table → feeds_from_table) and a Scorer given numpy bytes read the same text."""
    _, model, frame, want = cat
    np.savez(tmp_path / "s.npz", size=frame["size"].to_numpy().astype("S").reshape(-1, 1),
             sex=frame["sex"].to_numpy().astype("S"), x=frame["x"].to_numpy())
    feeds = data.feeds_from_table(data.load_table(tmp_path / "s.npz"), SPECS)
    assert feeds["size"].ravel().tolist() == frame["size"].tolist()
    scorer = Scorer(model)
    rows = {"size": frame["size"].to_numpy().astype("S"), "sex": [s.encode() for s in frame["sex"]],
            "x": frame["x"].to_numpy()}
    np.testing.assert_allclose(scorer(rows)["probabilities_1"], want, atol=1e-5)
    np.testing.assert_allclose(scorer(pa.Table.from_pydict(rows))["probabilities_1"], want, atol=1e-5)


def test_bytes_that_are_not_utf8_are_refused_by_column_and_row(cat, tmp_path):
    _, model, frame, _ = cat
    pq.write_table(_bytes_table(frame, bad_row=30), tmp_path / "bad.parquet")
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "bad.parquet", "--output",
                                         tmp_path / "o.csv", "--chunk-rows", "16", cwd=tmp_path))
    assert "bad.parquet" in line and "'size'" in line and "not UTF-8" in line and "row 30" in line, line
    assert not (tmp_path / "o.csv").exists()
    s = frame["size"].to_numpy().astype("S")
    s[3] = b"\xffsm"
    with pytest.raises(UserError, match=r"input 'size' holds bytes that are not UTF-8 text .* at row 3"):
        Scorer(model)({"size": s, "sex": frame["sex"].to_numpy(), "x": frame["x"].to_numpy()})


def test_a_npy_feeds_a_single_input_model_stamped_with_columns(iris, tmp_path):
    """Scored as the input's array (before: 'columns [...] not in the data — available: ; ... --columns')."""
    tmp, model, x, want = iris
    res = run_cli("predict", model, "--input", tmp / "x.npy", "--output", tmp_path / "o.csv", cwd=tmp_path)
    assert res.code == 0, res.stderr[-600:]
    got = pd.read_csv(tmp_path / "o.csv")
    np.testing.assert_allclose(got[[c for c in got if c.startswith("probabilities")]].to_numpy(), want, atol=1e-5)
    # a truncated file says so; a wrong width names the shape, not a --columns fix that cannot name the array
    (tmp_path / "cut.npy").write_bytes((tmp / "x.npy").read_bytes()[:300])
    np.save(tmp_path / "wide.npy", np.ones((5, 3), np.float32))
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "cut.npy", "--output",
                                         tmp_path / "o2.csv", cwd=tmp_path))
    assert "truncated" in line and "available" not in line, line
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "wide.npy", "--output",
                                         tmp_path / "o3.csv", cwd=tmp_path))
    assert "[5, 3]" in line and "--columns" not in line and "numpy.save" in line, line


def test_a_npy_for_a_model_with_several_inputs_says_what_to_give(cat, tmp_path):
    _, model, frame, _ = cat
    np.save(tmp_path / "x.npy", frame[["x"]].to_numpy())
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "x.npy", "--output",
                                         tmp_path / "o.csv", cwd=tmp_path))
    assert "a .npy holds one unnamed array" in line and ".npz" in line and "available: ;" not in line, line


def test_output_under_a_file_and_negative_threads_are_user_errors(iris, tmp_path):
    tmp, model, _, _ = iris
    (tmp_path / "afile").write_text("mine")
    for out in ("afile/o.csv", "afile/scores", "afile/deeper/o.parquet"):
        line = assert_one_line_error(run_cli("predict", model, "--input", tmp / "iris.csv", "--output", out,
                                             cwd=tmp_path))
        assert f"--output {out}" in line and "afile is a file" in line, line
    assert (tmp_path / "afile").read_text() == "mine"
    for out in ("o.csv", "scores"):
        line = assert_one_line_error(run_cli("predict", model, "--input", tmp / "iris.csv", "--output", out,
                                             "--threads", "-1", cwd=tmp_path))
        assert "--threads -1" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_text_messages_name_a_missing_text_value_and_the_file(cat, tmp_path):
    """An empty text cell is a missing text value (not 'NaN ... ±inf', which is about numbers, whatever the
    model's NaN policy); an unseen level under 'error' names the file like every other data error."""
    _, model, frame, _ = cat
    rows = frame.head(6).astype({"size": object, "sex": object})
    rows.loc[rows.index[2], "size"] = None
    rows.to_csv(tmp_path / "gap.csv", index=False)
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "gap.csv", "--output",
                                         tmp_path / "o.csv", cwd=tmp_path))
    assert "missing value (empty cell" in line and "row 2" in line and "--allow-nan" in line, line
    _, fix = nan_policy({"onnxforge.accepts_missing": "true"}, False)  # a model taking NaN for numbers
    col = np.array([["a"], [None]], dtype=object)
    with pytest.raises(UserError) as e:
        data.check_values(col, col, "size", "size", "f.csv", nonfinite="nan", fix=fix, offset=10)
    assert "NaN" not in str(e.value) and "inf" not in str(e.value) and "row 11" in str(e.value), e.value
    rows = frame.head(6).astype({"sex": object})
    rows.loc[rows.index[4], "sex"] = "x"
    rows.to_csv(tmp_path / "unseen.csv", index=False)
    line = assert_one_line_error(run_cli("predict", model, "--input", tmp_path / "unseen.csv", "--output",
                                         tmp_path / "o.csv", cwd=tmp_path))
    assert line.startswith(f"error: {tmp_path / 'unseen.csv'}: input 'sex': unseen level(s) ['x']"), line

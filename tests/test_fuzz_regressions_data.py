"""Regressions from the seeded fuzz sweep (tests/fuzz), data and metadata side: each was exit 3 (a bug) and is now one
line, exit 2, naming the file/input/key and the fix — with nothing left at the output path.

- labels shorter than the data, empty, zero-width, several values per row, text for a regression target
  (fuzz 556-quantize-data.rows, 1380-validate-data.labels, 1156-validate-data.empty, 3666-run-data.empty,
  3377-quantize-data.shape): labels are checked like inputs, in one place (data.check_labels)
- a predict output without a batch axis (697/3336-predict-model.outputs)
- malformed onnxforge.* metadata (2496/3917/3511/3308-predict-model.metadata, 1681-validate-model.metadata): one
  reader, artifact.meta_json
- predict's "onnxruntime refused rows" names a fix
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, linear_labels, save

from onnxforge.artifact import meta_json
from onnxforge.errors import UserError

ROWS = 24
COLS = ["a", "b", "c", "d"]


def _x() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(ROWS, 4)).astype(np.float32)


def _regressor() -> onnx.ModelProto:
    """y = x @ w: one float output [batch, 1] — a regression target, no label output."""
    w = np.random.default_rng(1).normal(size=(4, 1)).astype(np.float32)
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "reg",
                     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 1])], [nh.from_array(w, "W")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="tests")


def _with_output(model: onnx.ModelProto, node: onnx.NodeProto, out: str, shape) -> onnx.ModelProto:
    model.graph.node.append(node)
    model.graph.output.append(h.make_tensor_value_info(out, T.FLOAT, shape))
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz-regressions-data")
    save(linear(), d / "lin.onnx")
    save(_regressor(), d / "reg.onnx")
    x = _x()
    np.savez(d / "x.npz", x=x)
    pd.DataFrame(x, columns=COLS).to_csv(d / "x.csv", index=False)
    # scalar output: the batch's mean (ReduceMean, keepdims=0) — fuzz 697/3336
    save(_with_output(linear(), h.make_node("ReduceMean", ["y"], ["y_scalar"], keepdims=0), "y_scalar", []),
         d / "scalar.onnx")
    # an output whose first dim is 1 whatever the rows: a statistic over the batch
    save(_with_output(linear(), h.make_node("ReduceMean", ["y"], ["y_mean"], axes=[0], keepdims=1), "y_mean", [1, 3]),
         d / "batchstat.onnx")
    return d


def _labels_npz(d: Path, name: str, labels) -> Path:
    path = d / f"{name}.npz"
    np.savez(path, x=_x(), label=labels)
    return path


def _fix_named(line: str) -> None:
    assert " — " in line and line.split(" — ", 1)[1].strip(), line


# ------------------------------------------------------------------ labels (bugs 4 and 5)

LABEL_CASES = {  # name → (labels, what the line must say)
    "short": (lambda y: y[:5], ["5 rows", f"data has {ROWS}"]),  # 556 / 1380
    "empty": (lambda y: y[:0], ["no rows"]),  # 1156 / 3666
    "zero_width": (lambda y: np.zeros((ROWS, 0), np.int64), [f"[{ROWS}, 0]", "not one value per row"]),  # 3377
    "two_per_row": (lambda y: np.stack([y, y], axis=1), [f"[{ROWS}, 2]", "not one value per row"]),
    "longer": (lambda y: np.concatenate([y, y]), [f"{2 * ROWS} rows", f"data has {ROWS}"]),
}


@pytest.mark.parametrize("kind", list(LABEL_CASES))
def test_bad_labels_validate(work, kind):
    make, needles = LABEL_CASES[kind]
    data = _labels_npz(work, kind, make(linear_labels(_x())))
    res = run_cli("validate", work / "lin.onnx", "--data", data, "--labels", "label", "--against", "onnx-reference")
    line = assert_one_line_error(res)
    assert "labels" in line and all(n in line for n in needles), line
    assert "data.labels / --labels" in line, line
    _fix_named(line)


@pytest.mark.parametrize("kind,mode", [("short", "dynamic"), ("zero_width", "fp16")])
def test_bad_labels_quantize_budget(work, tmp_path, kind, mode):
    """556-quantize-data.rows, 3377-quantize-data.shape: the accuracy budget's labels; no model is left."""
    make, needles = LABEL_CASES[kind]
    data = _labels_npz(work, f"q-{kind}", make(linear_labels(_x())))
    out = tmp_path / "out" / "q.onnx"
    res = run_cli("quantize", work / "lin.onnx", "-o", out, "--data", data, "--mode", mode, "--labels", "label",
                  "--max-accuracy-drop", "1", "--set", "allow_slower=true", "--set", "latency_rounds=1",
                  "--set", "batch_sizes=[1]", "--set", "calibration_rows=16", "--set", "eval_rows=16")
    line = assert_one_line_error(res)
    # labels are checked against the whole data file, before eval_rows takes its share
    assert "labels" in line and all(n in line for n in needles), line
    _fix_named(line)
    assert not out.exists() and (not out.parent.exists() or not list(out.parent.iterdir()))


def test_empty_labels_run(work, tmp_path):
    """3666-run-data.empty: `onnxforge run` (convert + validate) with an empty labels member."""
    data = _labels_npz(work, "run-empty", linear_labels(_x())[:0])
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"name: p\nrun_dir: {tmp_path / 'runs'}\nsource: {{framework: onnx, path: {work / 'lin.onnx'}}}\n"
                   f"data: {{path: {data}, labels: label}}\nstages: {{convert: {{}}, validate: {{}}}}\n")
    line = assert_one_line_error(run_cli("run", cfg))
    assert "labels" in line and "no rows" in line, line


def test_scalar_labels_validate(work):
    """A 0-d labels member: validate slices it (labels[:max_rows]) before task_metrics can check it."""
    data = _labels_npz(work, "scalar", np.asarray(3))
    line = assert_one_line_error(run_cli("validate", work / "lin.onnx", "--data", data, "--labels", "label",
                                         "--against", "onnx-reference"))
    assert "scalar.npz" in line and "labels 'label'" in line and "shape []" in line, line


def test_read_labels(work):
    """The reader ctx.labels() is meant to call: file and key in every message, the row count from the inputs."""
    from onnxforge.config import TensorSpec
    from onnxforge.data import read_labels

    specs = [TensorSpec(name="x", dtype="float32", shape=["batch", 4])]
    for name, labels, needle in [("r-scalar", np.asarray(3), "shape []"), ("r-short", np.arange(5), "5 rows"),
                                 ("r-nan", np.where(np.arange(ROWS) == 6, np.nan, 1.0), "nan at row 6"),
                                 ("r-wide", np.zeros((ROWS, 0)), f"[{ROWS}, 0]")]:
        with pytest.raises(UserError, match=rf"{name}.npz: labels 'label' .*{re.escape(needle)}.* — give one label"
                                            if name != "r-nan" else rf"{name}.npz: labels 'label' hold nan at row 6"):
            read_labels(_labels_npz(work, name, labels), "label", specs=specs)
    y = read_labels(_labels_npz(work, "r-good", np.arange(ROWS).reshape(ROWS, 1)), "label", 10, specs=specs)
    assert y.shape == (10,) and y.tolist() == list(range(10))
    with pytest.raises(UserError, match="no 'nope' in .* set data.labels"):
        read_labels(work / "r-good.npz", "nope")


def test_text_labels_for_a_regressor(work):
    """String targets for a float prediction: was a ValueError casting them to float."""
    data = _labels_npz(work, "text", np.asarray([f"c{i}" for i in range(ROWS)]))
    res = run_cli("validate", work / "reg.onnx", "--data", data, "--labels", "label", "--against", "onnx-reference")
    line = assert_one_line_error(res)
    assert "'c0'" in line and "regression" in line and "numeric" in line, line


def test_good_labels_still_score(work):
    data = _labels_npz(work, "good", linear_labels(_x()).reshape(ROWS, 1))  # [N, 1] is one value per row
    res = run_cli("validate", work / "lin.onnx", "--data", data, "--labels", "label", "--against", "onnx-reference",
                  "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["summary"]["metrics"]["candidate"]["accuracy"] == 1.0


def test_report_with_named_bad_labels(work, tmp_path):
    """report's _eval_data checks the labels the config names like every stage; guessed ones are only skipped."""
    data = _labels_npz(work, "rep-short", linear_labels(_x())[:5])
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"name: r\nsource: {{framework: onnx, path: {work / 'lin.onnx'}}}\n"
                   f"data: {{path: {data}, labels: label}}\nstages: {{convert: {{}}}}\n")
    line = assert_one_line_error(run_cli("report", work / "lin.onnx", "--config", cfg, "--no-bench",
                                         "--out", tmp_path / "rep"))
    assert "rep-short.npz" in line and "labels 'label'" in line and "5 rows" in line, line
    # the same column found by its name only ('label'), without a config: no accuracy, a note, exit 0
    res = run_cli("report", work / "lin.onnx", "--data", data, "--no-bench", "--out", tmp_path / "rep2", "--json")
    assert res.code == 0, res.stderr
    rep = res.json()["result"]
    assert rep["data"]["labels"] is None and any("'label' looks like labels" in n for n in rep["notes"]), rep["notes"]


# ------------------------------------------------------------------ predict: outputs without a batch axis (bug 6)


@pytest.mark.parametrize("model,inp,out,shape", [
    ("scalar.onnx", "x.csv", "s.parquet", "[]"),  # 697
    ("scalar.onnx", "x.npz", "s.npz", "[]"),  # 3336 (npz held rows until close)
    ("batchstat.onnx", "x.csv", "s.csv", "[1, 3]"),
])
def test_predict_output_without_batch_axis(work, tmp_path, model, inp, out, shape):
    dest = tmp_path / "o" / out
    res = run_cli("predict", work / model, "--input", work / inp, "-o", dest, "--chunk-rows", "7",
                  *(["--columns", "x=" + ",".join(COLS)] if inp.endswith(".csv") else []))
    line = assert_one_line_error(res)
    name = "y_scalar" if model == "scalar.onnx" else "y_mean"
    assert f"output '{name}' has shape {shape}" in line and "batch axis" in line, line
    _fix_named(line)
    assert not dest.exists() and list(dest.parent.iterdir()) == [], list(dest.parent.iterdir())


def test_predict_runtime_refusal_names_a_fix(work, tmp_path):
    """An onnxruntime failure while scoring rows ("refused rows …") now says what to do."""
    m = linear()
    m.graph.initializer.append(nh.from_array(np.asarray([-1, 5], np.int64), "shape5"))
    m.graph.node.append(h.make_node("Reshape", ["x", "shape5"], ["r"]))  # 7 rows × 4 values: no multiple of 5
    m.graph.output.append(h.make_tensor_value_info("r", T.FLOAT, ["n", 5]))
    save(m, tmp_path / "reshape.onnx")
    dest = tmp_path / "o.csv"
    line = assert_one_line_error(run_cli("predict", tmp_path / "reshape.onnx", "--input", work / "x.npz", "-o", dest,
                                         "--chunk-rows", "7"))
    assert "onnxruntime refused rows 0-6" in line and "onnxforge inspect reshape.onnx" in line, line
    assert not dest.exists()


# ------------------------------------------------------------------ malformed onnxforge.* metadata (bug 7)

META_CASES = [  # key, value, what the line must say
    ("onnxforge.output_columns", "{", "not valid JSON"),  # 2496
    ("onnxforge.categories", "{", "not valid JSON"),  # 3917
    ("onnxforge.unseen_policy", "{", "not valid JSON"),  # 3511
    ("onnxforge.categories", "[]", "not a JSON object"),  # 3308
    ("onnxforge.categories", '{"x": []}', "no levels for input 'x'"),
    ("onnxforge.categories", '{"x": null}', "not a JSON object of lists"),
    ("onnxforge.output_columns", '{"y": 5}', "not a JSON object of lists"),
    ("onnxforge.input_spec", "{", "not valid JSON"),
    ("onnxforge.input_spec", '[{"name": "x", "dtype": "complex"}]', "not a list of input specs"),
]


@pytest.mark.parametrize("key,value,needle", META_CASES)
def test_predict_malformed_metadata(work, tmp_path, key, value, needle):
    m = linear()
    m.metadata_props.add(key=key, value=value)
    save(m, tmp_path / "model.onnx")
    dest = tmp_path / "out" / "scores.csv"
    line = assert_one_line_error(run_cli("predict", tmp_path / "model.onnx", "--input", work / "x.npz", "-o", dest))
    assert "model.onnx" in line and f"metadata {key}" in line and needle in line, line
    assert "re-convert the model with onnxforge" in line, line
    assert not dest.exists()


def test_report_malformed_stochastic_outputs(work, tmp_path):
    m = linear()
    m.metadata_props.add(key="onnxforge.stochastic_outputs", value="{")
    save(m, tmp_path / "model.onnx")
    line = assert_one_line_error(run_cli("report", tmp_path / "model.onnx", "--data", work / "x.npz", "--no-bench",
                                         "--out", tmp_path / "rep"))
    assert "metadata onnxforge.stochastic_outputs is not valid JSON" in line, line


def test_validate_malformed_stochastic_outputs(work, tmp_path):
    """1681-validate-model.metadata."""
    m = linear()
    m.metadata_props.add(key="onnxforge.stochastic_outputs", value="{")
    save(m, tmp_path / "model.onnx")
    line = assert_one_line_error(run_cli("validate", tmp_path / "model.onnx", "--data", work / "x.npz",
                                         "--against", "onnx-reference"))
    assert "model.onnx: metadata onnxforge.stochastic_outputs is not valid JSON" in line, line


def test_meta_json_helper():
    meta = {"onnxforge.a": '{"x": ["l"]}', "onnxforge.b": '["y", true]', "onnxforge.e": ""}
    assert meta_json(meta, "a", dict, items=list) == {"x": ["l"]}
    assert meta_json(meta, "onnxforge.missing", list, []) == [] and meta_json(meta, "e", dict, {}) == {}
    with pytest.raises(UserError, match=r"m.onnx: metadata onnxforge.b is not a JSON list of strings .* — re-convert"):
        meta_json(meta, "b", list, items=str, where="m.onnx")  # JSON true is no string (nor an int)
    with pytest.raises(UserError, match="is not a JSON object"):
        meta_json(meta, "b", dict)

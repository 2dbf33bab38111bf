"""Inputs and records a user brings, found by a sweep: a model input with a fixed 0-size dim runs (it was refused
with "dims None symbolic" and a --shape fix that was itself refused); `inputs[].columns` with a file that holds the
input under its own name reads it (the refusal told the user to set what was set); JSON records refuse a boolean
for a number and a key no input reads (both were scored or dropped silently); a PyMC config whose validate needs
source.model for its draws is refused by preflight, before convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import CONFIGS, ROOT, assert_one_line_error
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, linear_labels, save
from serve_http_server import Served

from onnxforge.errors import UserError
from onnxforge.score import Scorer

# ------------------------------------------------------------------ a fixed 0-size dim


def _zero_dim_model(tmp_path: Path) -> Path:
    """x: [batch, 0] @ W: [0, 4] → y: [batch, 4] (zeros): onnxruntime runs it on x of shape (n, 0) only."""
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"])], "zero",
                     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 0])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
                     [nh.from_array(np.zeros((0, 4), np.float32), "W")])
    return save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "zerodim.onnx")


def test_an_input_with_a_fixed_zero_size_dim_is_fed_empty(tmp_path, cli):
    model = _zero_dim_model(tmp_path)
    res = cli("validate", model, "--against", "onnx-reference", "--synthetic", "--json")
    assert res.code == 0, res.stderr
    assert "x float32[64, 0]" in res.stderr or res.json()["result"]["summary"]["verdict"] == "pass"
    # the shape the model declares is a --shape a user may give; another size at the fixed 0 is refused by name
    assert cli("validate", model, "--against", "onnx-reference", "--synthetic", "--shape", "x=4,0").code == 0
    line = assert_one_line_error(cli("validate", model, "--against", "onnx-reference", "--synthetic",
                                     "--shape", "x=4,3"))
    assert "fixes it at 0" in line, line
    np.savez(tmp_path / "empty.npz", x=np.zeros((5, 0), np.float32))
    res = cli("predict", model, "--input", tmp_path / "empty.npz", "--output", tmp_path / "p.npz")
    assert res.code == 0, res.stderr
    assert np.load(tmp_path / "p.npz")["y"].shape == (5, 4)
    np.savez(tmp_path / "wide.npz", x=np.zeros((5, 3), np.float32))  # data the model cannot take: exit 2, named
    line = assert_one_line_error(cli("validate", model, "--against", "onnx-reference", "--data", tmp_path / "wide.npz"))
    assert "'x'" in line and "[5, 3]" in line, line


def test_an_unnamed_symbolic_dim_is_named_by_its_place_not_none(tmp_path, cli):
    """x: [batch, ?] + b: [5]: no probe size (16, 64, ...) broadcasts; the message names x[1] (was 'dims None')
    and its --shape fix works."""
    b = nh.from_array(np.arange(5, dtype=np.float32), "b")
    g = h.make_graph([h.make_node("Add", ["x", "b"], ["y"])], "five",
                     [h.make_tensor_value_info("x", T.FLOAT, ["batch", None])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 5])], [b])
    model = save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "five.onnx")
    line = assert_one_line_error(cli("validate", model, "--against", "onnx-reference", "--synthetic"))
    assert "None" not in line and "dim x[1] symbolic" in line and "--shape x=" in line, line
    res = cli("validate", model, "--against", "onnx-reference", "--synthetic", "--shape", "x=1,5")
    assert res.code == 0, res.stderr


# ------------------------------------------------------------------ inputs[].columns and the input's own name


def _columns_project(tmp_path: Path, **arrays) -> Path:
    save(linear(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **arrays)
    cfg = {"name": "cols", "source": {"framework": "onnx", "path": "m.onnx"},
           "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "columns": ["a", "b", "c", "d"]}],
           "data": {"path": "d.npz", "labels": "label"}, "stages": {"validate": {"against": "onnx-reference"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path / "c.yaml"


def test_columns_fall_back_to_the_input_name_the_file_holds(tmp_path, cli):
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    cfg = _columns_project(tmp_path, x=x, label=linear_labels(x))  # the stacked matrix, not the columns
    res = cli("run", cfg, "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert res.json()["result"]["stages"][-1]["summary"]["rows"] == 30


def test_columns_partly_missing_are_named_with_a_fix_that_is_not_already_set(tmp_path, cli):
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    cfg = _columns_project(tmp_path, a=x[:, 0], b=x[:, 1], label=linear_labels(x))
    line = assert_one_line_error(cli("run", cfg, cwd=tmp_path))
    assert "columns ['c', 'd'] not in the data" in line and "available: a, b, label" in line, line
    assert "set inputs[].column" not in line and "store those columns in the file" in line, line
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ records: JSON types and unknown keys


def _typed_model(tmp_path: Path) -> Path:
    """y = num + float(flag) + code(city): a float, a bool and a string input, each [batch, 1]."""
    g = h.make_graph(
        [h.make_node("Cast", ["flag"], ["flagf"], to=T.FLOAT),
         h.make_node("LabelEncoder", ["city"], ["code"], domain="ai.onnx.ml", keys_strings=["lyon", "oslo"],
                     values_floats=[10.0, 20.0], default_float=-1.0),
         h.make_node("Add", ["num", "flagf"], ["s"]), h.make_node("Add", ["s", "code"], ["y"])], "typed",
        [h.make_tensor_value_info("num", T.FLOAT, ["batch", 1]), h.make_tensor_value_info("flag", T.BOOL, ["batch", 1]),
         h.make_tensor_value_info("city", T.STRING, ["batch", 1])],
        [h.make_tensor_value_info("y", T.FLOAT, ["batch", 1])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3)])
    onnx.checker.check_model(m, full_check=True)
    return save(m, tmp_path / "typed.onnx")


OK = {"num": 0.5, "flag": True, "city": "oslo"}


@pytest.fixture(scope="module")
def typed(tmp_path_factory) -> Path:
    return _typed_model(tmp_path_factory.mktemp("typed"))


def test_a_bool_input_takes_true_false_or_one_zero_and_nothing_else(typed):
    scorer = Scorer(typed, threads=1)
    got = scorer.records([OK, {**OK, "flag": False, "num": 2}, {**OK, "flag": 1}, {**OK, "flag": 0}])
    assert [r["y_0"] for r in got] == [21.5, 22.0, 21.5, 20.5]
    for bad, shown in ((0.5, "0.5"), (None, "null")):  # both were cast to True
        with pytest.raises(UserError, match=rf"record 1: 'flag' is {shown} but input 'flag' is bool"):
            scorer.records([OK, {**OK, "flag": bad}])


@pytest.mark.parametrize(("record", "needles"), [
    ({**OK, "num": True}, ["record 1", "'num' is true (a boolean)", "float32 numbers"]),
    ({**OK, "flag": 2}, ["'flag' is 2", "input 'flag' is bool", "true or false"]),
    ({**OK, "city": False}, ["record 1", "'city' is false (a boolean)", "takes text"]),
    ({**OK, "city": 5}, ["'city' is 5 (a number)", "takes text"]),
    ({**OK, "nmu": 3.0}, ["key 'nmu'", "no model input reads", "did you mean 'num'", "num, flag, city"]),
], ids=["bool-for-float", "two-for-bool", "bool-for-text", "number-for-text", "typo-beside-the-right-key"])
def test_records_refuse_a_wrong_json_type_or_an_unknown_key(typed, record, needles):
    scorer = Scorer(typed, threads=1)
    with pytest.raises(UserError) as e:
        scorer.records([OK, record])
    msg = str(e.value)
    assert all(n in msg for n in needles) and "\n" not in msg, msg


def test_an_unknown_key_is_refused_in_records_not_in_tables(typed):
    """A key in a later record is refused with its index. Tables (files, DataFrames, dicts of columns, rows passed
    to scorer(...)) keep extra columns (ids, labels) out of the model, as predict always has: only the records API
    and serve's /predict take the keys as a client's request."""
    scorer = Scorer(typed, threads=1)
    with pytest.raises(UserError, match=r"record 2 has key 'zzz' that no model input reads"):
        scorer.records([OK, OK, {**OK, "zzz": 1}])
    assert scorer([{**OK, "id": 7, "label": 1.0}])["y_0"].tolist() == [21.5]


def test_serve_answers_400_for_a_boolean_number_and_an_unknown_key(typed):
    with Served(typed) as server:
        status, doc = server.json("POST", "/predict", [OK])
        assert status == 200 and doc["predictions"][0]["y"] == [21.5], doc
        status, doc = server.json("POST", "/predict", [{**OK, "num": True}])
        assert status == 400 and "'num' is true (a boolean)" in doc["error"], doc
        status, doc = server.json("POST", "/predict", {"records": [OK, {**OK, "nmu": 1}]})
        assert status == 400 and "record 1 has key 'nmu'" in doc["error"] and "did you mean 'num'" in doc["error"]
        status, doc = server.json("POST", "/predict", [{**OK, "flag": None}])  # was NaN, cast to True
        assert status == 400 and "'flag' is null but input 'flag' is bool" in doc["error"], doc


# ------------------------------------------------------------------ PyMC draws without source.model: preflight


def _pymc_config(tmp_path: Path, **validate) -> Path:
    raw = yaml.safe_load((CONFIGS / "pymc_linear.yaml").read_text())
    src = raw["source"]
    del src["model"]  # draws stay on: validate's stochastic check would need the model
    src["path"] = str(ROOT / "fixtures/pymc/linear.nc")
    src["transform"] = str(ROOT / "fixtures/pymc_models.py") + ":linear_mu"
    raw["data"]["path"] = str(ROOT / "fixtures/data/pymc_linear.npz")
    raw["stages"] = {"convert": {}, "validate": validate}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path / "p.yaml"


def test_draws_without_source_model_are_refused_before_convert(tmp_path, cli):
    cfg = _pymc_config(tmp_path)
    for args in (("config", "check", cfg), ("run", cfg)):
        line = assert_one_line_error(cli(*args, cwd=tmp_path))
        assert "the stochastic check needs source.model" in line and "drop outputs.draws" in line, line
    assert not (tmp_path / "runs").exists()
    # a validate that samples nothing from PyMC needs no model
    assert cli("config", "check", _pymc_config(tmp_path, against="onnx-reference"), cwd=tmp_path).code == 0

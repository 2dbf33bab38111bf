"""Found by sweep 7. Labels (data.labels / --labels) are read as written, like text inputs: a CSV column of class
codes "007", "010", "100" was typed by pandas as 7, 10, 100, so a classifier whose label output is the text "007"
scored 33 % (only "100" matched) in validate and in quantize's budget. Bytes labels (a numpy `S` array, a
parquet binary column) are decoded as UTF-8 as inputs are: b"caf\\xc3\\xa9" was exit 3 (an ASCII decode in the
comparison), bytes that are not UTF-8 are one line, exit 2, naming the row. A number class is compared with its label
as a number: float labels 0.0/1.0/2.0 (an .npz, a CSV written from floats) against an int64 label output were 0 %."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import assert_one_line_error, run_cli

from onnxforge import data
from onnxforge.errors import UserError
from onnxforge.standalone import build_config, run_alone

skio = pytest.importorskip("skops.io")

CODES = np.array(["007", "010", "100"])
PETS = np.array(["cat", "dog", "café"])
COLS = ["a", "b", "c", "d"]


def _convert(model, path: Path) -> None:
    skio.dump(model, path.with_suffix(".skops"))
    cfg = build_config("convert", None, None, {}, source={"framework": "sklearn", "path": str(path.with_suffix(
        ".skops"))}, top={"name": path.stem, "inputs": [{"name": "X", "dtype": "float32", "shape": ["batch", 4]}]})
    run_alone("convert", cfg, None, path.with_suffix(".onnx"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Iris classifiers on text classes (codes, pets) and on 0/1/2, converted (in-process: the stage the CLI runs);
    their data in CSV, npz and parquet files; `score` is each one's sklearn accuracy on those rows."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    tmp = tmp_path_factory.mktemp("labels")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    score = {}
    for name, classes in (("codes", CODES[y]), ("pets", PETS[y]), ("ints", y)):
        model = LogisticRegression(max_iter=500).fit(x, classes)
        score[name] = model.score(x, classes)
        _convert(model, tmp / f"{name}.onnx")
    frame = pd.DataFrame(x, columns=COLS).assign(code=CODES[y], y=y, yf=y.astype(float))
    frame.to_csv(tmp / "d.csv", index=False)
    np.savez(tmp / "d.npz", X=x, pet=np.char.encode(PETS[y], "utf-8"), yf=y.astype(float),
             latin1=np.char.encode(PETS[y], "latin-1"))
    pd.DataFrame(x, columns=COLS).assign(pet=[s.encode("latin-1") for s in PETS[y]]).to_parquet(tmp / "bin.parquet")
    return tmp, score


def _config(tmp: Path, model: str, path: str, labels: str, **extra) -> Path:
    spec = {"name": "X", "dtype": "float32", "shape": ["batch", 4]}
    cfg = {"name": "t", "source": {"framework": "onnx", "path": f"{model}.onnx"},
           "inputs": [spec | ({"columns": COLS} if Path(path).suffix in (".csv", ".parquet") else {})],
           "data": {"path": path, "labels": labels}, **extra}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp / "c.yaml"


def _accuracy(tmp: Path, model: str, path: str, labels: str) -> float:
    cfg = build_config("validate", tmp / f"{model}.onnx", _config(tmp, model, path, labels),
                       {"against": "onnx-reference"})
    res, _ = run_alone("validate", cfg, tmp / f"{model}.onnx", None)
    return res.summary["metrics"]["candidate"]["accuracy"]


def test_csv_class_codes_keep_their_leading_zeros(work, monkeypatch):
    """validate of a model whose classes are "007"/"010"/"100" against the CSV holding them: sklearn's accuracy
    (0.97), not 0.33; read_labels gives the codes as written, and a column of plain numbers still as numbers."""
    tmp, score = work
    monkeypatch.chdir(tmp)
    assert _accuracy(tmp, "codes", "d.csv", "code") == pytest.approx(score["codes"])
    assert data.read_labels(tmp / "d.csv", "code")[:1].tolist() == ["007"]
    assert data.read_labels(tmp / "d.csv", "y").dtype == np.int64  # a finetune hook gets numbers, as before
    assert data.read_labels(tmp / "d.csv", "yf").dtype == np.float64


def test_quantize_budget_scores_csv_class_codes_as_written(work, monkeypatch):
    """quantize's accuracy budget is measured against the same labels: the float model's accuracy is sklearn's."""
    from sklearn.neural_network import MLPClassifier

    tmp, _ = work
    monkeypatch.chdir(tmp)
    frame = pd.read_csv(tmp / "d.csv", dtype={"code": str})
    x = frame[COLS].to_numpy(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0).fit(x, frame["code"])
    _convert(mlp, tmp / "mlp.onnx")
    stage = {"mode": "dynamic", "allow_slower": True}
    cfg = build_config("quantize", tmp / "mlp.onnx", _config(tmp, "mlp", "d.csv", "code"), stage)
    res, _ = run_alone("quantize", cfg, tmp / "mlp.onnx", tmp / "mlp.int8.onnx")
    assert res.summary["before"]["accuracy"] == pytest.approx(mlp.score(x, frame["code"]))


def test_npz_bytes_labels_are_utf8_text(work, monkeypatch):
    """An npz `S` array of UTF-8 class names (b"caf\\xc3\\xa9") scores as the text: was exit 3."""
    tmp, score = work
    monkeypatch.chdir(tmp)
    assert _accuracy(tmp, "pets", "d.npz", "pet") == pytest.approx(score["pets"])


def test_bytes_labels_that_are_not_utf8_are_refused_by_row(work, monkeypatch):
    """Latin-1 bytes: an npz `S` array through the CLI (was exit 3), a parquet binary column (was 'hold bytes
    values', no word of the encoding) — one line, exit 2, the row and the fix."""
    tmp, _ = work
    monkeypatch.chdir(tmp)
    want = "hold bytes that are not UTF-8 text (b'caf\\xe9') at row 100 and 49 more — store the labels as UTF-8 text"
    _config(tmp, "pets", "d.npz", "latin1")
    # fresh: one real process for the exit code, without starting the test zygote (it imports every framework)
    res = run_cli("validate", "pets.onnx", "-c", "c.yaml", "--against", "onnx-reference", cwd=tmp, fresh=True)
    assert f"labels 'latin1' {want}" in assert_one_line_error(res)
    with pytest.raises(UserError, match=f"labels 'pet' {re.escape(want)}"):
        _accuracy(tmp, "pets", "bin.parquet", "pet")


def test_float_labels_match_an_int64_class_output(work, monkeypatch):
    """Labels 0.0/1.0/2.0 (npz floats; a CSV written from floats) against classes 0/1/2: sklearn's accuracy, was 0 %.
    The integer column still matches as before."""
    tmp, score = work
    monkeypatch.chdir(tmp)
    for path, key in (("d.npz", "yf"), ("d.csv", "yf"), ("d.csv", "y")):
        assert _accuracy(tmp, "ints", path, key) == pytest.approx(score["ints"]), (path, key)


def test_a_missing_text_label_is_named(work):
    """An empty cell in a text labels column: one line naming the missing value and its row (was 'hold nan')."""
    tmp, _ = work
    frame = pd.read_csv(tmp / "d.csv", dtype={"code": str})
    frame.loc[5, "code"] = None
    frame.to_csv(tmp / "miss.csv", index=False)
    with pytest.raises(UserError, match=r"labels 'code' hold a missing value \(empty cell or null\) at row 5 "):
        data.read_labels(tmp / "miss.csv", "code")


def test_report_scores_csv_class_codes_as_written(work, monkeypatch):
    """report on the "007" model with the config's CSV data: its accuracy is sklearn's, not 0.33 (the report read
    the labels column through pandas' typing)."""
    from onnxforge.stages.report.build import build_report

    tmp, score = work
    monkeypatch.chdir(tmp)
    rep = build_report([tmp / "codes.onnx"], out=tmp / "rep", formats=["json"], bench=False,
                       config=_config(tmp, "codes", "d.csv", "code"))
    found = re.findall(r'"accuracy": ([0-9.]+)', (tmp / "rep" / "report.json").read_text())
    assert found and all(float(a) == pytest.approx(score["codes"]) for a in found), (found, rep.keys())


def test_number_labels_for_text_classes_are_refused(work, monkeypatch):
    """An npz whose labels lost their spelling (ints 7, 10, 100 for the classes "007", "010", "100") scored 0.33
    silently (only 100 matched as text); now exit 2 naming a label, its class and the fix."""
    tmp, _ = work
    monkeypatch.chdir(tmp)
    with np.load(tmp / "d.npz") as z:
        x = z["X"]
    y = pd.read_csv(tmp / "d.csv", dtype={"code": str})["code"].to_numpy()
    np.savez(tmp / "ints.npz", X=x, code=y.astype(np.int64))
    with pytest.raises(UserError, match=r"the label 7 is the class .007. only by value"):
        _accuracy(tmp, "codes", "ints.npz", "code")

"""`onnxforge predict`: offline scoring of any ONNX model in chunks — columns mapped through the stamped input
spec, every format in and out, chunking invisible in the results (draws included, given a seed), atomic output,
one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import assert_one_line_error
from onnx_models import linear, save

from onnxforge.artifact import stamp
from onnxforge.config import parse_config, read_yaml
from onnxforge.pipeline import run_pipeline
from onnxforge.score import predict_file

ROOT = Path(__file__).resolve().parents[1]
COLS = ["a", "b", "c", "d"]


def ort_run(model: Path, feeds) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(103, 4)).astype(np.float32)
    np.savez(tmp / "x.npz", x=x)
    pd.DataFrame(x, columns=COLS).to_csv(tmp / "x.csv", index=False)
    save(linear(), tmp / "plain.onnx")  # no onnxforge metadata: inputs map by name
    m = linear()
    stamp(m, input_spec=[{"name": "x", "shape": ["batch", 4], "columns": COLS}])
    save(m, tmp / "spec.onnx")
    # a stochastic pymc artifact with a string input: hier, 50 draws, seed baked in
    path = ROOT / "configs" / "pymc_hier.yaml"
    raw, lines = read_yaml(path)
    raw["source"]["outputs"] = {"draws": 50}
    raw.update(stages={"convert": {}})
    cfg = parse_config(raw, path, lines, run_dir=tmp)
    hier = cfg.run_path / run_pipeline(cfg)["final_model"]
    z = np.load(ROOT / "fixtures/data/pymc_hier.npz")
    hdf = pd.DataFrame({"x": z["x"], "group": z["group"]})
    hdf = pd.concat([hdf] * 3, ignore_index=True)
    hdf.to_parquet(tmp / "hier.parquet")
    return {"tmp": tmp, "x": x, "hier": hier, "hdf": hdf}


def test_npz_by_input_name_to_npz(work, cli):
    tmp = work["tmp"]
    res = cli("predict", tmp / "plain.onnx", "--input", tmp / "x.npz", "--output", tmp / "y.npz", "--json",
              "--chunk-rows", "25")
    assert res.code == 0, res.stderr
    info = res.json()["result"]
    assert info["rows"] == 103 and info["chunks"] == 5 and info["seconds"] > 0 and info["rows_per_s"] > 0
    want = ort_run(tmp / "plain.onnx", {"x": work["x"]})
    with np.load(tmp / "y.npz") as got:
        np.testing.assert_array_equal(got["y"], want["y"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_csv_columns_from_input_spec_to_parquet(work, cli):
    tmp = work["tmp"]
    res = cli("predict", tmp / "spec.onnx", "--input", tmp / "x.csv", "--output", tmp / "y.parquet")
    assert res.code == 0, res.stderr
    assert "103 rows" in res.stdout
    got = pd.read_parquet(tmp / "y.parquet")
    want = ort_run(tmp / "spec.onnx", {"x": work["x"]})
    assert list(got.columns) == ["y_0", "y_1", "y_2", "label"]
    np.testing.assert_allclose(got[["y_0", "y_1", "y_2"]].to_numpy(), want["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["label"].to_numpy(), want["label"])


def test_chunking_changes_nothing_and_seed_replays_draws(work):
    tmp, hier = work["tmp"], work["hier"]
    outs = {}
    for key, chunk, seed in (("a", 65536, 5), ("b", 7, 5), ("c", 7, 6), ("d", 65536, None), ("e", 13, None)):
        res = predict_file(hier, tmp / "hier.parquet", tmp / f"h_{key}.parquet", chunk_rows=chunk, seed=seed)
        assert res["rows"] == len(work["hdf"]) and res["chunks"] == -(-len(work["hdf"]) // chunk)
        outs[key] = pd.read_parquet(tmp / f"h_{key}.parquet")
    a = outs["a"]
    assert list(a.columns[:5]) == ["mean", "std", "quantiles_q0.05", "quantiles_q0.5", "quantiles_q0.95"]
    draws = [c for c in a.columns if c.startswith("draws_")]
    assert len(draws) == 50
    feeds = {"x": work["hdf"]["x"].to_numpy(np.float32), "group": work["hdf"]["group"].to_numpy(object)}
    direct = ort_run(hier, feeds)
    np.testing.assert_allclose(a["mean"], direct["mean"], rtol=1e-6)
    for other in "bcde":
        np.testing.assert_allclose(outs[other]["mean"], a["mean"], rtol=1e-6)
    pd.testing.assert_frame_equal(outs["a"], outs["b"])  # same seed: same draws whatever the chunk size
    assert not np.allclose(outs["c"][draws], outs["a"][draws])  # another seed: other draws
    pd.testing.assert_frame_equal(outs["d"], outs["e"])  # no --seed: the seed baked in at convert
    np.testing.assert_allclose(outs["d"][draws].to_numpy(), direct["draws"], rtol=1e-6)


def test_progress_bar_and_chunk_hint(work):
    from rich.console import Console

    from onnxforge.artifact import load_model, save_model

    tmp = work["tmp"]
    m = load_model(tmp / "spec.onnx")
    stamp(m, rows_per_chunk=10)  # a stochastic artifact's memory hint caps the chunk size
    save_model(m, tmp / "hint.onnx")
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100)
    res = predict_file(tmp / "hint.onnx", tmp / "x.csv", tmp / "hint.csv", chunk_rows=1000, console=con)
    assert res["chunk_rows"] == 10 and res["chunks"] == 11
    assert "scoring" in buf.getvalue()
    assert len(pd.read_csv(tmp / "hint.csv")) == 103


def test_missing_column_is_one_line_and_writes_nothing(work, cli):
    tmp = work["tmp"]
    pd.DataFrame(work["x"][:, :3], columns=COLS[:3]).to_csv(tmp / "short.csv", index=False)
    res = cli("predict", tmp / "spec.onnx", "--input", tmp / "short.csv", "--output", tmp / "short.parquet")
    line = assert_one_line_error(res)
    assert "['d']" in line and "input 'x'" in line
    assert not (tmp / "short.parquet").exists() and not list(tmp.glob(".short.parquet*"))


@pytest.mark.parametrize(("args", "needle"), [
    (["--output", "y.txt"], "unsupported output format"),
    (["--output", "x.csv"], "is the input file"),
    (["--output", "y.csv", "--chunk-rows", "0"], "positive number"),
], ids=["suffix", "overwrite", "chunk"])
def test_bad_arguments_exit_2(work, cli, args, needle):
    tmp = work["tmp"]
    args = [str(tmp / a) if a.startswith(("y.", "x.")) else a for a in args]
    res = cli("predict", tmp / "spec.onnx", "--input", tmp / "x.csv", *args)
    assert needle in assert_one_line_error(res)


def test_missing_model_or_input_exit_2(work, cli):
    tmp = work["tmp"]
    assert "not found" in assert_one_line_error(cli("predict", tmp / "nope.onnx", "--input", tmp / "x.csv",
                                                    "--output", tmp / "o.csv"))
    assert "not found" in assert_one_line_error(cli("predict", tmp / "spec.onnx", "--input", tmp / "nope.csv",
                                                    "--output", tmp / "o.csv"))


def test_json_result_is_machine_readable(work, cli):
    tmp = work["tmp"]
    res = cli("predict", work["hier"], "--input", tmp / "hier.parquet", "--output", tmp / "j.npz", "--json",
              "--seed", "1", "--threads", "1")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)["result"]
    assert info["reseeded_nodes"] == 1 and info["seed"] == 1 and info["outputs"][-1] == "draws"
    with np.load(tmp / "j.npz") as z:
        assert z["draws"].shape == (len(work["hdf"]), 50) and z["quantiles"].shape == (len(work["hdf"]), 3)


def test_string_outputs_to_npz_load_without_pickle(tmp_path):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    g = h.make_graph([h.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", keys_int64s=[0, 1],
                                  values_strings=["a", "b"], default_string="?")], "labels",
                     [h.make_tensor_value_info("x", T.INT64, ["N"])], [h.make_tensor_value_info("y", T.STRING, ["N"])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("ai.onnx.ml", 3)]),
              tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.array([0, 1, 5, 1]))
    assert predict_file(tmp_path / "m.onnx", tmp_path / "x.npz", tmp_path / "y.npz", chunk_rows=3)["chunks"] == 2
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        assert z["y"].tolist() == ["a", "b", "?", "b"]

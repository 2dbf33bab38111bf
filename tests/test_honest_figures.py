"""Figures that never mislead (issue #14 item 3): a native baseline runs on the threads the table says (or is
labelled and kept out of every ratio), figures computed on synthetic inputs say which shapes, sizes are the files'
on disk and a file that grew says "larger", and report.md/html name no path of this machine.

Real conversions, real onnxruntime, real XGBoost and Keras; the thread limits are checked by reading the setting
back from the framework (XGBoost's booster config, TensorFlow's threading config), not by timing, which moves
±15 % on a shared 2-core box."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, FIXTURES, run_cli


def _result(res) -> dict:
    """The command's object from --json (inside the {ok, result, …} envelope where there is one)."""
    doc = res.json()
    return doc["result"] if isinstance(doc, dict) and "ok" in doc and "result" in doc else doc


def _nthread(est) -> str:
    return json.loads(est.get_booster().save_config())["learner"]["generic_param"]["nthread"]


@pytest.fixture(scope="module")
def xgb():
    from onnxforge.config import load_config
    from onnxforge.registry import frontend

    cfg = load_config(CONFIGS / "xgboost_classifier.yaml")
    fe = frontend("xgboost")
    return fe, fe.load(cfg), cfg


# ------------------------------------------------------------------ 1. native baselines on the threads asked


def test_xgboost_thread_limit_is_read_back_from_the_booster(xgb):
    """The very estimator a native bench case calls holds nthread=1 while it is timed (the booster's own saved
    config says so), and gets its default back afterwards."""
    from onnxforge import data as d
    from onnxforge.benchmark import native_cases

    fe, est, cfg = xgb
    before = _nthread(est)
    assert before == "0"  # XGBoost's default: every core
    feeds = d.feeds_from_table(d.load_table(cfg.data.path), cfg.inputs)
    (case,) = native_cases(fe, est, cfg, feeds, batches=[8], threads=[1])
    with case.wrap() as got:
        assert _nthread(est) == "1" and est.get_params()["n_jobs"] == 1
        assert got.applied, got.how
        case.fn()  # predicts on the limited booster
    assert _nthread(est) == before and est.get_params()["n_jobs"] is None  # restored


@pytest.fixture(scope="module")
def xgb_run(tmp_path_factory):
    """`onnxforge run` of the XGBoost wine classifier (convert + report) in a project folder of its own."""
    proj = tmp_path_factory.mktemp("xgb") / "proj"
    (proj / "model").mkdir(parents=True)
    (proj / "data").mkdir()
    shutil.copyfile(FIXTURES / "tabular" / "wine_xgb.json", proj / "model" / "wine_xgb.json")
    shutil.copyfile(FIXTURES / "data" / "wine_test.npz", proj / "data" / "wine_test.npz")
    (proj / "xgb.yaml").write_text("""
name: xgb-honest
source: {framework: xgboost, path: model/wine_xgb.json}
inputs: [{name: input, dtype: float32, shape: [batch, 13], column: x}]
outputs: [label, probabilities]
data: {path: data/wine_test.npz, labels: label}
run_dir: runs
stages:
  convert: {}
  report: {runs: 12, warmup: 2, max_seconds: 0.3, batches: [1, 64], threads: [1]}
""")
    res = run_cli("run", proj / "xgb.yaml", "--json", cwd=proj)
    assert res.code == 0, (res.stdout[-2000:], res.stderr[-2000:])
    rdir = proj / "runs" / "xgb-honest" / "02-report"
    return {"proj": proj, "run": proj / "runs" / "xgb-honest", "json": json.loads((rdir / "report.json").read_text()),
            "md": (rdir / "report.md").read_text(), "html": (rdir / "report.html").read_text()}


def test_report_native_xgboost_threads_applied_and_compared(xgb_run):
    lat = xgb_run["json"]["latency"]
    native = [r for r in lat["rows"] if r["engine"] == "xgboost native"]
    assert [(r["batch"], r["threads"], r["threads_applied"]) for r in native] == [(1, 1, True), (64, 1, True)]
    assert all("n_jobs=1" in r["threads_note"] for r in native)
    assert lat["baseline"] == "xgboost (native)"
    assert {(q["label"], q["batch"]) for q in lat["ratios"]} == {("01-convert/model.onnx", 1),
                                                                  ("01-convert/model.onnx", 64)}
    # real data, named relative to the project, with its row count
    assert lat["inputs"] == [{"batch": 1, "label": "real data: data/wine_test.npz, 45 rows"},
                             {"batch": 64, "label": "real data: data/wine_test.npz, 45 rows"}]
    assert "- latency at batch 1: real data: data/wine_test.npz, 45 rows" in xgb_run["md"].replace("\\", "")


def _dense_model(path: Path) -> None:
    """x float32 [batch, 64] → logits [batch, 10]: the IO of the Keras digits fixture (its figures are timed, not
    compared, here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "dense",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras")
    cfg = d / "k.yaml"
    cfg.write_text((CONFIGS / "keras_sequential.yaml").read_text().replace("../fixtures", str(FIXTURES)))
    _dense_model(d / "dense.onnx")
    return d, cfg


def test_keras_limit_not_applied_is_labelled_and_has_no_ratio(keras_case):
    """TensorFlow fixes its thread pools when it starts: in this process it runs on at most the first count asked
    (set before the model loads), so 2 threads cannot be applied. That figure is labelled in JSON, terminal, HTML
    and Markdown, and no speed ratio is made with it on either side."""
    from rich.console import Console

    from onnxforge.stages.report.build import build_report
    from onnxforge.stages.report.options import ReportOptions

    d, cfg = keras_case
    console = Console(record=True, width=240, force_terminal=False)
    rep = build_report([d / "dense.onnx"], out=d / "r", config=cfg, native=True, console=console,
                       options=ReportOptions(batches=[1], threads=[1, 2], runs=4, warmup=1, max_seconds=0.2))
    lat = rep["latency"]
    native = {r["threads"]: r for r in lat["rows"] if r["engine"] == "keras native"}
    assert native[2]["threads_applied"] is False and "TensorFlow" in native[2]["threads_note"]
    off = {(r["label"], r["threads"]) for r in lat["rows"] if r.get("threads_applied") is False}
    assert ("keras (native)", 2) in off
    for q in lat["ratios"]:  # no ratio made with a figure whose limit did not hold
        assert (q["label"], q["threads"]) not in off and (q["baseline"], q["threads"]) not in off
    if native[1]["threads_applied"]:  # set before the model loaded (a fresh TensorFlow): compared as usual
        assert lat["baseline"] == "keras (native)"
        assert [(q["label"], q["threads"]) for q in lat["ratios"]] == [("dense.onnx", 1)]
    assert any("2 thread(s) asked but not applied" in n for n in rep["notes"])
    printed = console.export_text()
    assert re.search(r"keras \(native\) +│ +1 │ default \(not applied\) .*│ +no ratio │", printed)
    html = (d / "r" / "report.html").read_text()
    assert "default (not applied)" in html and "no ratio" in html
    assert "2 thread(s) asked but not applied" in (d / "r" / "report.md").read_text()


def test_bench_sets_tensorflow_threads_before_loading(keras_case):
    """`onnxforge bench --config` asks TensorFlow for the thread count before the Keras model loads: there the
    limit holds (read back from tf.config.threading) and the speed ratio is made."""
    d, cfg = keras_case
    res = run_cli("bench", d / "dense.onnx", "--config", cfg, "--batch", "1", "--threads", "1", "--threads", "2",
                  "--runs", "4", "--json", cwd=d)
    assert res.code == 0, res.stderr[-2000:]
    out = _result(res)
    native = {r["threads"]: r for r in out["results"] if r["engine"] == "keras native"}
    assert native[1]["threads_applied"] is True and "intra-op 1" in native[1]["threads_note"]
    assert native[2]["threads_applied"] is False  # TensorFlow started on 1: 2 cannot be applied any more
    assert out["baseline"] == "keras (native)"
    assert [(q["label"], q["threads"]) for q in out["ratios"]] == [("dense.onnx", 1)]
    assert "default (not applied)" in res.stderr


# ------------------------------------------------------------------ 2. synthetic inputs say which shapes


def _sequence_model(path: Path) -> None:
    """Token ids [batch, seq] (seq symbolic) → embedding Gather → mean over the sequence."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32), "emb")
    g = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
         helper.make_node("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0)],
        "seq", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])], [emb])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_bench_and_report_label_synthetic_shapes_of_a_sequence_model(tmp_path):
    from rich.console import Console

    from onnxforge.benchmark import bench_cli
    from onnxforge.stages.report.build import build_report
    from onnxforge.stages.report.options import ReportOptions

    model = tmp_path / "seq.onnx"
    _sequence_model(model)
    console = Console(record=True, width=200, force_terminal=False)
    out = bench_cli(model, batches=[1, 4], threads=[1], runs=4, config=None, console=console, warmup=1,
                    max_seconds=0.2)
    labels = {r["batch"]: r["inputs"] for r in out["results"]}
    m = re.match(r"synthetic inputs: input_ids int64\[1, (\d+)\] in \[\d+, \d+\] \(indices 0…99", labels[1])
    assert m and int(m.group(1)) > 1, labels  # the probed sequence length, not 1, and the ids the table holds
    assert labels[4].startswith(f"synthetic inputs: input_ids int64[4, {m.group(1)}] in [")
    printed = console.export_text()
    assert labels[1] in printed and labels[4] in printed

    rep = build_report([model], out=tmp_path / "r", formats=["json", "md"], options=ReportOptions(
        batches=[1], runs=4, warmup=1, max_seconds=0.2))
    assert rep["latency"]["inputs"] == [{"batch": 1, "label": labels[1]}]
    assert all(r["inputs"] == labels[1] for r in rep["latency"]["rows"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"- latency at batch 1: {labels[1]}" in md.replace("\\", "")  # Markdown escapes removed


# ------------------------------------------------------------------ 3. sizes: on disk, and "larger" when larger


def test_size_ratios_in_words():
    from onnxforge.stages.report import fmt

    assert fmt.size_change(863, 2511) == "2.91× larger"
    assert fmt.size_change(2511, 863) == "2.91× smaller"
    assert fmt.times(2511 / 863) == "2.91× larger" and fmt.times(1.0) == "same size"
    assert fmt.row_ratio({"key": "after.file_bytes", "before": 863, "after": 2511, "ratio": 2511 / 863}) == \
        "2.91× larger"
    assert fmt.row_ratio({"key": "nodes", "before": 10, "after": 5, "ratio": 0.5}) == "0.5"


def test_a_file_that_grew_says_larger_with_sizes_on_disk(xgb_run, tmp_path):
    """An artifact bigger than the first says "× larger" (not "0.34× smaller"); a stage's before → after file
    sizes are the files' on disk even when its summary says otherwise."""
    import onnx

    run = tmp_path / "run"
    shutil.copytree(xgb_run["run"], run)
    src = run / "01-convert" / "model.onnx"
    m = onnx.load(src)
    m.metadata_props.add(key="padding", value="x" * 2 * src.stat().st_size)  # same graph, a file ~3× the size
    (run / "03-optimize").mkdir()
    onnx.save(m, run / "03-optimize" / "model.onnx")
    man = json.loads((run / "manifest.json").read_text())
    man["stages"].append({"name": "optimize", "dir": "03-optimize", "status": "ran", "verdict": "pass",
                          "model": "03-optimize/model.onnx", "inputs": {"01-convert/model.onnx": "0" * 64},
                          "summary": {"before": {"file_bytes": 2511, "nodes": 1}, "after": {"file_bytes": 863,
                                                                                           "nodes": 1}}})
    (run / "manifest.json").write_text(json.dumps(man))
    res = run_cli("report", run, "--no-bench", "--formats", "json,md,html", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    rep = _result(res)
    small, big = (src.stat().st_size, (run / "03-optimize" / "model.onnx").stat().st_size)
    arts = {a["label"]: a for a in rep["artifacts"]}
    assert arts["03-optimize/model.onnx"]["file_bytes"] == big and arts["01-convert/model.onnx"]["file_bytes"] == small
    (sc,) = rep["stage_changes"]
    row = next(r for r in sc["rows"] if r["key"] == "file_bytes")
    assert (row["before"], row["after"]) == (small, big)  # stat, not the summary's 2511 → 863
    md = (run / "report" / "report.md").read_text()
    art_row = next(ln for ln in md.splitlines() if ln.startswith("| `03-optimize/model.onnx` |"))
    assert f"{big / small:.2f}× larger" in art_row and "smaller" not in art_row
    assert re.search(rf"\| file\\?_bytes \| {small:,} \| {big:,} \| {big / small:.2f}× larger \|", md)
    assert f"{big / small:.2f}× larger" in (run / "report" / "report.html").read_text()


# ------------------------------------------------------------------ 4. no machine paths in what leaves the machine


def test_report_md_and_html_name_no_machine_path(xgb_run):
    home = os.path.expanduser("~")
    for name in ("md", "html"):
        text = xgb_run[name]
        for bad in ("/tmp", str(xgb_run["proj"]), os.path.realpath(xgb_run["proj"]), str(FIXTURES)):
            assert bad not in text, (name, bad)
        if home not in ("", "/"):
            assert home not in text, name
        assert not re.search(r"(?<![\w.])/(?:home|root|Users|var|private)/", text), name


def test_loose_report_paths_are_relative_to_its_folder(xgb_run, tmp_path):
    """Loose files: paths are shown relative to the report's folder (here the project), whatever the working
    directory; nothing of the machine's layout above it."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    (proj / "models").mkdir(parents=True)
    (proj / "data").mkdir()
    elsewhere.mkdir()
    shutil.copyfile(xgb_run["run"] / "01-convert" / "model.onnx", proj / "models" / "wine.onnx")
    np.savez(proj / "data" / "wine.npz", input=np.load(FIXTURES / "data" / "wine_test.npz")["x"].astype(np.float32))
    res = run_cli("report", proj / "models" / "wine.onnx", "--data", proj / "data" / "wine.npz", "--out", proj,
                  "--formats", "json,md,html", "--no-bench", "--json", cwd=elsewhere)
    assert res.code == 0, res.stderr[-2000:]
    rep = _result(res)
    assert rep["data"]["eval"] == "data/wine.npz" and rep["artifacts"][0]["path"] == "models/wine.onnx"
    for name in ("report.md", "report.html", "report.json"):
        text = (proj / name).read_text()
        assert str(tmp_path) not in text and "/tmp" not in text, name

"""The benches print what happened (issue #21): every cell from the run's own data, outputs checked before anything is
timed (a deliberately wrong artifact → the row is failed and gets no speed), and the two sides of every ratio timed
in interleaved paired rounds through onnxforge.timing. Each bench runs in its tiny mode (a few seconds of timing)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import helper, numpy_helper

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `bench` and `fixtures` are top-level folders of the checkout


def _scaled(model: onnx.ModelProto, output: str, factor: float = 1.5) -> onnx.ModelProto:
    """A deliberately wrong artifact: `output` multiplied by `factor` (the producer's tensor renamed, its other
    consumers rewired to the new name)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    raw = f"{output}__unscaled"
    for n in m.graph.node:
        n.output[:] = [raw if o == output else o for o in n.output]
        n.input[:] = [raw if i == output else i for i in n.input]
    m.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), f"{output}__factor"))
    m.graph.node.append(helper.make_node("Mul", [raw, f"{output}__factor"], [output]))
    return m


def _wrong_export(monkeypatch, framework: str, output: str) -> None:
    from onnxforge.registry import frontend

    cls = type(frontend(framework))
    real = cls.export
    monkeypatch.setattr(cls, "export", lambda self, *a, **k: _scaled(real(self, *a, **k), output))


@pytest.fixture
def measured(monkeypatch):
    """Every onnxforge.timing.measure call, by the qualified name of the timed callable."""
    from onnxforge import timing

    calls: list[str] = []
    real = timing.measure

    def spy(fn, **kw):
        calls.append(getattr(fn, "__qualname__", repr(fn)))
        return real(fn, **kw)

    monkeypatch.setattr(timing, "measure", spy)
    return calls


def _alternates(calls: list[str], sides: int, rounds: int) -> bool:
    """Round r times every side once; odd rounds in reversed order (so the two sides are interleaved)."""
    blocks = [calls[i * sides:(i + 1) * sides] for i in range(rounds)]
    return (len(calls) == sides * rounds and all(len(set(b)) == sides for b in blocks)
            and all(b == (blocks[0] if r % 2 == 0 else blocks[0][::-1]) for r, b in enumerate(blocks)))


# ------------------------------------------------------------------ tabular


def test_tabular_checks_then_times_interleaved(tmp_path, measured):
    from bench import bench_frontends_tabular as bt

    row = bt.bench_one("xgboost_classifier", tmp_path, batches=(1, 8), rounds=3, seconds=0.01)
    assert row["status"] == "ok" and all(c["pass"] for c in row["checks"].values())
    assert set(row["checks"]) == {"all rows", "timed call, batch 1", "timed call, batch 8"}
    assert row["ort_threads_applied"] and row["native_threads_applied"]  # read back, not assumed
    for n in (1, 8):
        s = row[f"samples_{n}"]
        assert len(s["onnxruntime"]) == len(s["native"]) == 3 and row[f"speed_{n}"]["rounds"] == 3
        assert row[f"inputs_{n}"] == f"input float32[{n}, 13]"
    assert _alternates(measured[:6], 2, 3) and _alternates(measured[6:], 2, 3), measured
    t = bt.table([row], (1, 8))
    assert t["rows"][0][2] == "ok" and "×" in t["rows"][0][7] and "3 paired rounds" in t["notes"]


def test_tabular_wrong_artifact_is_failed_and_not_timed(tmp_path, monkeypatch, measured):
    from bench import bench_frontends_tabular as bt

    _wrong_export(monkeypatch, "xgboost", "probabilities")
    row = bt.bench_one("xgboost_classifier", tmp_path, batches=(1, 8), rounds=3, seconds=0.01)
    assert row["status"].startswith("failed: outputs differ") and "probabilities" in row["status"]
    assert measured == [] and "speed_1" not in row  # nothing timed
    cells = bt.table([row], (1, 8))["rows"][0]
    assert cells[2].startswith("failed") and not any("×" in str(c) for c in cells)


# ------------------------------------------------------------------ deep learning


def test_dl_checks_then_times_interleaved(tmp_path, measured):
    from bench import bench_frontends_dl as bd

    row = bd.bench_one("torch_mlp", tmp_path, batches=(1, 4), rounds=3, seconds=0.01)
    assert row["status"] == "ok"
    assert {"all rows", "torch no_grad, batch 1", "torch no_grad, batch 4"} == set(row["checks"])
    assert row["native_threads_applied"] and row["ort_threads_applied"]
    assert row["inputs_4"] == "x float32[4, 64]"
    for n in (1, 4):
        assert len(row[f"samples_{n}"]["onnxruntime"]) == len(row[f"samples_{n}"]["torch no_grad"]) == 3
    assert _alternates(measured[:6], 2, 3) and _alternates(measured[6:], 2, 3), measured


def test_dl_wrong_artifact_is_failed_and_not_timed(tmp_path, monkeypatch, measured):
    from bench import bench_frontends_dl as bd

    _wrong_export(monkeypatch, "torch", "logits")
    row = bd.bench_one("torch_mlp", tmp_path, batches=(1, 4), rounds=3, seconds=0.01)
    assert row["status"].startswith("failed: outputs differ") and "logits" in row["status"]
    assert measured == [] and "speed_1" not in row
    cells = bd.table([row], (1, 4))["rows"][0]
    assert cells[1].startswith("failed") and not any("×" in str(c) for c in cells)


# ------------------------------------------------------------------ quantize / optimize


@pytest.fixture(scope="module")
def digits():
    te, tr = np.load(ROOT / "fixtures/data/digits_test.npz"), np.load(ROOT / "fixtures/data/digits_train.npz")
    return {k: te[k] for k in te.files}, {k: tr[k] for k in tr.files}


def test_quantize_auto_row_is_the_stage_measured_with_the_others(tmp_path, monkeypatch, digits):
    """The stage's shipped file is timed in the same perf.latency call as the candidates, calibrated on the same
    rows; its cells come from its summary."""
    from bench import bench_quantize_optimize as bq
    from onnxforge.stages.optimize import perf
    from onnxforge.stages.quantize import int8

    test, train = digits
    stages, latency_calls, calibs = [], [], []
    real_stage, real_latency, real_init = bq._stage, perf.latency, int8.Int8Builder.__init__

    def stage(name, model, out, opts, data):
        got = real_stage(name, model, out, opts | {"allow_slower": True}, data)  # ship whatever it measures
        stages.append((name, opts, data, got))
        return got

    def latency(models, *a, **k):
        latency_calls.append(list(models))
        return real_latency(models, *a, **k)

    def init(self, pre, work, config, calibration=None, *a, **k):
        if calibration is not None:
            calibs.append(calibration.feeds)
        real_init(self, pre, work, config, calibration, *a, **k)

    monkeypatch.setattr(bq, "_stage", stage)
    monkeypatch.setattr(perf, "latency", latency)
    monkeypatch.setattr(int8.Int8Builder, "__init__", init)
    t = bq._quantize_table(tmp_path, test, train, quick=True)
    (_, opts, data, got), = stages
    assert got["exit"] == 0, got["message"]
    shipped = f"onnxforge quantize auto → {got['summary']['chosen']}"
    # one measurement: the shipped file among the candidates
    assert [m for m in latency_calls if "FP32" in m] == [["FP32", "static QDQ u8s8 per-tensor", "dynamic s8 per-tensor", shipped]]
    auto = next(d for d in t["data"] if d.get("config") == shipped)
    fp32 = next(d for d in t["data"] if d.get("config") == "FP32")
    assert len(auto["samples_ms"]["batch1"]) == len(fp32["samples_ms"]["batch1"]) == 2
    # one calibration sample: the bench's candidates and the stage's (which takes the file's rows in its own seeded
    # order: the same rows) calibrate on what the stage was given, all of it
    given = np.load(data["calibration"])["x"]
    rows = lambda a: a.reshape(len(a), -1)[np.lexsort(a.reshape(len(a), -1).T)]  # noqa: E731 — order aside
    assert len(calibs) >= 3  # the bench's two candidates and the stage's builders
    assert all(np.array_equal(rows(c["x"]), rows(given)) for c in calibs) and len(given) == opts["calibration_rows"]
    assert got["summary"]["calibration"]["rows"] == len(given)
    row = next(r for r in t["rows"] if r[1] == shipped)
    assert "exit 0, shipped" in row[-1] and row[2] == auto["bytes"] and "×" in row[5]


def test_quantize_stage_failure_is_shown_as_it_happened(tmp_path, monkeypatch, digits):
    from bench import bench_quantize_optimize as bq

    test, train = digits
    monkeypatch.setattr(bq, "_stage", lambda *a, **k: {"exit": 1, "summary": {}, "output": None,
                                                        "message": "quantize: injected refusal for the test"})
    t = bq._quantize_table(tmp_path, test, train, quick=True)
    row = next(r for r in t["rows"] if r[1] == "onnxforge quantize auto")
    assert row[-1] == "exit 1, no model: quantize: injected refusal for the test"
    assert row[2:-1] == ["—"] * 8  # no size, speed or accuracy for a model that does not exist
    monkeypatch.setattr(bq, "_stage", lambda *a, **k: {"exit": 2, "summary": {}, "output": None,
                                                        "message": "quantize: bad input (injected)"})
    (tmp_path / "b").mkdir()
    t = bq._quantize_table(tmp_path / "b", test, train, quick=True)
    assert next(r for r in t["rows"] if r[1] == "onnxforge quantize auto")[-1].startswith("exit 2, no model")


def test_optimize_cells_from_the_run(tmp_path, monkeypatch, digits):
    """Tool versions come from the installed packages; a stage that fails and a variant whose outputs differ are
    rows that say so, untimed."""
    import importlib.metadata

    from bench import bench_quantize_optimize as bq
    from onnxforge.stages.optimize import passes, perf

    test, _ = digits
    real_version, real_stage, real_ort, real_latency = (importlib.metadata.version, bq._stage, passes.ort_level,
                                                        perf.latency)
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda d: "9.9.9-test" if d == "onnxsim" else real_version(d))

    def stage(name, model, out, opts, data):
        if opts.get("portable"):
            return {"exit": 3, "summary": {}, "output": None, "message": "internal error: injected"}
        return real_stage(name, model, out, opts, data)

    def wrong_ort(src, dst, level):  # ORT extended writes a wrong model
        real_ort(src, dst, level)
        onnx.save(_scaled(onnx.load(str(dst)), "logits"), str(dst))

    timed = []
    monkeypatch.setattr(bq, "_stage", stage)
    monkeypatch.setattr(passes, "ort_level", wrong_ort)
    monkeypatch.setattr(perf, "latency", lambda models, *a, **k: timed.append(list(models)) or real_latency(
        models, *a, **k))
    t = bq._optimize_table(tmp_path, test, quick=True)
    assert "onnxsim 9.9.9-test" in t["notes"] and "0.8.1" not in t["notes"]
    rows = {r[1]: r for r in t["rows"]}
    assert rows["onnxforge optimize --portable"][-1] == "failed: exit 3: internal error: injected"
    assert rows["ORT extended"][-1].startswith("failed: outputs differ from the input's")
    ours = [m for m in timed if "onnxsim" in m]  # the optimize stage's own timing aside (it never runs onnxsim)
    assert ours == [["input", "onnxslim", "onnxsim", "onnxforge optimize"]] * 2  # as written, ORT all
    assert "·" in rows["onnxforge optimize"][4] and "×" in rows["onnxforge optimize"][4]


# ------------------------------------------------------------------ third-party corpus


def _corpus_entry(name: str) -> dict:
    import corpus

    built = {e["name"]: e for e in corpus.entries()}
    if name not in built:
        pytest.skip(f"corpus model {name} not built in {corpus.cache_dir()} (make corpus)")
    return built[name]


def _fake_cli(made: dict):
    """bench_corpus._cli without the subprocesses: writes each command's -o file as `made[kind](src)` returns it
    (a ModelProto, or an (exit code, message) pair for a failing command). kind: optimize, portable, quantize."""
    def cli(*args):
        args = [str(a) for a in args]
        kind = "portable" if "--portable" in args else args[0]
        got = made[kind](onnx.load(args[1]))
        if isinstance(got, tuple):
            return got
        onnx.save(got, args[args.index("-o") + 1])
        return 0, ""
    return cli


def test_corpus_checks_every_variant_then_times_interleaved(tmp_path, monkeypatch, measured):
    from bench import bench_corpus as bc

    e = _corpus_entry("oww_hey_jarvis")
    monkeypatch.setattr(bc, "_cli", _fake_cli({k: lambda m: m for k in ("optimize", "portable", "quantize")}))
    r = bc.bench_one(e, tmp_path, rounds=2, seconds=0.01)
    assert r["status"] == "ok" and r["failed"] == {}, r["failed"]
    assert set(r["checks"]) == {"onnxslim", "ort_extended", "onnxforge", "portable", "quantized"}
    assert all(c["pass"] for c in r["checks"].values()) and "rel_error" in r["quant_fidelity"]["53"]
    assert all(t["applied"] and t["os_threads_started"] == 0 for t in r["threads"].values())  # read back
    assert "intra-op 1, inter-op 1 (read back)" in r["threads"]["original"]["read_back"]
    assert r["inputs"] == "synthetic (seeded, x.1 uniform -1…1): x.1 float32[1, 16, 96]"
    # each round runs the original and every variant once; odd rounds in reverse order
    assert _alternates(measured, 6, 2) and measured[0] == "run original", measured
    assert all(len(v) == 2 for v in r["samples_ms"].values()) and r["speed"]["quantized"]["rounds"] == 2
    cells = bc.table([r])["rows"][0]
    assert all("×" in c for c in cells[9:14]) and cells[15].startswith("rel err"), cells


def test_corpus_wrong_variant_is_failed_and_not_timed(tmp_path, monkeypatch, measured):
    from bench import bench_corpus as bc

    e = _corpus_entry("oww_hey_jarvis")
    out = onnx.load(e["file"]).graph.output[0].name
    monkeypatch.setattr(bc, "_cli", _fake_cli({
        "optimize": lambda m: _scaled(m, out),  # a wrong optimized model
        "portable": lambda m: (3, "internal error: injected"),  # a command that fails
        "quantize": lambda m: _scaled(m, out, float("nan"))}))  # a quantized model with non-finite outputs
    real_ext = bc._ort_extended
    monkeypatch.setattr(bc, "_ort_extended", lambda s, d: onnx.save(_scaled(onnx.load(str(real_ext(s, d))), out,
                                                                             1.0001), str(d)) or d)  # within tol
    r = bc.bench_one(e, tmp_path, rounds=2, seconds=0.01)
    assert r["failed"]["onnxforge"].startswith("outputs differ from the original's: 53:")
    assert r["failed"]["portable"] == "exit 3: injected"
    assert r["failed"]["quantized"] == "outputs unusable: 53: non-finite values"
    assert "ort_extended" not in r["failed"] and r["checks"]["ort_extended"]["max_abs"] > 0
    assert set(measured) == {"run original", "run onnxslim", "run ort_extended"}, measured  # the rest untimed
    assert set(r["speed"]) == {"onnxslim", "ort_extended"}
    cells = dict(zip(bc.table([r])["columns"], bc.table([r])["rows"][0], strict=True))
    assert cells["× onnxforge"] == "failed: outputs differ" and cells["× portable"] == "failed: not produced"
    assert cells["× quantized"] == "failed: outputs unusable" and cells["quant fidelity"] == "—"
    assert "onnxforge: outputs differ" in cells["failures"] and "portable: exit 3" in cells["failures"]
    assert "×" in cells["× ORT ext"] and cells["onnxforge"] == 34  # the (wrong) file was made: its nodes are a fact


# ------------------------------------------------------------------ transformer


def _encoder(path, table: np.ndarray) -> str:
    """A stand-in sentence encoder with the bench's interface: sentence_embedding = mean over tokens of
    table[input_ids] (attention_mask and token_type_ids are inputs it ignores)."""
    ids = [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["tok"]),
         helper.make_node("ReduceMean", ["tok", "axes"], ["sentence_embedding"], keepdims=0)], "enc", ids,
        [helper.make_tensor_value_info("sentence_embedding", onnx.TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(table.astype(np.float32), "table"), numpy_helper.from_array(np.array([1]), "axes")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _tokens(rows: int, seq: int, seed: int) -> dict:
    ids = np.random.default_rng(seed).integers(0, 50, (rows, seq))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_transformer_checks_then_times_interleaved(tmp_path, measured):
    from bench import bench_transformer as bt

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8))
    models = {"fp32 dynamo (ORT all)": _encoder(tmp_path / "ref.onnx", table),
              "fp32 dynamo+optimize": _encoder(tmp_path / "same.onnx", table + 1e-6),  # within optimize's tolerance
              "fp32 torchscript (ORT all)": _encoder(tmp_path / "wrong.onnx", table[::-1]),  # a wrong fp32 variant
              "int8 noisy": _encoder(tmp_path / "noisy.onnx", table + 0.3 * rng.standard_normal((50, 8))),
              "int8 broken": _encoder(tmp_path / "nan.onnx", np.full((50, 8), np.nan))}
    res = bt.compare_and_time(models, "fp32 dynamo (ORT all)", _tokens(12, 9, 1), {1: _tokens(1, 64, 2),
                                                                                   4: _tokens(4, 64, 3)},
                              rounds=3, seconds=0.01)
    st = res["status"]
    assert st["fp32 dynamo+optimize"] == "ok: matches fp32 dynamo (ORT all)"
    assert st["fp32 torchscript (ORT all)"].startswith("failed: outputs differ from fp32 dynamo (ORT all) — held-out")
    assert st["int8 broken"] == ("failed: outputs unusable — held-out: non-finite values; batch 1: non-finite "
                                 "values; batch 4: non-finite values")
    lo = res["fidelity_heldout"]["int8 noisy"]["min_cosine"]
    assert lo < 0.99 and st["int8 noisy"] == f"BELOW budget: min cos {lo:.3g} < 0.99"  # reported, and timed
    timed = ["run fp32 dynamo (ORT all)", "run fp32 dynamo+optimize", "run int8 noisy"]
    assert measured[:3] == timed and _alternates(measured[:9], 3, 3) and _alternates(measured[9:], 3, 3), measured
    assert res["threads_applied"] and all(t["os_threads_started"] == 0 for t in res["threads"].values())
    assert res["timing_inputs"]["batch4"] == "input_ids int64[4, 64], attention_mask int64[4, 64], " \
                                             "token_type_ids int64[4, 64]"
    best = res["best_fp32"]
    assert best in ("fp32 dynamo (ORT all)", "fp32 dynamo+optimize") and res["speed_vs_best_fp32"][best] is None
    other = "fp32 dynamo+optimize" if best == "fp32 dynamo (ORT all)" else "fp32 dynamo (ORT all)"
    assert res["speed_vs_best_fp32"][other]["batch4"]["rounds"] == 3
    res |= {"nodes": {}, "inputs": {"fidelity": "f", "timing": "t"}}
    rows = {r[0]: r for r in bt.table(res)["rows"]}
    assert rows["fp32 torchscript (ORT all)"][3:7] == ["—"] * 4 and rows["int8 broken"][3:7] == ["—"] * 4
    assert "×" in rows[other][4] and "×" in rows["int8 noisy"][6] and rows[best][4] == "1 (baseline)"

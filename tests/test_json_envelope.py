"""--json: every command answers with one envelope {ok, exit_code, command, result, warnings[, error]} on stdout —
on success, on a failed check (1), on bad input (2) and on a usage error — valid against the packaged
onnxforge/schemas/envelope.schema.json; -h works everywhere; the pipeline schema has an $id and describes every
property. Every CLI call runs once, in a module fixture, two at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import ROOT, run_cli
from onnx_models import PIPELINE, linear, save, write_data

STAGE_COMMANDS = {"convert", "validate", "quantize", "optimize"}


def _cases(d: Path) -> dict[str, tuple[tuple, int, str]]:
    """case → (argv, expected exit code, expected envelope command)."""
    lin, pert, data = d / "lin.onnx", d / "pert.onnx", d / "data.npz"
    return {
        "run-ok": (("run", d / "p.yaml", "--json"), 0, "run"),
        "run-check-failed": (("run", d / "fail.yaml", "--json"), 1, "run"),
        "run-missing-config": (("run", d / "nope.yaml", "--json"), 2, "run"),
        "run-remeasure-and-locked": (("run", d / "p.yaml", "--remeasure", "--locked", "--json"), 2, "run"),
        "convert-ok": (("convert", "--framework", "onnx", "--model", lin, "-o", d / "out/conv.onnx", "--json"), 0,
                       "convert"),
        "convert-no-output": (("convert", "--framework", "onnx", "--model", lin, "--json"), 2, "convert"),
        "validate-ok": (("validate", lin, "--against", "onnx-reference", "--data", data, "--json"), 0, "validate"),
        "validate-mismatch": (("validate", pert, "--against", lin, "--data", data, "--json"), 1, "validate"),
        "validate-missing-model": (("validate", d / "nope.onnx", "--json"), 2, "validate"),
        "validate-bad-flag-value": (("validate", lin, "--rtol", "tight", "--json"), 2, "validate"),
        "quantize-ok": (("quantize", lin, "-o", d / "out/q.onnx", "--mode", "fp16", "--data", data,
                         "--set", "latency_rounds=1", "--set", "batch_sizes=[1]", "--json"), 0, "quantize"),
        "quantize-no-output": (("quantize", lin, "--mode", "fp16", "--json"), 2, "quantize"),
        "quantize-remeasure-and-locked": (("quantize", lin, "-o", d / "out/q2.onnx", "--remeasure", "--locked",
                                           "--json"), 2, "quantize"),
        "optimize-ok": (("optimize", lin, "-o", d / "out/o.onnx", "--data", data, "--set", "latency_rounds=1",
                         "--set", "batch_sizes=[1]", "--json"), 0, "optimize"),
        "optimize-missing-model": (("optimize", d / "nope.onnx", "-o", d / "out/o2.onnx", "--json"), 2, "optimize"),
        "inspect-ok": (("inspect", lin, "--json"), 0, "inspect"),
        "compile-ok": (("compile", lin, "--target", "ort-mobile", "-o", d / "out/mobile", "--data", data, "--json"), 0,
                       "compile"),
        "inspect-missing-model": (("inspect", d / "nope.onnx", "--json"), 2, "inspect"),
        "predict-ok": (("predict", lin, "--input", d / "x.npz", "-o", d / "out/y.npz", "--json"), 0, "predict"),
        "predict-missing-input": (("predict", lin, "--input", d / "nope.npz", "-o", d / "out/y2.npz", "--json"), 2,
                                  "predict"),
        "report-ok": (("report", lin, "--no-bench", "--formats", "json", "--out", d / "out/rep", "--json"), 0,
                      "report"),
        "report-missing-target": (("report", d / "nope.onnx", "--no-bench", "--out", d / "out/rep2", "--json"), 2,
                                  "report"),
        "bench-ok": (("bench", lin, "--batch", "1", "--runs", "3", "--json"), 0, "bench"),
        # serve answers until SIGTERM: its envelope is what a refused start prints (a running server logs instead)
        "serve-missing-target": (("serve", d / "nope.onnx", "--port", "0", "--json"), 2, "serve"),
        "bench-zero-runs": (("bench", lin, "--runs", "0", "--json"), 2, "bench"),
        "config-check-ok": (("config", "check", d / "p.yaml", "--json"), 0, "config check"),
        "config-check-unknown-key": (("config", "check", d / "bad.yaml", "--json"), 2, "config check"),
        "config-schema-ok": (("config", "schema", "--json"), 0, "config schema"),
        "config-schema-envelope": (("config", "schema", "--envelope", "--json"), 0, "config schema"),
        "config-schema-unknown-option": (("config", "schema", "--bogus", "--json"), 2, "config schema"),
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("envelope")
    save(linear(), d / "lin.onnx")
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    w[2, 1] += 0.05  # one perturbed weight: validate against lin.onnx fails
    save(linear(w, b), d / "pert.onnx")
    write_data(d / "data.npz")
    np.savez(d / "x.npz", x=np.load(d / "data.npz")["x"])
    (d / "p.yaml").write_text(PIPELINE.format(name="lin", model="lin.onnx", data="data.npz"))
    (d / "fail.yaml").write_text(PIPELINE.format(name="pert", model="pert.onnx", data="data.npz")
                                 + "    against: lin.onnx\n")
    (d / "bad.yaml").write_text("name: a\nsource: {framework: onnx, path: lin.onnx}\nbogus: 1\n")
    (d / "out").mkdir()
    cases = _cases(d)
    with ThreadPoolExecutor(2) as pool:  # two cores: two CLI processes at a time
        futures = {name: pool.submit(run_cli, *argv, cwd=d) for name, (argv, _, _) in cases.items()}
        return {name: (f.result(), cases[name][1], cases[name][2]) for name, f in futures.items()}


def _schema() -> dict:
    return json.loads(files("onnxforge").joinpath("schemas/envelope.schema.json").read_text())


@pytest.mark.parametrize("case", list(_cases(Path("."))))
def test_every_command_answers_with_one_valid_envelope(ran, case):
    res, code, command = ran[case]
    assert res.code == code, (case, res.code, res.stderr[-1500:])
    doc = json.loads(res.stdout)  # the whole of stdout is one JSON document
    jsonschema.Draft202012Validator(_schema()).validate(doc)
    assert doc["exit_code"] == res.code and doc["ok"] is (res.code == 0) and doc["command"] == command
    if code:  # the same one line as on stderr
        assert doc["error"][:40] in " ".join(res.stderr.split()), (doc["error"], res.stderr)
    if code == 2:
        assert doc["result"] is None
    if command in STAGE_COMMANDS and doc["result"] is not None:
        assert doc["result"]["stage"] == command


def test_stage_results_share_one_shape(ran):
    ok = ran["quantize-ok"][0].json()["result"]
    assert ok["verdict"] == "pass" and Path(ok["model"]).name == "q.onnx" and Path(ok["model"]).is_file()
    assert ok["summary"]["mode"] == "fp16"
    failed = ran["validate-mismatch"][0].json()
    assert failed["result"]["verdict"] == "fail" and failed["result"]["model"] is None
    assert failed["result"]["summary"]["failing"] == ["y"] and "validation failed for y" in failed["error"]
    assert ran["validate-ok"][0].json()["result"]["summary"]["comparisons"]


def test_results_and_errors_name_what_happened(ran):
    run = ran["run-ok"][0].json()["result"]
    assert [s["name"] for s in run["stages"]] == ["convert", "validate"] and run["verdict"] == "pass"
    failed = ran["run-check-failed"][0].json()
    assert failed["result"]["verdict"] == "fail" and "stage validate failed" in failed["error"]
    assert "--remeasure and --locked" in ran["run-remeasure-and-locked"][0].json()["error"]
    assert "--remeasure and --locked" in ran["quantize-remeasure-and-locked"][0].json()["error"]
    assert "'--rtol'" in ran["validate-bad-flag-value"][0].json()["error"]
    assert "did you mean" in ran["config-check-unknown-key"][0].json()["error"] or \
        "bogus" in ran["config-check-unknown-key"][0].json()["error"]
    assert ran["config-check-ok"][0].json()["result"]["stages"] == ["convert", "validate"]
    assert ran["inspect-ok"][0].json()["result"]["inputs"][0]["name"] == "x"
    assert ran["predict-ok"][0].json()["result"]["rows"] == 40
    assert ran["bench-ok"][0].json()["result"]["results"]
    assert ran["report-ok"][0].json()["result"]["schema"] == "onnxforge.report"
    assert ran["config-schema-ok"][0].json()["result"]["$id"].endswith("/pipeline.schema.json")
    assert ran["config-schema-envelope"][0].json()["result"] == _schema()


def test_envelope_schema_is_valid_and_lists_every_command():
    import typer
    from typer.testing import CliRunner

    from onnxforge import envelope
    from onnxforge.cli import app

    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == envelope.SCHEMA_ID and schema["$schema"].endswith("/2020-12/schema")

    def names(group, prefix=""):
        for name, cmd in group.commands.items():
            yield from (names(cmd, f"{prefix}{name} ") if hasattr(cmd, "commands") else [f"{prefix}{name}"])

    cli_commands = set(names(typer.main.get_command(app)))
    assert cli_commands == set(schema["properties"]["command"]["enum"]) == set(envelope.COMMANDS)
    assert cli_commands == {c for _, _, c in _cases(Path(".")).values()}  # every command is exercised above
    plain = CliRunner().invoke(app, ["config", "schema", "--envelope"])  # without --json: the schema itself
    assert plain.exit_code == 0 and json.loads(plain.stdout) == schema


def test_stdout_holds_only_the_envelope_whatever_the_body_prints(tmp_path):
    """Python prints, native writes to file descriptor 1 and C stdio all land on stderr; warnings are collected."""
    script = textwrap.dedent("""
        import ctypes, os, sys, warnings
        import typer
        from onnxforge.cli import command

        app = typer.Typer()

        @app.command()
        @command(name="noisy")
        def noisy(as_json: bool = typer.Option(False, "--json"), debug: bool = False):
            print("python print")
            os.write(1, b"native write\\n")
            ctypes.CDLL(None).printf(b"c printf\\n")
            warnings.warn("something odd", UserWarning)
            warnings.warn("something odd", UserWarning)
            return {"summary": {"warnings": ["from the summary"]}, "value": float("nan")}

        app()
    """)
    p = subprocess.run([sys.executable, "-c", script, "--json"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["command"] == "noisy" and doc["result"]["value"] is None  # NaN is no JSON: null
    assert doc["warnings"] == ["UserWarning: something odd", "from the summary"]
    for text in ("python print", "native write", "c printf"):
        assert text in p.stderr and text not in p.stdout


def test_help_everywhere():
    from typer.testing import CliRunner

    from onnxforge.cli import app

    runner = CliRunner()
    for argv in ([], ["config"], ["run"], ["convert"], ["validate"], ["quantize"], ["optimize"], ["inspect"],
                 ["predict"], ["report"], ["bench"], ["config", "check"], ["config", "schema"]):
        res = runner.invoke(app, [*argv, "-h"])
        assert res.exit_code == 0 and "Usage:" in res.output and "-h, --help" in res.output, (argv, res.output)
    res = run_cli("config", "check", "-h")  # the real entry point too
    assert res.code == 0 and "Usage:" in res.stdout


def test_new_flags_are_on_the_commands():
    from typer.testing import CliRunner

    from onnxforge.cli import app

    runner = CliRunner()
    for argv in (["run"], ["convert"], ["validate"], ["quantize"], ["optimize"]):
        text = runner.invoke(app, [*argv, "-h"]).output
        assert "--remeasure" in text and "--locked" in text, argv
    for argv in (["quantize"], ["optimize"]):
        assert "--require-faster" in runner.invoke(app, [*argv, "-h"]).output


def _undescribed(schema: dict) -> list[str]:
    """DefName.property for every property without a description, anywhere in the schema."""
    missing: list[str] = []

    def walk(node, owner: str) -> None:
        if isinstance(node, dict):
            for key, prop in (node.get("properties") or {}).items():
                if not (isinstance(prop, dict) and str(prop.get("description", "")).strip()):
                    missing.append(f"{owner}.{key}")
                walk(prop, owner)
            for k, v in node.items():
                if k == "$defs":
                    for name, sub in v.items():
                        walk(sub, name)
                elif k != "properties":
                    walk(v, owner)
        elif isinstance(node, list):
            for v in node:
                walk(v, owner)

    walk(schema, "Pipeline")
    return sorted(set(missing))


def test_pipeline_schema_has_an_id_and_describes_every_property():
    from onnxforge.config import json_schema

    schema = json_schema()
    assert schema["$id"] == "https://onnxforge.dev/schemas/pipeline.schema.json"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["description"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert _undescribed(schema) == []

"""Foundation: config errors, exit codes, cache, byte-identical reruns, atomic writes, --json, inspect, schema."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error
from onnx_models import PIPELINE, broken, linear, save, write_data

from onnxforge.artifact import save_model, sha256_file
from onnxforge.errors import CheckFailed


@pytest.fixture
def project(tmp_path: Path) -> Path:
    save(linear(), tmp_path / "lin.onnx")
    write_data(tmp_path / "data.npz")
    (tmp_path / "p.yaml").write_text(PIPELINE.format(name="lin", model="lin.onnx", data="data.npz"))
    return tmp_path


def test_run_writes_manifest_and_is_cached_then_forced(project, cli):
    first = cli("run", project / "p.yaml", "--json")
    assert first.code == 0, first.stderr
    manifest = json.loads((project / "runs/lin/manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["convert", "validate"]
    assert all(s["status"] == "ran" and s["verdict"] == "pass" for s in manifest["stages"])
    conv = manifest["stages"][0]
    assert conv["outputs"]["01-convert/model.onnx"] == sha256_file(project / "runs/lin/01-convert/model.onnx")
    assert manifest["versions"]["onnxruntime"] and manifest["final_model"] == "01-convert/model.onnx"
    assert first.json()["result"]["verdict"] == "pass"

    second = cli("run", project / "p.yaml", "--json")
    assert [s["status"] for s in second.json()["result"]["stages"]] == ["cached", "cached"]
    forced = cli("run", project / "p.yaml", "--force", "--json")
    assert [s["status"] for s in forced.json()["result"]["stages"]] == ["ran", "ran"]

    # a changed stage option reruns that stage only; a changed source reruns everything
    cfg = (project / "p.yaml").read_text().replace("batch_sizes: [1, 0]", "batch_sizes: [0]")
    (project / "p.yaml").write_text(cfg)
    third = cli("run", project / "p.yaml", "--json")
    assert [s["status"] for s in third.json()["result"]["stages"]] == ["cached", "ran"]


def test_rerun_from_scratch_is_byte_identical(project, cli):
    assert cli("run", project / "p.yaml").code == 0
    a = (project / "runs/lin/01-convert/model.onnx").read_bytes()
    assert cli("run", project / "p.yaml", "--force", fresh=True).code == 0  # another hash seed than the first's
    assert (project / "runs/lin/01-convert/model.onnx").read_bytes() == a


def test_converted_onnx_is_stamped(project, cli):
    assert cli("run", project / "p.yaml").code == 0
    info = cli("inspect", project / "runs/lin/01-convert/model.onnx", "--json").json()["result"]
    meta = info["metadata"]
    assert meta["onnxforge.source.framework"] == "onnx"
    assert json.loads(meta["onnxforge.source.sha256"])["lin.onnx"] == sha256_file(project / "lin.onnx")
    assert info["ops"] == {"MatMul": 1, "Add": 1, "ArgMax": 1} and info["params"] == 15
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: a\nsource: {framework: onnx, path: lin.onnx}\nstages:\n  validate:\n    rtoll: 1\n",
         "p.yaml:5: unknown key 'rtoll' in stages.validate — did you mean 'rtol'?"),
        ("name: a\nsource: {framework: onnx, path: lin.onnx}\nstagez: {}\n", "did you mean 'stages'?"),
        ("name: a\nsource: {framework: onxx, path: lin.onnx}\n", "unknown framework 'onxx' — did you mean 'onnx'?"),
        ("name: a\nsource: {framework: onnx, path: lin.onnx}\nstages:\n  validate:\n    rtol: lots\n",
         "p.yaml:5: stages.validate.rtol"),
        ("name: a\nsource: {framework: onnx, path: lin.onnx}\nstages:\n  compil: {}\n", "unknown key 'compil'"),
        ("source: {framework: onnx, path: lin.onnx}\n", "missing required key 'name'"),
        ("name: a\nsource: !!python/object:os.system {}\n", "invalid YAML"),
        ("name: [a\n", "invalid YAML"),
    ],
)
def test_config_errors_are_one_line_exit_2(project, cli, text, needle):
    (project / "p.yaml").write_text(text)
    line = assert_one_line_error(cli("run", project / "p.yaml"), 2)
    assert needle in line, line
    assert not (project / "runs").exists()


def test_unknown_until_stage_writes_nothing(project, cli):
    line = assert_one_line_error(cli("run", project / "p.yaml", "--until", "quantize"))
    assert "stage 'quantize' is not in the config's stages (convert, validate)" in line
    assert not (project / "runs").exists()


def test_missing_files_exit_2(project, cli):
    assert "config file not found" in assert_one_line_error(cli("run", project / "nope.yaml"))
    (project / "p.yaml").write_text(PIPELINE.format(name="x", model="missing.onnx", data="data.npz"))
    assert "missing.onnx not found" in assert_one_line_error(cli("run", project / "p.yaml"))
    (project / "p.yaml").write_text(PIPELINE.format(name="x", model="lin.onnx", data="missing.npz"))
    assert "data.path: " in assert_one_line_error(cli("run", project / "p.yaml"))
    assert not (project / "runs").exists()


def test_wrong_dtype_in_data_exit_2(project, cli):
    np.savez(project / "data.npz", x=np.array([["a"] * 4] * 3))
    assert "expects float32 but the data holds strings" in assert_one_line_error(cli("run", project / "p.yaml"))


def test_pickled_data_is_refused(project, cli):
    np.save(project / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = assert_one_line_error(cli("validate", project / "lin.onnx", "--data", project / "obj.npy"))
    assert "pickled object arrays" in line


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_exit_2(project, cli, damage):
    p = project / "lin.onnx"
    raw = p.read_bytes()
    p.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\x00not a model\xff" * 10, "empty": b""}[damage])
    line = assert_one_line_error(cli("inspect", p))
    assert "not a readable ONNX model" in line
    assert "not a readable ONNX model" in assert_one_line_error(cli("run", project / "p.yaml"))


def test_save_model_is_atomic_and_checked(tmp_path):
    target = tmp_path / "out.onnx"
    with pytest.raises(CheckFailed, match="onnx.checker failed"):
        save_model(broken(), target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous good artifact")
    with pytest.raises(CheckFailed):
        save_model(broken(), target)
    assert target.read_bytes() == b"previous good artifact"  # never half-replaced
    save_model(linear(), target)
    assert onnx.load(str(target)).graph.name == "linear" and len(list(tmp_path.iterdir())) == 1


def test_failing_stage_leaves_no_artifact(project, cli):
    # opset 3 cannot express the model: the convert stage fails before anything is written
    text = PIPELINE.format(name="lin", model="lin.onnx", data="data.npz").replace("convert: {}",
                                                                                  "convert: {opset: 7}")
    assert cli("run", project / "p.yaml").code == 0  # a good first run: the run folder stays
    assert (project / "runs/lin/01-convert/model.onnx").is_file()
    (project / "p.yaml").write_text(text)
    save(broken(), project / "lin.onnx")
    res = cli("run", project / "p.yaml")
    assert res.code == 2, res.stderr
    assert not (project / "runs/lin/01-convert").exists()  # not even the earlier run's model, which no longer fits
    manifest = json.loads((project / "runs/lin/manifest.json").read_text())
    assert manifest["verdict"] == "error" and manifest["stages"][0]["status"] == "error"
    shutil.rmtree(project / "runs")
    assert cli("run", project / "p.yaml").code == 2
    assert not (project / "runs").exists()  # refused on a first run: no run folder at all


def test_stage_alone_never_overwrites_input(project, cli):
    res = cli("validate", project / "lin.onnx", "--data", project / "data.npz", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["verdict"] == "pass"
    before = sha256_file(project / "lin.onnx")
    res = cli("convert", "--framework", "onnx", "--model", project / "lin.onnx", "-o", project / "lin.onnx")
    assert res.code == 2 and "never overwritten" in res.stderr
    assert sha256_file(project / "lin.onnx") == before


def test_convert_alone_with_flags(project, cli):
    out = project / "out" / "m.onnx"
    res = cli("convert", "--framework", "onnx", "--model", project / "lin.onnx", "-o", out, "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["model"] == str(out) and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]  # no temp folders left behind


def test_json_outputs_parse(project, cli):
    for args in (("config", "check", project / "p.yaml", "--json"), ("inspect", project / "lin.onnx", "--json"),
                 ("run", project / "p.yaml", "--json")):
        res = cli(*args)
        assert res.code == 0, res.stderr
        json.loads(res.stdout)
    (project / "bad.yaml").write_text("name: a\nsource: {framework: onnx}\nbogus: 1\n")
    res = cli("config", "check", project / "bad.yaml", "--json")
    assert res.code == 2 and json.loads(res.stdout)["exit_code"] == 2


def test_schema_is_valid_and_matches_configs(project, cli):
    import jsonschema
    import yaml

    schema = cli("config", "schema").json()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load((project / "p.yaml").read_text()))
    assert list(validator.iter_errors({"name": "a", "source": {"framework": "onnx"}, "bogus": 1}))
    repo_configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    for cfg in repo_configs:
        assert cli("config", "check", cfg).code == 0, cfg


def test_inspect_external_data(tmp_path, cli):
    m = linear()
    from onnx.external_data_helper import convert_model_to_external_data

    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    onnx.save(m, str(tmp_path / "ext.onnx"))
    info = cli("inspect", tmp_path / "ext.onnx", "--json").json()["result"]
    assert info["params"] == 15
    assert info["file_bytes"] == os.path.getsize(tmp_path / "ext.onnx") + os.path.getsize(tmp_path / "ext.onnx.data")


def test_internal_error_is_exit_3_without_traceback():
    import typer
    from typer.testing import CliRunner

    from onnxforge.cli import command

    app = typer.Typer()

    @app.command()
    @command
    def boom(debug: bool = False):
        raise RuntimeError("kaput")

    res = CliRunner().invoke(app, [])
    assert res.exit_code == 3
    assert "internal error: RuntimeError: kaput — rerun with --debug" in res.output
    assert "Traceback" not in res.output
    assert CliRunner().invoke(app, ["--debug"]).exit_code == 3


def test_version_and_help(cli):
    assert cli("--version").stdout.startswith("onnxforge ")
    res = cli("--help")
    assert res.code == 0 and "Exit codes" in res.stdout


def test_refused_run_keeps_a_concurrent_runs_work(tmp_path):
    """Two runs started together into a run_dir neither found: the refused one removes its own run folder and
    the run_dir only if empty — it used to delete the whole new run_dir, and the other run's convert died with
    FileNotFoundError (exit 3) mid-stage."""
    from onnxforge.pipeline import first_new_folder, remove_created

    runs = tmp_path / "out" / "runs"
    mine, other = runs / "refused", runs / "busy"
    created = first_new_folder(mine)
    assert created == tmp_path / "out"
    mine.mkdir(parents=True)
    (other / "01-convert").mkdir(parents=True)  # the concurrent run, mid-stage
    (other / "01-convert" / "model.onnx").write_bytes(b"x")
    remove_created(mine, created, own=True)
    assert not mine.exists() and (other / "01-convert" / "model.onnx").is_file()
    remove_created(other, created, own=True)  # alone, a refused first run leaves nothing, as before
    assert not (tmp_path / "out").exists()

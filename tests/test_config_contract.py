"""The config contract: `config check` and `run` give the same verdict through the same checks, a refused config
creates nothing, a config cannot make onnxforge write outside its folder or the working directory, and no command
overwrites one of its inputs."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, assert_one_line_error, run_cli

FOREST = FIXTURES / "tabular/cancer_forest.skops"


def write(folder: Path, cfg: dict, name: str = "p.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sklearn_cfg(**source) -> dict:
    return {"name": "forest", "source": {"framework": "sklearn", "path": str(FOREST), **source},
            "inputs": [{"name": "input", "shape": ["batch", 10]}], "stages": {"convert": {}}}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused_cases(tmp: Path) -> dict[str, tuple[dict, str]]:
    (tmp / "model.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    return {
        "missing source file": (sklearn_cfg(path=str(tmp / "nope.skops")), "not found"),
        "no source path": ({**sklearn_cfg(), "source": {"framework": "sklearn"}}, "source.path is required"),
        "wrong kind of file": (sklearn_cfg(path=str(FIXTURES / "tabular/wine_xgb.json")),
                               "use source.framework: xgboost"),
        "pickle without trust": (sklearn_cfg(path=str(tmp / "model.pkl")), "trust_pickle"),
        "missing data file": ({**sklearn_cfg(), "data": {"path": str(tmp / "none.csv")}}, "data.path"),
        "missing torch factory": ({"name": "t", "source": {"framework": "torch"}, "stages": {"convert": {}}},
                                  "needs source.factory"),
        "typo'd top-level key": ({"name": "x", "sourec": sklearn_cfg()["source"]}, "did you mean 'source'"),
    }


@pytest.mark.parametrize("case", ["missing source file", "no source path", "wrong kind of file",
                                  "pickle without trust", "missing data file", "missing torch factory",
                                  "typo'd top-level key"])
def test_config_check_and_run_agree_and_nothing_is_created(tmp_path, case):
    cfg, expect = refused_cases(tmp_path)[case]
    path = write(tmp_path / "cfg", cfg)
    checked = assert_one_line_error(run_cli("config", "check", path, cwd=tmp_path))
    ran = assert_one_line_error(run_cli("run", path, cwd=tmp_path))
    assert expect in checked, checked
    assert checked == ran  # one validation path: the same verdict, word for word
    assert not (tmp_path / "runs").exists()


def test_a_config_that_passes_check_runs(tmp_path):
    path = write(tmp_path / "cfg", sklearn_cfg())
    assert run_cli("config", "check", path, cwd=tmp_path).code == 0
    res = run_cli("run", path, cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert (tmp_path / "runs/forest/01-convert/model.onnx").is_file()


def test_refused_first_run_leaves_no_run_folder(tmp_path):
    """Refused inside a stage (the converter cannot take these inputs), not in the pre-flight checks."""
    cfg = {**sklearn_cfg(), "inputs": [{"name": "input", "shape": ["batch", 7]}]}
    path = write(tmp_path / "cfg", cfg)
    assert run_cli("config", "check", path, cwd=tmp_path).code == 0  # only the model knows its width
    line = assert_one_line_error(run_cli("run", path, cwd=tmp_path))
    assert "expects 10" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("run_dir", ["../../escape", "/tmp/onnxforge-escape-test"])
def test_run_dir_outside_the_project_is_refused(tmp_path, run_dir):
    work = tmp_path / "a" / "b"
    path = write(work / "cfg", {**sklearn_cfg(), "run_dir": run_dir})
    for cmd in (("config", "check"), ("run",)):
        line = assert_one_line_error(run_cli(*cmd, path, cwd=work))
        assert "run_dir" in line and "--run-dir" in line, line
    assert not (tmp_path / "a" / "escape").exists() and not Path("/tmp/onnxforge-escape-test").exists()


def test_run_dir_inside_and_from_the_command_line(tmp_path):
    path = write(tmp_path / "cfg", {**sklearn_cfg(), "run_dir": "out/runs"})  # inside the config's folder
    assert run_cli("run", path, cwd=tmp_path).code == 0
    assert (tmp_path / "cfg/out/runs/forest/manifest.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    res = run_cli("run", path, "--run-dir", elsewhere, cwd=tmp_path / "cfg")
    assert res.code == 0, res.stderr
    assert (elsewhere / "forest/manifest.json").is_file()


def test_run_dir_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "cfg" / "runs").symlink_to(tmp_path / "outside")
    path = write(tmp_path / "cfg", {**sklearn_cfg(), "run_dir": "runs"})
    assert "run_dir" in assert_one_line_error(run_cli("run", path, cwd=tmp_path / "work"))
    assert not any((tmp_path / "outside").iterdir())


@pytest.mark.parametrize("target", ["source", "data", "config"])
def test_no_command_overwrites_an_input(tmp_path, target):
    """`optimize --config p.yaml -o X` where X is the config's source model, its data or the config itself."""
    src = tmp_path / "lin.onnx"
    data = tmp_path / "d.npz"
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.5, -1.0, 2.0, 0.25, 1.5, -0.5])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "lin",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    np.savez(data, x=np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
    cfg = write(tmp_path, {"name": "lin", "source": {"framework": "onnx", "path": "lin.onnx"},
                           "data": {"path": "d.npz"}, "stages": {"convert": {}, "optimize": {}}})
    out = {"source": src, "data": data, "config": cfg}[target]
    before = {p: digest(p) for p in (src, data, cfg)}
    line = assert_one_line_error(run_cli("optimize", "--config", cfg, "-o", out, cwd=tmp_path))
    assert "is an input" in line, line
    assert {p: digest(p) for p in (src, data, cfg)} == before
    assert not (tmp_path / "runs").exists()


def test_failed_stage_leaves_no_output_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "m.onnx"
    shutil.copy(FIXTURES / "data/digits_test.npz", tmp_path / "d.npz")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a model")
    res = run_cli("optimize", bad, "-o", out, "--data", tmp_path / "d.npz", cwd=tmp_path)
    assert res.code == 2, res.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", ["deep map", "deep list", "long path", "nul in path", "no convert first"])
def test_hostile_config_shapes_are_exit_2(tmp_path, case):
    """Found by the fuzz harness: each was exit 3 (RecursionError, OSError ENAMETOOLONG, a None model path)."""
    if case.startswith("deep"):
        body = "x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n" if case == "deep map" else "x: " + "[" * 20000 + "]" * 20000 + "\n"
        path = tmp_path / "p.yaml"
        path.write_text("name: x\n" + body)
        expect = "nested deeper"
    else:
        cfg = sklearn_cfg()
        if case == "long path":
            cfg["data"] = {"path": "x" * 5000}
        elif case == "nul in path":
            cfg["data"] = {"path": "a\x00b.csv"}
        else:
            cfg["stages"] = {"validate": {}}
        path = write(tmp_path / "cfg", cfg)
        expect = {"long path": "longer than", "nul in path": "NUL", "no convert first": "list convert: {} first"}[case]
    for cmd in (("config", "check"), ("run",)):
        assert expect in assert_one_line_error(run_cli(*cmd, path, cwd=tmp_path))
    assert not (tmp_path / "runs").exists()


def test_onnx_source_stages_may_start_without_convert(tmp_path):
    """An ONNX source is a model already; a -1 dim (common in real files) is dynamic, also for --synthetic."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5, -1.0, 2.0, 0.25, 1.5, -0.5, 1.0, 0.0])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "lin", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    cfg = write(tmp_path, {"name": "m", "source": {"framework": "onnx", "path": "m.onnx"},
                           "data": {"synthetic": True}, "stages": {"validate": {"against": "onnx-reference"}}})
    res = run_cli("run", cfg, cwd=tmp_path)
    assert res.code == 0, res.stderr
    res = run_cli("validate", tmp_path / "m.onnx", "--synthetic", "--against", "onnx-reference", cwd=tmp_path)
    assert res.code == 0, res.stderr

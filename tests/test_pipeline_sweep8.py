"""`onnxforge run` with configs written the way users write them (sweep 8): duplicate keys, a stage listed before
convert, a run folder that cannot be one, and --columns naming a column that holds a comma."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli


def iris_skops(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    path = folder / "iris.skops"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    np.savez(folder / "iris.npz", input=x.astype(np.float32), label=y)
    return path


IRIS = ("name: iris\nsource: {framework: sklearn, path: iris.skops}\n"
        "inputs: [{name: input, dtype: float32, shape: [batch, 4]}]\ndata: {path: iris.npz, labels: label}\n")


def refused_alike(cfg: Path | str, cwd: Path, *args) -> str:
    """`run` refuses with one line, `config check` with the same line, and neither leaves a run folder."""
    ran = assert_one_line_error(run_cli("run", cfg, *args, cwd=cwd))
    assert not (cwd / "runs").exists()
    return ran


@pytest.mark.parametrize("body, key", [
    ("stages:\n  convert: {}\n  validate: {rtol: 0.5}\n  validate: {}\n", "validate"),
    ("name: iris2\nstages: {convert: {}}\n", "name"),
])
def test_a_key_written_twice_is_refused_not_silently_replaced(tmp_path, body, key):
    # YAML keeps the last of two equal keys: the first validate's options (or the first name) were dropped unseen
    iris_skops(tmp_path)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(IRIS + body)
    line = refused_alike("p.yaml", tmp_path)
    assert f"duplicate key '{key}'" in line and "also on line" in line and " — keep one" in line, line
    second = max(i for i, ln in enumerate((IRIS + body).splitlines(), 1) if ln.strip().startswith(f"{key}:"))
    assert line.startswith(f"error: p.yaml:{second}: invalid YAML"), line  # points at the second one
    assert assert_one_line_error(run_cli("config", "check", "p.yaml", cwd=tmp_path)) == line


def test_convert_after_another_stage_is_refused(tmp_path):
    """An ONNX source may start without convert; with convert listed second, convert re-read the source and the
    earlier stage's model was thrown away (the run still passed, shipping the unoptimized model)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    (tmp_path / "ridge.onnx").write_bytes(to_onnx(Ridge().fit(x, y), x[:1]).SerializeToString())
    np.savez(tmp_path / "d.npz", X=x)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: ridge\nsource: {framework: onnx, path: ridge.onnx}\ndata: {path: d.npz}\n"
                   "stages:\n  optimize: {}\n  convert: {}\n  validate: {}\n")
    line = refused_alike(cfg, tmp_path)
    assert "convert is listed after optimize" in line and " — move convert: to the top of stages" in line, line
    assert assert_one_line_error(run_cli("config", "check", cfg, cwd=tmp_path)) == line


def _file(runs: Path) -> None:
    runs.mkdir()
    (runs / "iris").write_text("not a folder")


def _dangling(runs: Path) -> None:
    runs.mkdir()
    (runs / "iris").symlink_to(runs / "gone")


def _loop(runs: Path) -> None:
    runs.mkdir()
    (runs / "a").symlink_to(runs / "b")
    (runs / "b").symlink_to(runs / "a")
    (runs / "iris").symlink_to(runs / "a")


def _run_dir_file(runs: Path) -> None:
    runs.write_text("a file named like the run_dir")


@pytest.mark.parametrize("make, expect", [
    (_file, "runs/iris is a file, the run folder"),
    (_dangling, "runs/iris is a symbolic link that leads nowhere"),
    (_loop, "runs/iris is a symbolic link that leads nowhere (dangling, or a loop)"),
    (_run_dir_file, "runs is a file, where the run folder runs/iris needs a folder"),
], ids=["file", "dangling-symlink", "symlink-loop", "run_dir-is-a-file"])
def test_a_run_folder_that_cannot_be_one_is_bad_input_not_a_crash(tmp_path, make, expect):
    # these ended in mkdir's FileExistsError / NotADirectoryError: exit 3, "internal error"
    iris_skops(tmp_path)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(IRIS + "stages: {convert: {}}\n")
    make(tmp_path / "runs")
    before = sorted(os.listdir(tmp_path / "runs")) if (tmp_path / "runs").is_dir() else None
    res = run_cli("run", cfg, "--json", cwd=tmp_path)
    line = assert_one_line_error(res)
    assert expect in line and " — " in line and "run_dir (or --run-dir)" in line, line
    assert res.json()["exit_code"] == 2 and res.json()["result"] is None
    after = sorted(os.listdir(tmp_path / "runs")) if (tmp_path / "runs").is_dir() else None
    assert before == after  # nothing created beside what was there


def test_columns_flag_takes_a_quoted_column_name_holding_a_comma(tmp_path):
    """A CSV header may hold "age, years"; --columns reads its list as a CSV line, so the name is quoted as in the
    header. Expected values: scikit-learn's own predict."""
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    x, y = load_diabetes(return_X_y=True)
    x = x[:, :3].astype(np.float32)
    model = Ridge().fit(x, y)
    (tmp_path / "r.onnx").write_bytes(to_onnx(model, x[:1]).SerializeToString())
    pd.DataFrame({"age, years": x[:, 0], "sex": x[:, 1], "bmi": x[:, 2]}).to_csv(tmp_path / "d.csv", index=False)
    res = run_cli("predict", "r.onnx", "--input", "d.csv", "--output", "o.csv",
                  "--columns", 'X="age, years", sex,bmi', cwd=tmp_path)
    assert res.code == 0, res.stderr
    got = pd.read_csv(tmp_path / "o.csv").iloc[:, 0].to_numpy()
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-3)

    line = assert_one_line_error(run_cli("predict", "r.onnx", "--input", "d.csv", "--output", "p.csv",
                                         "--columns", 'X="age, years,sex', cwd=tmp_path))
    assert "is not INPUT=COL1,COL2,... — " in line and 'INPUT="a,b",c' in line, line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_run_folder_the_file_system_refuses_is_bad_input(tmp_path):
    # /proc takes no new folders, even for root (a read-only or full disk answers the same way): mkdir's OSError
    # was an internal error
    iris_skops(tmp_path)
    (tmp_path / "p.yaml").write_text(IRIS + "stages: {convert: {}}\n")
    line = assert_one_line_error(run_cli("run", "p.yaml", "--run-dir", "/proc/onnxforge-sweep8", cwd=tmp_path))
    assert "cannot create the run folder /proc/onnxforge-sweep8/iris (" in line, line
    assert " — choose a writable run_dir (or --run-dir)" in line, line


@pytest.mark.parametrize("stages", ["stages: {}\n", ""])
def test_a_run_of_no_stage_is_refused(tmp_path, stages):
    """`stages: {}` (or none at all) ran nothing, made a run folder and exited 0: a CI job passed with no model
    made or checked."""
    iris_skops(tmp_path)
    (tmp_path / "p.yaml").write_text(IRIS + stages)
    line = refused_alike("p.yaml", tmp_path)
    assert "stages: lists no stage, so run has nothing to do" in line, line

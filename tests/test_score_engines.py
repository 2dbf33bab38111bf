"""`onnxforge predict MODEL --input DATASET --output FOLDER` (issue #18): a multi-file dataset scored in parts by
the local process pool and by Dask gives exactly what one onnxruntime session gives file by file; a run killed
midway resumes without losing or repeating a row; bad rows are one line, exit 2, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CONFIGS, FIXTURES, ROOT, assert_one_line_error, run_cli

from onnxforge.score.scorer import derived_seed, reseed


def session(model, threads: int = 1):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def graph_feeds(sess, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The pipeline graph's own inputs from a table, by hand: one [rows, 1] input per column."""
    kinds = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(string)": object}
    return {i.name: df[i.name].to_numpy().astype(kinds[i.type]).reshape(-1, 1) for i in sess.get_inputs()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("engines")
    res = run_cli("convert", "--config", CONFIGS / "sklearn_pipeline.yaml", "-o", d / "pipe.onnx")
    assert res.code == 0, res.stderr
    base = pd.read_csv(FIXTURES / "data/cancer_test.csv")
    big = pd.concat([base] * 12, ignore_index=True)
    big.insert(0, "id", np.arange(len(big), dtype=np.int64))
    data = d / "data"
    data.mkdir()
    sizes = (700, 1, 1300)  # 3 files; row groups of 256 rows, one file of a single row
    start = 0
    for i, n in enumerate(sizes):
        pq.write_table(pa.Table.from_pandas(big.iloc[start:start + n], preserve_index=False),
                       data / f"f{i}.parquet", row_group_size=256)
        start += n
    many = d / "many"  # one file in 401 row groups of 5 rows: parts enough to kill a run midway
    many.mkdir()
    pq.write_table(pa.Table.from_pandas(big.iloc[:start], preserve_index=False), many / "m.parquet",
                   row_group_size=5)
    return {"d": d, "model": d / "pipe.onnx", "data": data, "many": many, "table": big.iloc[:start]}


def reference(work, folder: str = "data") -> pd.DataFrame:
    """One session, one run per file, the outputs named by hand as predict names them."""
    sess = session(work["model"])
    out = []
    for f in sorted(work[folder].glob("*.parquet")):
        df = pd.read_parquet(f)
        label, proba = sess.run(["label", "probabilities"], graph_feeds(sess, df))
        out.append(pd.DataFrame({"id": df["id"].to_numpy(), "label": label,
                                 "probabilities_benign": proba[:, 0],
                                 "probabilities_malignant": proba[:, 1]}))
    return pd.concat(out, ignore_index=True)


def read_parts(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder).reset_index(drop=True)  # parts in order; the manifest (_…) is skipped


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_engines_equal_one_session_file_by_file(work, engine, tmp_path):
    out = tmp_path / "scores"
    res = run_cli("predict", work["model"], "--input", work["data"], "--output", out, "--engine", engine,
                  "--workers", "2", "--threads", "1", "--chunk-rows", "300", "--keep", "id", "--json")
    assert res.code == 0, res.stderr
    info = res.json()["result"]
    assert info["rows"] == len(work["table"]) and info["workers"] == 2 and info["parts_skipped"] == 0
    assert info["parts"] == len(list(out.glob("part-*.parquet"))) == 5  # row groups merged to ≥ 300 rows per part
    got = read_parts(out)
    pd.testing.assert_frame_equal(got, reference(work), check_dtype=False)
    assert not list(out.glob(".*"))  # no temporary left


def test_dask_local_cluster_workers_run_without_profiler_and_malloc_trimming():
    """The LocalCluster the dask engine starts: no 10 ms stack sampler, glibc's own malloc trimming (the nanny's
    MALLOC_TRIM_THRESHOLD_=65536 made every chunk fault its buffers in again), the nanny's other settings kept."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    from onnxforge.score.engines.dask import scoring_worker_config

    with dask.config.set(scoring_worker_config()):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        with Client(cluster) as client:
            seen = client.run(lambda dask_worker: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                                   os.environ.get("OMP_NUM_THREADS"),
                                                   "profile" in dask_worker.periodic_callbacks))
    finally:
        cluster.close()
    assert list(seen.values()) == [(None, "1", False)]
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536  # scoped


def test_glob_and_csv_inputs(work, tmp_path):
    csv = tmp_path / "csv"
    csv.mkdir()
    for f in sorted(work["data"].glob("*.parquet")):
        pd.read_parquet(f).to_csv(csv / f"{f.stem}.csv", index=False)
    for source, name in ((str(work["data"] / "f*.parquet"), "glob"), (csv, "csv")):
        res = run_cli("predict", work["model"], "--input", source, "-o", tmp_path / f"out_{name}", "--chunk-rows",
                      "256", "--keep", "id", "--threads", "1", "--workers", "2")
        assert res.code == 0, res.stderr
        pd.testing.assert_frame_equal(read_parts(tmp_path / f"out_{name}"), reference(work), check_dtype=False)


def test_resume_after_kill_loses_and_repeats_nothing(work, tmp_path):
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "onnxforge", "predict", str(work["model"]), "--input", str(work["many"]),
            "--output", str(out), "--chunk-rows", "5", "--keep", "id", "--workers", "2", "--threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 20 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(0.5)
    before = len(list(out.glob("part-*.parquet")))
    assert 20 <= before < 401, before  # killed midway
    time.sleep(1)
    assert len(list(out.glob("part-*.parquet"))) == before  # the workers died with it: no orphan scores on
    res = run_cli("predict", work["model"], "--input", work["many"], "--output", out, "--chunk-rows", "5",
                  "--keep", "id", "--workers", "2", "--threads", "1", "--json")
    assert res.code == 0, res.stderr
    info = res.json()["result"]
    assert info["parts_skipped"] >= before and info["parts_scored"] + info["parts_skipped"] == info["parts"]
    got = read_parts(out)
    assert got["id"].is_unique and len(got) == len(work["table"])
    pd.testing.assert_frame_equal(got, reference(work, "many"), check_dtype=False)
    # a rerun with other options is refused, --overwrite redoes it
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", work["many"], "--output", out,
                                         "--chunk-rows", "500"))
    assert "--overwrite" in line
    res = run_cli("predict", work["model"], "--input", work["many"], "--output", out, "--chunk-rows", "500",
                  "--keep", "id", "--overwrite", "--json")
    assert res.code == 0 and res.json()["result"]["parts_skipped"] == 0
    pd.testing.assert_frame_equal(read_parts(out), reference(work, "many"), check_dtype=False)


def test_a_worker_killed_midway_fails_the_run_and_the_rerun_completes(work, tmp_path):
    """The local engine's forked worker dies (as the OOM killer would kill it): the command stops with one line
    naming that (exit 3: not the user's input), leaves no temporary part, and a rerun finishes the rest."""
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "onnxforge", "predict", str(work["model"]), "--input", str(work["many"]),
            "--output", str(out), "--chunk-rows", "5", "--keep", "id", "--workers", "2", "--threads", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 20 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and _ppid(d) == p.pid]
    assert len(kids) == 1, kids  # --workers 2: this process and one fork
    os.kill(kids[0], signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert p.returncode == 3 and len(lines) == 1 and "scoring worker exited with code -9" in lines[0], err
    done = len(list(out.glob("part-*.parquet")))
    assert 20 <= done < 401 and not list(out.glob(".part-*"))
    res = run_cli("predict", work["model"], "--input", work["many"], "--output", out, "--chunk-rows", "5",
                  "--keep", "id", "--workers", "2", "--threads", "1", "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["parts_skipped"] == done
    pd.testing.assert_frame_equal(read_parts(out), reference(work, "many"), check_dtype=False)


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_bad_rows_one_line_and_nothing_left(work, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    for f in sorted(work["data"].glob("*.parquet")):
        df = pd.read_parquet(f)
        if f.stem == "f2":
            df.loc[df.index[900], "texture"] = np.nan  # row 900 of f2.parquet
        df.to_parquet(data / f.name, row_group_size=256)
    out = tmp_path / "scores"
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", data, "--output", out,
                                         "--chunk-rows", "256", "--workers", "2"))
    assert "f2.parquet" in line and "NaN" in line and "row 900" in line and "--allow-nan" in line, line
    assert not out.exists()
    res = run_cli("predict", work["model"], "--input", data, "--output", out, "--allow-nan", "--chunk-rows", "256")
    assert res.code == 0, res.stderr


def test_a_file_missing_a_column_is_refused_before_any_scoring(work, tmp_path):
    data = tmp_path / "mixed"
    data.mkdir()
    for f in sorted(work["data"].glob("*.parquet")):
        df = pd.read_parquet(f)
        (df.drop(columns=["grade"]) if f.stem == "f1" else df).to_parquet(data / f.name)
    out = tmp_path / "scores"
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", data, "--output", out))
    assert "f1.parquet" in line and "input 'grade': no 'grade' in the data" in line, line
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--keep", "nope"], "--keep column 'nope' is not in the data"),
    (["--engine", "spark"], "--engine spark: unknown"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler is for --engine dask"),
    (["--workers", "0"], "--workers 0"),
], ids=["keep", "engine", "scheduler", "workers"])
def test_bad_flags_exit_2(work, tmp_path, args, needle):
    out = tmp_path / "o"
    assert needle in assert_one_line_error(run_cli("predict", work["model"], "--input", work["data"], "-o", out,
                                                   *args))
    assert not out.exists()


def test_folder_with_other_files_is_refused(work, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", work["data"], "-o", out))
    assert "holds other files (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "keep me"
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", work["data"], "-o",
                                         work["data"] / "sub"))
    assert "inside the input folder" in line


def test_single_file_output_refuses_folder_flags(work, tmp_path):
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", work["data"] / "f0.parquet", "-o",
                                         tmp_path / "y.parquet", "--workers", "2"))
    assert "--workers is for a folder --output" in line


@pytest.mark.slow
def test_pymc_draws_per_part_are_seeded_by_part(tmp_path):
    """A stochastic artifact: each part's draws come from a session reseeded with derived_seed(seed, part), so
    the local pool (2 workers) and Dask give exactly the draws of a plain loop over the parts."""
    res = run_cli("convert", "--config", CONFIGS / "pymc_hier.yaml", "-o", tmp_path / "hier.onnx")
    assert res.code == 0, res.stderr
    z = np.load(FIXTURES / "data/pymc_hier.npz")
    df = pd.DataFrame({"x": np.tile(z["x"], 4).astype(np.float32), "group": np.tile(z["group"], 4)})
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pandas(df), data / "h.parquet", row_group_size=100)
    import onnx

    proto = onnx.load(str(tmp_path / "hier.onnx"))
    want = []
    for i, start in enumerate(range(0, len(df), 100)):
        m = onnx.ModelProto()
        m.CopyFrom(proto)
        reseed(m, derived_seed(7, i))
        sess = session(m.SerializeToString())
        rows = df.iloc[start:start + 100]
        want.append(sess.run(None, {"x": rows["x"].to_numpy(), "group": rows["group"].to_numpy(object)}))
    draws = np.concatenate([w[3] for w in want])
    mean = np.concatenate([w[0] for w in want])
    for engine in ("local", "dask"):
        out = tmp_path / engine
        res = run_cli("predict", tmp_path / "hier.onnx", "--input", data, "-o", out, "--engine", engine,
                      "--workers", "2", "--seed", "7", "--chunk-rows", "100", "--threads", "1")
        assert res.code == 0, res.stderr
        got = read_parts(out)
        np.testing.assert_array_equal(got["mean"], mean)
        np.testing.assert_array_equal(got[[f"draws_{j}" for j in range(draws.shape[1])]].to_numpy(), draws)

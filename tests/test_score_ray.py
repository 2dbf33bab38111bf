"""`predict --engine ray` (issue #18, the optional extra `onnxforge[ray]`): Ray Data map_batches with one Scorer
per actor writes byte for byte the parts the local engine writes, resumes by skipping finished parts, and a bad
row is one line, exit 2, nothing left behind.

Ray's servers listen on every interface (it resolves 127.0.0.1 to a reachable address on purpose), so each run
here is a CLI process in a network namespace of its own holding only the loopback device (`unshare -n`): the
local Ray instance it starts cannot be reached from outside, and is shut down when the command ends."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CONFIGS, FIXTURES, ROOT, Result, assert_one_line_error, run_cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="pip install onnxforge[ray]")


def _isolated() -> list[str] | None:
    """A prefix running a command in a fresh network namespace (loopback only), or None where it cannot."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for flags in (["-n"], ["-rn"]):  # root; else an unprivileged user namespace
        p = subprocess.run(["unshare", *flags, "true"], capture_output=True)
        if p.returncode == 0:
            return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    return None


PREFIX = _isolated()
RAY_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWE] \d+ \d+\] \w+\.cc:\d+: ")


def ray_cli(*args) -> Result:
    if PREFIX is None:
        pytest.skip("needs unshare -n (a loopback-only network namespace) to start a local Ray instance")
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    p = subprocess.run([*PREFIX, sys.executable, "-m", "onnxforge", "predict", *map(str, args), "--engine", "ray"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    # Ray's C++ core warns that a loopback-only namespace has no route out ("[date W pid] network_util.cc:...")
    stderr = "".join(ln for ln in p.stderr.splitlines(keepends=True) if not RAY_LOG.match(ln))
    return Result(p.returncode, p.stdout, stderr)


def _ray_servers() -> set[int]:
    """Pids of Ray's own servers running on this machine."""
    pids = set()
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and Path(f"/proc/{d}/comm").read_text().strip() in {"gcs_server", "raylet"}:
                pids.add(int(d))
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ray")
    res = run_cli("convert", "--config", CONFIGS / "sklearn_pipeline.yaml", "-o", d / "pipe.onnx")
    assert res.code == 0, res.stderr
    base = pd.read_csv(FIXTURES / "data/cancer_test.csv")
    big = pd.concat([base] * 8, ignore_index=True)
    big.insert(0, "id", np.arange(len(big), dtype=np.int64))
    data = d / "data"
    data.mkdir()
    for i, (start, stop) in enumerate(((0, 600), (600, 601), (601, len(big)))):  # 3 files, one of a single row
        pq.write_table(pa.Table.from_pandas(big.iloc[start:stop], preserve_index=False), data / f"f{i}.parquet",
                       row_group_size=128)
    local = d / "local"
    res = run_cli("predict", d / "pipe.onnx", "--input", data, "-o", local, "--chunk-rows", "200", "--keep", "id",
                  "--workers", "2", "--threads", "1")
    assert res.code == 0, res.stderr
    return {"d": d, "model": d / "pipe.onnx", "data": data, "local": local}


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def test_ray_writes_the_local_engines_parts_and_resumes(work, tmp_path):
    before = _ray_servers()
    out = tmp_path / "scores"
    res = ray_cli(work["model"], "--input", work["data"], "-o", out, "--chunk-rows", "200", "--keep", "id",
                  "--workers", "2", "--threads", "1", "--json")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)["result"]
    want = _parts(work["local"])
    assert info["engine"] == "ray" and info["workers"] == 2 and info["parts"] == len(want) >= 5
    assert _parts(out) == want  # the same files, byte for byte
    assert not list(out.glob(".*")) and _ray_servers() <= before  # no temporary; the Ray it started is gone
    # resume: a lost part is the only one scored again
    (out / "part-00002.parquet").unlink()
    res = ray_cli(work["model"], "--input", work["data"], "-o", out, "--chunk-rows", "200", "--keep", "id",
                  "--workers", "2", "--threads", "1", "--json")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)["result"]
    assert info["parts_scored"] == 1 and info["parts_skipped"] == len(want) - 1
    assert _parts(out) == want


def test_ray_bad_row_is_one_line_and_nothing_left(work, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    for f in sorted(work["data"].glob("*.parquet")):
        df = pd.read_parquet(f)
        if f.stem == "f2":
            df.loc[df.index[300], "texture"] = np.nan  # row 300 of f2.parquet
        df.to_parquet(data / f.name, row_group_size=128)
    out = tmp_path / "scores"
    line = assert_one_line_error(ray_cli(work["model"], "--input", data, "-o", out, "--chunk-rows", "200",
                                         "--workers", "2"))
    assert "f2.parquet" in line and "NaN" in line and "row 300" in line, line
    assert not out.exists()


def test_ray_scheduler_without_a_cluster_is_refused(work, tmp_path):
    if Path("/tmp/ray/ray_current_cluster").exists():
        pytest.skip("a Ray cluster runs on this machine: 'auto' would find it")
    line = assert_one_line_error(run_cli("predict", work["model"], "--input", work["data"], "-o", tmp_path / "o",
                                         "--engine", "ray", "--scheduler", "auto"))
    assert "--scheduler auto: no Ray cluster answers there" in line, line
    assert not (tmp_path / "o").exists()

"""Small files, huge memory (issue #20): a 1 MB .npz with an unused 1 GiB member, a 4 KB parquet whose unused
string column decodes to 2.4 GB, a 169 KB CSV with one 20,000-character cell, a 75-byte ONNX declaring
[1, 100000000]. Each is built here at test time and run through the real CLI with its data segment capped at
1 GiB (RLIMIT_DATA; a normal run needs ~0.2 GiB): before the fix every one of them died of MemoryError under it.
Unused members/columns must not matter (exit 0, right scores); over-cap reads and syntheses are refused up front
with one line, exit 2, nothing written."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, Result, assert_one_line_error
from onnx import TensorProto as T
from onnx import helper as h

LIMIT = 1 << 30  # data segment of the CLI process; the unfixed attacks needed 1.1–11 GB
ROWS = 100


def run_limited(*args, env: dict | None = None, timeout: int = 120) -> tuple[Result, float]:
    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

    full = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200", OPENBLAS_NUM_THREADS="1", **(env or {}))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "onnxforge", *map(str, args)], cwd=ROOT, env=full, preexec_fn=cap,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr), time.perf_counter() - t0


def _model(path: Path, name: str, elem, shape) -> Path:
    """y = Identity(input): scores are the input itself, whatever its dtype."""
    g = h.make_graph([h.make_node("Identity", [name], ["y"])], "g", [h.make_tensor_value_info(name, elem, shape)],
                     [h.make_tensor_value_info("y", elem, shape)])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return path


def _npy_member(zf: zipfile.ZipFile, name: str, descr: str, shape: tuple, payload=None, zeros: int = 0) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        if payload is not None:
            f.write(payload)
        chunk = bytes(8 << 20)
        for _ in range(zeros // len(chunk)):  # streamed through deflate: 1 GiB of zeros is a ~5 MB member
            f.write(chunk)


X = np.arange(ROWS, dtype=np.float32).reshape(-1, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("memory")
    out = {"model": _model(d / "x.onnx", "x", T.FLOAT, ["batch", 1]),
           "smodel": _model(d / "s.onnx", "s", T.STRING, ["batch", 1]),
           "big": _model(d / "big.onnx", "x", T.FLOAT, [1, 100_000_000])}
    with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _npy_member(zf, "x", X.dtype.str, X.shape, X.tobytes())
        _npy_member(zf, "junk", "|u1", (1 << 30,), zeros=1 << 30)
    out["npz"] = d / "bomb.npz"
    with zipfile.ZipFile(d / "forged.npz", "w", zipfile.ZIP_DEFLATED) as zf:  # header claims 8 GiB, holds 400 B
        _npy_member(zf, "x", "<f4", (1 << 31, 1), X.tobytes())
    out["forged"] = d / "forged.npz"
    lines = ["x,junk"] + [f"{i},a" for i in range(20_000)]
    lines[6] = "5," + "b" * 20_000
    (d / "bomb.csv").write_text("\n".join(lines) + "\n")
    out["csv"] = d / "bomb.csv"

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    huge = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["c" * 2_400_000]))
    pq.write_table(pa.table({"x": pa.array(np.arange(n, dtype=np.float32)), "junk": huge}), d / "bomb.parquet",
                   compression="zstd")
    pq.write_table(pa.table({"s": huge}), d / "strings.parquet", compression="zstd")
    out["parquet"], out["strings"] = d / "bomb.parquet", d / "strings.parquet"
    return out


def _refused(res: Result, seconds: float, *needles: str) -> str:
    line = assert_one_line_error(res, 2)
    assert seconds < 30, seconds
    for n in needles:
        assert n in line, line
    return line


# ------------------------------------------------------------------ unused members/columns are never read


@pytest.mark.parametrize("kind", ["npz", "csv", "parquet"])
def test_predict_reads_only_the_columns_the_model_needs(files, kind, tmp_path):
    out = tmp_path / "scores.parquet"
    res, _ = run_limited("predict", files["model"], "--input", files[kind], "-o", out, "--threads", "1")
    assert res.code == 0, (res.stdout, res.stderr)
    import pandas as pd

    y = pd.read_parquet(out)["y_0"].to_numpy()
    n = {"npz": ROWS, "csv": 20_000, "parquet": 1000}[kind]
    np.testing.assert_array_equal(y, np.arange(n, dtype=np.float32))


@pytest.mark.parametrize("kind", ["npz", "csv", "parquet"])
def test_validate_reads_only_the_columns_the_model_needs(files, kind):
    res, _ = run_limited("validate", files["model"], "--data", files[kind], "--against", "onnx-reference")
    assert res.code == 0, (res.stdout, res.stderr)


# ------------------------------------------------------------------ over the cap: refused before reading


def test_forged_npz_header_is_refused_before_allocating(files, tmp_path):
    out = tmp_path / "scores.parquet"
    res, s = run_limited("predict", files["model"], "--input", files["forged"], "-o", out)
    _refused(res, s, "member 'x'", "[2147483648, 1]", "truncated or forged")
    assert list(tmp_path.iterdir()) == []


def test_npz_member_over_the_cap_is_refused(files, tmp_path):
    res, s = run_limited("validate", files["model"], "--data", files["npz"], "--against", "onnx-reference",
                         env={"ONNXFORGE_MAX_DATA_BYTES": "256"})
    _refused(res, s, "'x'", "400 B", "ONNXFORGE_MAX_DATA_BYTES")


def test_parquet_string_column_decoding_over_the_cap_is_refused(files, tmp_path):
    """1000 rows of one dictionary-encoded 2.4 MB string: 4 KB on disk, 2.4 GB once decoded per row."""
    out = tmp_path / "scores.parquet"
    res, s = run_limited("predict", files["smodel"], "--input", files["strings"], "-o", out,
                         env={"ONNXFORGE_MAX_DATA_BYTES": "512M"})
    _refused(res, s, "'s'", "GiB", "ONNXFORGE_MAX_DATA_BYTES")
    assert list(tmp_path.iterdir()) == []


def test_parquet_rows_over_the_cap_are_refused_from_the_footer(files, tmp_path):
    res, s = run_limited("validate", files["model"], "--data", files["parquet"], "--against", "onnx-reference",
                         env={"ONNXFORGE_MAX_DATA_BYTES": "1K"})
    _refused(res, s, "'x'", "3.9 KiB", "1.0 KiB cap")


def test_npz_output_held_in_memory_is_capped(files, tmp_path):
    out = tmp_path / "scores.npz"
    res, s = run_limited("predict", files["model"], "--input", files["csv"], "-o", out, "--chunk-rows", "1000",
                         env={"ONNXFORGE_MAX_DATA_BYTES": "16K"})
    _refused(res, s, ".npz output", ".parquet")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ synthetic inputs


@pytest.mark.parametrize("cmd", ["report", "bench"])
def test_synthetic_inputs_over_the_cap_are_refused(files, tmp_path, cmd):
    out = tmp_path / "report"
    args = ("report", files["big"], "--out", out) if cmd == "report" else ("bench", files["big"], "--runs", "2")
    res, s = run_limited(*args)
    _refused(res, s, "input 'x'", "[1, 100000000]", "--data FILE", "ONNXFORGE_MAX_SYNTHETIC_ELEMENTS")
    assert not out.exists() or list(out.iterdir()) == []


def test_synthetic_cap_can_be_raised(monkeypatch):
    from onnxforge import data
    from onnxforge.config import TensorSpec
    from onnxforge.errors import UserError

    specs = [TensorSpec(name="x", dtype="float32", shape=["batch", 1000])]
    monkeypatch.setenv("ONNXFORGE_MAX_SYNTHETIC_ELEMENTS", "10000")
    assert data.synthesize(specs, 64)["x"].shape == (10, 1000)  # fewer rows fit under the cap
    monkeypatch.setenv("ONNXFORGE_MAX_SYNTHETIC_ELEMENTS", "500")
    with pytest.raises(UserError, match="1,000 elements"):  # not even one row does
        data.synthesize(specs, 64)
    monkeypatch.setenv("ONNXFORGE_MAX_SYNTHETIC_ELEMENTS", "0")
    assert data.synthesize(specs, 64)["x"].shape == (64, 1000)


def test_tiling_to_a_batch_over_the_memory_cap_is_refused(monkeypatch):
    """A model can pin a batch of 10^9 rows: tiling the data up to it meets the memory cap."""
    from onnxforge import data
    from onnxforge.errors import UserError

    feeds = {"x": np.zeros((64, 1000), np.float32)}
    with pytest.raises(UserError, match="a batch of 1,000,000,000 rows takes 3,725.3 GiB"):
        data.tile_rows(feeds, 10**9)
    monkeypatch.setenv("ONNXFORGE_MAX_DATA_BYTES", "1M")
    assert data.tile_rows(feeds, 200)["x"].shape == (200, 1000)
    with pytest.raises(UserError, match="ONNXFORGE_MAX_DATA_BYTES"):
        data.tile_rows(feeds, 300)


# ------------------------------------------------------------------ strings are never padded


def test_string_cells_are_not_padded_to_the_longest():
    import tracemalloc

    from onnxforge import data

    col = np.array(["a"] * 2000, dtype=object)
    col[5] = "b" * 20_000
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        out = data.cast(col.reshape(-1, 1), "string", "s")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a <U20000 block would be 2000 × 80 KB = 160 MB
    assert out.dtype == object and out[5, 0] == col[5]


def test_caps_parse_sizes(monkeypatch):
    from onnxforge import limits
    from onnxforge.errors import UserError

    for text, n in [("4G", 4 << 30), ("512MiB", 512 << 20), ("1000", 1000), ("0", None)]:
        monkeypatch.setenv(limits.DATA_ENV, text)
        assert limits.max_data_bytes() == n
    monkeypatch.setenv(limits.DATA_ENV, "lots")
    with pytest.raises(UserError, match="not a size"):
        limits.max_data_bytes()

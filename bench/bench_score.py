"""Offline scoring at scale (issue #18): `predict` into a folder with the local process pool and with Dask.

- rows/s of the tabular artifact (the cancer sklearn Pipeline: 10 float, 1 string, 1 int64 column → label +
  probabilities) and of the PyMC hierarchical artifact (mean, std, 3 quantiles, 50 draws per row), local engine
  with 1 worker × 1 thread and 2 workers × 1 thread each: end-to-end wall time of `predict_dataset` (read
  parquet, map and check the columns, score, write the parts), interleaved rounds (order reversed every other
  round), the ratio per round then its median and range;
- Dask (a new LocalCluster per run, and a running one) and Ray (a new local instance per run, when `ray` is
  installed), 2 workers × 1 thread, against the local engine (2 workers × 1 thread), same rounds;
- peak RSS of the whole process tree (the CLI and every worker, /proc sampled every 50 ms) scoring a
  10-million-row parquet dataset generated into a temp folder.

Every output is checked before anything is timed: all engines write the same frame, equal to one onnxruntime
session run over the first file by hand. Threads are read back from the run's result.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _convert(config: str, out: Path, draws: int | None = None) -> Path:
    """A fresh artifact from a repo config (the PyMC one with fewer draws: the bench is about rows, not draws)."""
    import yaml

    cfg_path = ROOT / "configs" / f"{config}.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    src = raw["source"]
    for k in ("path", "transform", "model"):
        if isinstance(src.get(k), str):
            path, _, attr = src[k].partition(":")
            src[k] = str((cfg_path.parent / path).resolve()) + (f":{attr}" if attr else "")
    if isinstance(raw.get("data", {}).get("path"), str):
        raw["data"]["path"] = str((cfg_path.parent / raw["data"]["path"]).resolve())
    if draws is not None:
        src["outputs"]["draws"] = draws
    tmp_cfg = out.parent / f"{config}.yaml"
    tmp_cfg.write_text(yaml.safe_dump(raw))
    p = subprocess.run([sys.executable, "-m", "onnxforge", "convert", "--config", str(tmp_cfg), "-o", str(out)],
                       capture_output=True, text=True, cwd=out.parent, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"convert {config}: {p.stderr[-800:]}")
    return out


def _write_dataset(frame_fn, rows: int, folder: Path, files: int, row_group: int = 65536) -> Path:
    """`rows` rows in `files` parquet files, written a block at a time (this process never holds them all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    done = 0
    for i in range(files):
        n_file = min(per_file, rows - done)
        writer = None
        written = 0
        while written < n_file:
            n = min(500_000, n_file - written)
            table = pa.Table.from_pandas(frame_fn(done + written, n), preserve_index=False)
            writer = writer or pq.ParquetWriter(str(folder / f"part{i:02d}.parquet"), table.schema)
            writer.write_table(table, row_group_size=row_group)
            written += n
        writer.close()
        done += n_file
    return folder


def _cancer(start: int, n: int):
    import pandas as pd

    base = pd.read_csv(ROOT / "fixtures/data/cancer_test.csv").drop(columns=["target", "diagnosis"])
    idx = np.arange(start, start + n) % len(base)
    df = base.iloc[idx].reset_index(drop=True)
    df.insert(0, "id", np.arange(start, start + n, dtype=np.int64))
    return df


def _hier(start: int, n: int):
    import pandas as pd

    z = np.load(ROOT / "fixtures/data/pymc_hier.npz")
    idx = np.arange(start, start + n) % len(z["x"])
    return pd.DataFrame({"id": np.arange(start, start + n, dtype=np.int64), "x": z["x"][idx].astype(np.float32),
                         "group": z["group"][idx]})


def _reference(model: Path, first_file: Path) -> dict[str, np.ndarray]:
    """One onnxruntime session (1 thread) over the first file, inputs built by hand from the graph's inputs."""
    import onnxruntime as ort
    import pandas as pd

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"])
    df = pd.read_parquet(first_file)
    kinds = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(string)": object}
    feeds = {}
    for i in sess.get_inputs():
        col = df[i.name].to_numpy().astype(kinds[i.type])
        feeds[i.name] = col.reshape(-1, 1) if len(i.shape) == 2 else col
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True)), len(df)


def _check(outs: dict[str, Path], model: Path, first_file: Path, stochastic: bool) -> str:
    """Every engine's folder holds the same frame; its first rows equal the reference session's outputs
    (for the stochastic artifact the posterior mean/std/quantiles; draws are seeded per part, checked equal
    across engines)."""
    import pandas as pd

    frames = {k: pd.read_parquet(v) for k, v in outs.items()}
    first = next(iter(frames.values()))
    for k, f in frames.items():
        pd.testing.assert_frame_equal(f, first, obj=f"{k} vs {next(iter(frames))}")
    ref, n = _reference(model, first_file)
    for name, arr in ref.items():
        if stochastic and name == "draws":
            continue
        arr = np.asarray(arr)
        if arr.ndim == 1:
            got = first[name].to_numpy()[:n]
        else:
            got = first[[c for c in first.columns if c.startswith(name + "_")]].to_numpy()[:n]
        if got.dtype == object or arr.dtype == object:
            assert (got.astype(str) == arr.reshape(got.shape).astype(str)).all(), name
        else:
            assert np.array_equal(got, arr.reshape(got.shape)), name
    return f"{len(frames)} engine outputs equal; {n:,} rows equal to one onnxruntime session"


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (a pool's workers, a closed LocalCluster's)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _timed(model, data, out, **kw) -> dict:
    from onnxforge.score.offline import predict_dataset

    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: deleting the last round's parts is not scoring
    c0, t0 = _cpu_seconds(), time.perf_counter()
    res = predict_dataset(model, data, out, **kw)
    res["wall"] = time.perf_counter() - t0
    res["cpu"] = _cpu_seconds() - c0  # a running cluster's workers are not children: not counted
    return res


def _rounds(model, data, tmp: Path, setups: dict[str, dict], rounds: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {k: [] for k in setups}
    names = list(setups)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            out[k].append(_timed(model, data, tmp / f"out_{k}", **setups[k]))
    return out


_CLUSTERS: dict = {}


def warm_cluster(tmp: Path, tuned: bool = False) -> str:
    """A LocalCluster started once (2 processes × 1 thread), as a user's own cluster: its address. `tuned`: with
    the worker settings the engine gives the clusters it starts itself (no profiler, no MALLOC_TRIM_THRESHOLD_)."""
    if tuned not in _CLUSTERS:
        import logging

        import dask
        from distributed import LocalCluster

        from onnxforge.score.engines.dask import scoring_worker_config

        with dask.config.set(scoring_worker_config() if tuned else {}):
            _CLUSTERS[tuned] = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                                            local_directory=str(tmp / f"dask{int(tuned)}"))
    return _CLUSTERS[tuned].scheduler_address


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes summed over `pid` and every descendant, from /proc (RSS counts pages shared by forked
    workers once per process; PSS splits them)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def _peak_memory(cmd: list[str], cwd: Path) -> tuple[list[int], float, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def watch():
        while p.poll() is None:
            rss, pss = _tree_memory(p.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    stdout, stderr = p.communicate()
    t.join()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} exited {p.returncode}: {stderr[-800:]}")
    return peak, time.perf_counter() - t0, stdout


def _ratio_cell(num: list[float], den: list[float]) -> tuple[str, float]:
    r = [a / b for a, b in zip(num, den, strict=True)]
    med = statistics.median(r)
    return (f"{med:.2f}× ({min(r):.2f}–{max(r):.2f})" if len(r) > 1 else f"{med:.2f}×"), med


def run(quick: bool = False) -> list[dict]:

    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        return _run(tmp, quick)
    finally:
        for c in _CLUSTERS.values():
            c.close()
        _CLUSTERS.clear()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(tmp: Path, quick: bool) -> list[dict]:
    import importlib.util

    from onnxforge.score.offline import available_cpus

    load = os.getloadavg()[0]  # the machine's other work, stated beside the figures
    rounds = 1 if quick else 3
    # 4M tabular rows: each scoring process spends ~60 ms warming up (its first part runs ~2× a steady one:
    # copy-on-write faults after the fork, a new session's first runs, the first parquet write), about 12 % of a
    # 2-worker run at 1M rows (16 parts of ~45 ms); 4M rows keep the measurement about the rows
    tab_rows, bayes_rows, big_rows = (20_000, 5_000, 200_000) if quick else (4_000_000, 200_000, 10_000_000)
    tab = _convert("sklearn_pipeline", tmp / "pipeline.onnx")
    hier = _convert("pymc_hier", tmp / "hier.onnx", draws=50)
    tab_data = _write_dataset(_cancer, tab_rows, tmp / "tab", files=8)
    hier_data = _write_dataset(_hier, bayes_rows, tmp / "hier", files=2, row_group=16384)
    cpus = available_cpus()
    kw = {"keep": ["id"], "chunk_rows": 65536}
    one, two = {**kw, "workers": 1, "threads": 1}, {**kw, "workers": 2, "threads": 1}
    has_dask = importlib.util.find_spec("distributed") is not None
    has_ray = importlib.util.find_spec("ray") is not None

    tables, rows_tab = [], []
    for label, model, data, n in (("tabular: cancer sklearn Pipeline", tab, tab_data, tab_rows),
                                  ("PyMC hier (mean, std, 3 quantiles, 50 draws)", hier, hier_data, bayes_rows)):
        setups = {"1 worker × 1 thread": one, "2 workers × 1 thread": two}
        if has_dask and model is tab:
            setups["dask, new LocalCluster per run, 2 workers × 1 thread"] = {**two, "engine": "dask"}
            setups["dask, running LocalCluster (--scheduler), 2 workers × 1 thread"] = {
                **two, "engine": "dask", "scheduler": warm_cluster(tmp)}
            setups["dask, running LocalCluster with the engine's worker settings, 2 workers × 1 thread"] = {
                **two, "engine": "dask", "scheduler": warm_cluster(tmp, tuned=True)}
        if has_ray and model is tab:
            setups["ray, new local instance per run, 2 workers × 1 thread"] = {**two, "engine": "ray"}
        # outputs first, untimed: every engine writes the same frame, equal to one session on the first file
        checked = _check({k: (_timed(model, data, tmp / f"chk_{i}", **s), tmp / f"chk_{i}")[1]
                          for i, (k, s) in enumerate(setups.items())}, model, sorted(data.glob("*.parquet"))[0],
                         stochastic=model is hier)
        res = _rounds(model, data, tmp, setups, rounds)
        base = [r["rows"] / r["wall"] for r in res["1 worker × 1 thread"]]
        local2 = [r["rows"] / r["wall"] for r in res["2 workers × 1 thread"]]
        for k, runs in res.items():
            rps = [r["rows"] / r["wall"] for r in runs]
            threads = f"{runs[0]['workers']}×{runs[0]['threads_per_worker']}"
            vs1, _ = _ratio_cell(rps, base)
            vs_local = _ratio_cell(rps, local2)[0] if k.startswith(("dask", "ray")) else "—"
            threads += "" if runs[0]["threads_per_worker"] == 1 else " (!)"  # read back from the run
            cpu = ("—" if "running" in k or k.startswith("ray") else
                   f"{statistics.median(r['cpu'] / r['rows'] * 1e6 for r in runs):.1f}")
            rows_tab.append([label, k, f"{n:,}", threads, statistics.median(rps), vs1, vs_local, cpu])
        rows_tab.append([label, "outputs", "", "", float("nan"), checked, "", ""])

    big = _write_dataset(_cancer, big_rows, tmp / "big", files=8)
    peak, wall, _ = _peak_memory([sys.executable, "-m", "onnxforge", "predict", str(tab), "--input", str(big),
                               "--output", str(tmp / "big_out"), "--keep", "id", "--workers", "2"], tmp)
    size = sum(f.stat().st_size for f in big.glob("*.parquet"))
    tables.append({
        "title": "predict into a folder: rows/s, local engine 1 vs 2 workers, Dask and Ray vs local",
        "columns": ["artifact", "engine", "rows", "workers×threads", "rows/s (median)", "vs 1 worker",
                    "vs local 2 workers", "CPU s per 1M rows"],
        "rows": rows_tab,
        "notes": (f"End-to-end wall time of predict_dataset into a new folder (read parquet, map/check columns, "
                  f"score, write parts; the local engine's 2 workers are this process and one fork; 'new "
                  f"LocalCluster' and 'new local instance' include starting and closing them, 'running "
                  f"LocalCluster' is a cluster started once before the rounds, as --scheduler uses one, with "
                  f"Dask's default worker settings, or with the engine's (the ones it gives a LocalCluster it "
                  f"starts: no 10 ms stack profiler, no MALLOC_TRIM_THRESHOLD_=65536 from the nanny; those two "
                  f"defaults cost the workers a third more CPU per row)), "
                  f"{rounds} interleaved round(s), order reversed every "
                  f"other round; ratios per round, median (range). CPU s: user + system of the process tree (this process "
                  f"and its reaped children: the pool's workers, a closed LocalCluster's processes) per million "
                  f"rows, median — what the engine costs whatever share of the machine it got. {cpus} CPUs usable by this process (affinity "
                  f"and cgroup quota), shared with other work (load average {load:.1f} at the start, "
                  f"{os.getloadavg()[0]:.1f} after these rounds): goal ≥ 1.7× for 2 workers, Dask within 15 % "
                  "(≥ 0.85×) on a running cluster."),
    })
    tables.append({
        "title": "predict into a folder: peak memory on a large dataset",
        "columns": ["input", "rows", "parquet bytes", "engine", "peak RSS, process tree", "peak PSS, process tree",
                    "wall s", "rows/s"],
        "rows": [[f"{len(list(big.glob('*.parquet')))} parquet files (cancer rows tiled + id)", f"{big_rows:,}",
                  f"{size / 1e6:,.0f} MB", "local, 2 workers (default threads)", f"{peak[0] / 2**20:,.0f} MiB",
                  f"{peak[1] / 2**20:,.0f} MiB",
                  wall, big_rows / wall]],
        "notes": ("`python -m onnxforge predict … --workers 2` as a subprocess; RSS and PSS of it and every "
                  "descendant summed from /proc/<pid>/smaps_rollup every 50 ms, the maxima reported (goal ≤ 1 GB; "
                  "summed RSS counts the pages the forked workers share with the CLI once per process, PSS "
                  "splits them). Wall time includes the interpreter start and imports."),
    })
    return tables


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1, default=str))

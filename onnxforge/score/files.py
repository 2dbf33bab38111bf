"""Offline scoring: any ONNX model over a large .csv/.parquet/.npz in chunks, with the artifact that serves online.

Table columns map to model inputs through the `onnxforge.input_spec` metadata the convert stage stamps (each
spec's `column`/`columns`, else its name), falling back to the graph's own input names. Outputs are written to a
temporary file beside the destination and renamed into place when every chunk has been scored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import limits
from onnxforge.artifact import file_mode, meta_json
from onnxforge.errors import UserError
from onnxforge.summary import all_nodes

RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli"}
OUT_SUFFIXES = (".parquet", ".csv", ".npz")


def reseed(model, seed: int) -> int:
    """Give every random node a seed derived from `seed` and its position: a fresh onnxruntime session then
    replays the same draws. Seeds differ per node (identical streams would correlate) and are scrambled below
    2**24 (the attribute is a float; onnxruntime's generator starts poorly from small seeds). Returns the count."""
    from onnx import helper

    count = 0
    for node in all_nodes(model.graph):
        if node.op_type not in RANDOM_OPS:
            continue
        h = int.from_bytes(hashlib.sha256(f"{seed}:{count}".encode()).digest()[:3], "big") or 1
        for a in list(node.attribute):
            if a.name == "seed":
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("seed", float(h)))
        count += 1
    return count


def _specs(model, where=None) -> list:
    """The stamped input specs when they name the graph's inputs (an edited graph falls back to its own)."""
    from pydantic import ValidationError

    from onnxforge.artifact import META_FIX
    from onnxforge.config import TensorSpec
    from onnxforge.data import specs_from_model

    graph_specs = specs_from_model(model)
    stamped = meta_json(model, "input_spec", list, [], items=dict, where=where)
    try:
        specs = [TensorSpec(**d) for d in stamped]
    except (ValidationError, TypeError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
        at = ".".join(map(str, first["loc"]))
        raise UserError(f"{where or 'the model'}: metadata onnxforge.input_spec is not a list of input specs "
                        f"({at + ': ' if at else ''}{first['msg']}) — {META_FIX}") from None
    if specs and [s.name for s in specs] == [s.name for s in graph_specs]:
        return specs
    return graph_specs


COLUMNS_HINT = "map table columns onto it with --columns INPUT=COL1,COL2,..."


def _read_chunks(path: Path, chunk_rows: int, specs) -> tuple[int | None, Iterator[dict[str, np.ndarray]]]:
    """(total rows if known, chunks as column → array) holding only the columns the inputs read."""
    from onnxforge.data import input_keys
    from onnxforge.tables import iter_chunks

    return iter_chunks(path, chunk_rows, lambda keys: input_keys(specs, keys, path, COLUMNS_HINT))


def nan_policy(meta: dict, allow_nan: bool) -> tuple[str, str]:
    """(what non-finite values may reach the model, the advice when one may not). NaN passes where convert stamped
    that the model scores missing values as its source framework does (tree ensembles); --allow-nan passes all."""
    if allow_nan:
        return "pass", ""
    if meta.get("onnxforge.accepts_missing") == "true":
        return "nan", "this model takes NaN as a missing value but not ±inf: fix those rows, or pass --allow-nan"
    return "refuse", ("this model was not stamped as handling missing values: drop or impute those rows, or pass "
                      "--allow-nan to score them anyway")


def _levels(meta: dict, where=None) -> tuple[dict[str, list], dict[str, str]]:
    """(categories, unseen policies) stamped by convert: input → its known levels, input → 'error' or another."""
    from onnxforge.artifact import META_FIX

    cats = meta_json(meta, "categories", dict, {}, items=list, where=where)
    empty = next((name for name, levels in cats.items() if not levels), None)
    if empty is not None:
        raise UserError(f"{where or 'the model'}: metadata onnxforge.categories lists no levels for input "
                        f"'{empty}' — {META_FIX}")
    return cats, meta_json(meta, "unseen_policy", dict, {}, items=str, where=where)


def _check_levels(chunk_feeds, levels_policy: tuple[dict[str, list], dict[str, str]], offset: int) -> None:
    """Unseen categories under the `error` policy: refuse with the levels and rows (the graph would fail too)."""
    cats, policy = levels_policy
    for name, levels in cats.items():
        if policy.get(name, "error") != "error" or name not in chunk_feeds:
            continue
        raw = np.asarray(chunk_feeds[name]).reshape(-1)
        if isinstance(levels[0], str):  # a set, not .astype(str): that pads every cell to the longest
            known = {str(v) for v in levels}
            bad = np.fromiter((str(v) not in known for v in raw), bool, len(raw))
        else:
            bad = ~np.isin(raw, np.asarray(levels))
        if bad.any():
            rows = (np.flatnonzero(bad) + offset)[:3].tolist()
            lv = sorted({str(v) for v in raw[bad]})[:5]
            raise UserError(f"input '{name}': unseen level(s) {lv} at row(s) {rows} and the model's unseen policy "
                            f"is 'error' — known levels: {', '.join(map(str, levels[:10]))}")


def _columns(name: str, arr, names: list[str] | None) -> dict[str, np.ndarray]:
    if isinstance(arr, list):  # e.g. ZipMap: a list of {label: probability} per row
        if arr and isinstance(arr[0], dict):
            keys = list(arr[0])
            return {f"{name}_{k}": np.asarray([row[k] for row in arr]) for k in keys}
        arr = np.asarray(arr)
    arr = np.asarray(arr)
    if arr.ndim <= 1:
        return {name: arr.reshape(-1)}
    flat = arr.reshape(arr.shape[0], -1)
    labels = names if names and len(names) == flat.shape[1] else [str(j) for j in range(flat.shape[1])]
    return {f"{name}_{lab}": flat[:, j] for j, lab in enumerate(labels)}


def _check_per_row(raw: dict[str, Any], n: int, model_path: Path) -> None:
    """Every output must hold one entry per input row (its first dim is the batch): predict writes per-row scores,
    and a scalar or a fixed-size output (a statistic over the batch, a state tensor) has no row to go with."""
    for name, arr in raw.items():
        shape = [len(arr)] if isinstance(arr, list) else list(np.shape(arr))
        if not shape or shape[0] != n:
            raise UserError(f"{model_path}: output '{name}' has shape {shape}, not one row per input row ({n} "
                            "rows scored) — predict writes per-row scores only: give that output a batch axis, "
                            "or remove it from the graph's outputs")


class _Writer:
    """Chunks → one file, written beside the destination under a temporary name and renamed at the end."""

    def __init__(self, path: Path):
        self.path, self.suffix = path, path.suffix.lower()
        if self.suffix not in OUT_SUFFIXES:
            raise UserError(f"{path}: unsupported output format '{path.suffix}' — use .parquet, .csv or .npz")
        from onnxforge.tables import need_readers

        need_readers(path, "writing")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self._pq = None
        self._arrays: dict[str, list] = {}
        self._held = 0
        self._first = True

    def write(self, cols: dict[str, np.ndarray], raw: dict[str, Any]) -> None:
        if self.suffix == ".npz":
            for k, v in raw.items():
                # maps (ZipMap) become one array per key, strings fixed-width: an .npz must load without pickle
                parts = _columns(k, v, None) if isinstance(v, list) else {k: np.asarray(v)}
                for name, arr in parts.items():
                    arr = arr.astype(str) if arr.dtype == object else arr
                    self._held += arr.nbytes
                    self._arrays.setdefault(name, []).append(arr)
            # an .npz is written whole at the end, so every row stays in memory until then
            limits.check_data_bytes(self._held, self.path, "the .npz output (all rows held until the end; "
                                    ".parquet and .csv outputs are streamed)")
            return
        import pandas as pd

        df = pd.DataFrame(cols)
        if self.suffix == ".csv":
            df.to_csv(self.tmp, mode="w" if self._first else "a", header=self._first, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(str(self.tmp), table.schema)
            self._pq.write_table(table)
        self._first = False

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        if self.suffix == ".npz":
            with open(self.tmp, "wb") as f:
                np.savez(f, **{k: np.concatenate(v) for k, v in self._arrays.items()})
        os.chmod(self.tmp, file_mode())  # mkstemp makes 0600; scores get the umask's mode like every output
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._pq is not None:
            try:
                self._pq.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


def predict_file(model: str | Path, input: str | Path, output: str | Path, *, chunk_rows: int = 65536,
                 threads: int | None = None, seed: int | None = None, columns: dict[str, list[str]] | None = None,
                 allow_nan: bool = False, console=None) -> dict[str, Any]:
    """Score `input` with `model` chunk by chunk into `output`. Returns rows, seconds, rows/s and what was
    written. `seed` re-seeds the random nodes of stochastic artifacts (same seed + chunk size → same draws).
    `columns` maps table columns onto inputs ({input: [col, ...]}, as `inputs[].columns` in a config);
    `allow_nan` lets NaN/±inf reach a model not stamped as handling missing values (see nan_policy)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from onnxforge.admission import admit, open_session
    from onnxforge.data import feeds_from_table, with_columns

    model_path, in_path, out_path = Path(model), Path(input), Path(output)
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows {chunk_rows}: give a positive number of rows")
    if out_path.resolve() == in_path.resolve():
        raise UserError("--output is the input file — choose another path (inputs are never overwritten)")
    t_start = time.perf_counter()
    proto = admit(model_path, session=False).model  # the gate every command's model passes
    meta = {p.key: p.value for p in proto.metadata_props}
    reseeded = reseed(proto, seed) if seed is not None else 0
    hint = meta.get("onnxforge.rows_per_chunk")  # a memory hint: used when it is a positive row count
    chunk = min(chunk_rows, int(hint)) if hint and hint.isdigit() and int(hint) > 0 else chunk_rows
    specs = _specs(proto, model_path)
    if columns:
        specs = with_columns(specs, columns)
    nonfinite, nan_fix = nan_policy(meta, allow_nan)
    col_names = meta_json(meta, "output_columns", dict, {}, items=list, where=model_path)
    levels = _levels(meta, model_path)
    sess = open_session(proto, name=model_path, threads=threads)
    out_names = [o.name for o in sess.get_outputs()]
    total, chunks = _read_chunks(in_path, chunk, specs)
    writer = _Writer(out_path)
    rows = n_chunks = 0
    score_s = 0.0
    columns: list[str] = []
    progress = Progress(TextColumn("[bold]scoring[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("rows"), TimeRemainingColumn(), console=console, transient=True,
                        disable=console is None)
    try:
        with progress:
            task = progress.add_task(in_path.name, total=total)
            for table in chunks:
                if not any(np.ndim(v) and len(v) for v in table.values()):
                    continue  # an empty chunk (e.g. a header-only CSV): checked once all chunks are read
                feeds = feeds_from_table(table, specs, source=in_path, nonfinite=nonfinite, fix=nan_fix,
                                         hint=COLUMNS_HINT, offset=rows)
                _check_levels(feeds, levels, rows)
                n = max(len(v) for v in feeds.values() if np.ndim(v))
                t0 = time.perf_counter()
                try:
                    res = sess.run(out_names, feeds)
                except Exception as e:
                    msg = str(e).split("Status Message:")[-1].strip().splitlines()[0]
                    raise UserError(f"onnxruntime refused rows {rows}-{rows + n - 1} of {in_path.name}: {msg} — "
                                    f"check those rows against the model's inputs (onnxforge inspect "
                                    f"{model_path.name}) and fix or drop them") from None
                score_s += time.perf_counter() - t0
                raw = dict(zip(out_names, res, strict=True))
                _check_per_row(raw, n, model_path)
                cols: dict[str, np.ndarray] = {}
                for name, arr in raw.items():
                    cols.update(_columns(name, arr, col_names.get(name)))
                columns = columns or list(cols)
                writer.write(cols, raw)
                rows += n
                n_chunks += 1
                progress.advance(task, n)
        if rows == 0:
            raise UserError(f"{in_path}: holds no rows — give a file with at least one row to score")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - t_start
    return {"model": str(model_path), "input": str(in_path), "output": str(out_path), "rows": rows,
            "chunks": n_chunks, "chunk_rows": chunk, "seconds": seconds, "score_seconds": score_s,
            "rows_per_s": rows / seconds if seconds > 0 else float("inf"),
            "score_rows_per_s": rows / score_s if score_s > 0 else float("inf"),
            "outputs": out_names, "columns": columns, "seed": seed, "reseeded_nodes": reseeded,
            "threads": threads, "nonfinite": nonfinite}

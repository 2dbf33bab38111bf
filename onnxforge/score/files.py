"""Offline scoring: any ONNX model over a large .csv/.parquet/.npz in chunks, with the artifact that serves online.

Table columns map to model inputs through the `onnxforge.input_spec` metadata the convert stage stamps (each
spec's `column`/`columns`, else its name), falling back to the graph's own input names. Outputs are written to a
temporary file beside the destination and renamed into place when every chunk has been scored.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge import limits
from onnxforge.artifact import file_mode
from onnxforge.errors import UserError
from onnxforge.score.scorer import COLUMNS_HINT, RANDOM_OPS, named_columns, nan_policy, reseed  # noqa: F401

OUT_SUFFIXES = (".parquet", ".csv", ".npz")


def _read_chunks(path: Path, chunk_rows: int, scorer) -> tuple[int | None, Iterator[dict[str, np.ndarray]]]:
    """(total rows if known, chunks as column → array) holding only the columns the inputs read."""
    from onnxforge.data import input_keys
    from onnxforge.tables import iter_chunks

    return iter_chunks(path, chunk_rows, lambda keys: input_keys(scorer.specs, keys, path, COLUMNS_HINT))


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
                parts = named_columns(k, v, None) if isinstance(v, list) else {k: np.asarray(v)}
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
        from onnxforge.score.partitions import discard

        discard(self._pq, self.tmp)


def check_output_path(out: Path) -> None:
    """The nearest existing folder above --output must be a folder: a file there (--output afile/x.csv) made the
    mkdir fail with FileExistsError / NotADirectoryError, exit 3, for a user's typo."""
    from onnxforge.paths import nearest_existing

    up = nearest_existing(Path(out).parent)
    if not up.is_dir():
        raise UserError(f"--output {out}: {up} is a file, not a folder — choose an --output path under a "
                        f"folder (or move {up} away)")


def check_threads(threads: int | None) -> None:
    """--threads 0 (or none) is onnxruntime's default; a negative count is a typo, not a thread pool."""
    if threads is not None and threads < 0:
        raise UserError(f"--threads {threads}: give a positive number of threads (or 0 / leave it out for the "
                        "default)")


def refuse_no_inputs(scorer, model_path: Path) -> None:
    """A model whose every value comes from initializers: no column can feed it, so there is no row to score."""
    if not scorer.specs:
        raise UserError(f"{model_path.name} takes no inputs, so there are no rows to score — run it once with "
                        f"`onnxforge validate {model_path} --synthetic` or `onnxforge bench {model_path}`")


def predict_file(model: str | Path, input: str | Path, output: str | Path, *, chunk_rows: int = 65536,
                 threads: int | None = None, seed: int | None = None, columns: dict[str, list[str]] | None = None,
                 allow_nan: bool = False, console=None) -> dict[str, Any]:
    """Score `input` with `model` chunk by chunk into `output`. Returns rows, seconds, rows/s and what was
    written. `seed` re-seeds the random nodes of stochastic artifacts (same seed + chunk size → same draws).
    `columns` maps table columns onto inputs ({input: [col, ...]}, as `inputs[].columns` in a config);
    `allow_nan` lets NaN/±inf reach a model not stamped as handling missing values (see nan_policy)."""
    from onnxforge.score.progress import bar
    from onnxforge.score.scorer import Scorer

    model_path, in_path, out_path = Path(model), Path(input), Path(output)
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows {chunk_rows}: give a positive number of rows")
    check_threads(threads)
    check_output_path(out_path)
    if out_path.resolve() == in_path.resolve():
        raise UserError("--output is the input file — choose another path (inputs are never overwritten)")
    t_start = time.perf_counter()
    scorer = Scorer(model_path, threads=threads, seed=seed, columns=columns, allow_nan=allow_nan)
    refuse_no_inputs(scorer, model_path)
    chunk = min(chunk_rows, scorer.rows_per_chunk or chunk_rows)
    out_names = scorer.output_names
    total, chunks = _read_chunks(in_path, chunk, scorer)
    writer = _Writer(out_path)
    rows = n_chunks = 0
    score_s = 0.0
    columns_out: list[str] = []
    try:
        with bar(console) as progress:
            task = progress.add_task(in_path.name, total=total)
            for table in chunks:
                if not any(np.ndim(v) and len(v) for v in table.values()):
                    continue  # an empty chunk (e.g. a header-only CSV): checked once all chunks are read
                feeds = scorer.feeds(table, offset=rows, source=in_path)
                n = max(len(v) for v in feeds.values() if np.ndim(v))
                t0 = time.perf_counter()
                raw = scorer.run(feeds, offset=rows, source=in_path)
                score_s += time.perf_counter() - t0
                cols = scorer.columns(raw)
                columns_out = columns_out or list(cols)
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
            "outputs": out_names, "columns": columns_out, "seed": seed, "reseeded_nodes": scorer.reseeded_nodes,
            "threads": threads, "nonfinite": scorer.nonfinite}

"""The input of a partitioned predict: a parquet/csv file, a folder of them or a glob, cut into parts.

A part is a unit of work any engine can score alone and write as one output file: whole parquet row groups of
one file (merged until they reach the chunk size), or a range of lines of one csv file (found by one pass
counting newlines). Parts depend only on the files and the chunk size, never on the engine or its workers, so a
rerun finds the same parts and skips the ones already written.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxforge.errors import UserError

FORMATS = (".parquet", ".csv")


@dataclass(frozen=True)
class Part:
    index: int  # position in the run: names its output file
    path: str
    first_row: int  # row number of its first row within the file (messages name rows of the file)
    rows: int
    row_groups: tuple[int, ...] = ()  # parquet
    byte_range: tuple[int, int] = (0, 0)  # csv: [start, end) of its lines, the header read separately


def files(spec: str | Path) -> list[Path]:
    """The data files `spec` names: one file, every parquet/csv file under a folder (recursively, hidden and `_`
    files skipped, as pyarrow datasets do), or a glob; sorted, one format."""
    text = str(spec)
    path = Path(text)
    if path.is_file():
        found = [path]
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                       and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    elif glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    else:
        raise UserError(f"input not found: {spec} — give a .parquet/.csv file, a folder of them or a glob")
    if not found:
        raise UserError(f"{spec}: no .parquet or .csv files found — give a file, a folder holding them or a glob "
                        "such as 'data/*.parquet'")
    suffixes = {p.suffix.lower() for p in found}
    bad = sorted(suffixes - set(FORMATS))
    if bad:
        raise UserError(f"{spec}: unsupported data format '{bad[0]}' for a partitioned predict — use .parquet or "
                        ".csv files (or a single-file --output for .npz/.npy input)")
    if len(suffixes) > 1:
        raise UserError(f"{spec}: mixes {' and '.join(sorted(suffixes))} files — give one format per dataset")
    return found


def columns_of(path: Path) -> list[str]:
    """Column names from the file's footer or header line (nothing else is read)."""
    from onnxforge.tables import need_readers, read_error, sniff

    need_readers(path)
    sniff(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as e:
        raise read_error(path, e) from None


def plan(paths: list[Path], chunk_rows: int) -> list[Part]:
    """Every file cut into parts of about `chunk_rows` rows (at least one row group each)."""
    parts: list[Part] = []
    for path in paths:
        cut = _parquet_parts if path.suffix.lower() == ".parquet" else _csv_parts
        for p in cut(path, chunk_rows):
            parts.append(Part(index=len(parts), **p))
    return parts


def _parquet_parts(path: Path, chunk_rows: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    from onnxforge.tables import read_error

    try:
        md = pq.ParquetFile(path).metadata
    except Exception as e:
        raise read_error(path, e) from None
    groups: list[int] = []
    first = rows = 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if n == 0:
            continue
        groups.append(g)
        rows += n
        if rows >= chunk_rows:
            yield {"path": str(path), "first_row": first, "rows": rows, "row_groups": tuple(groups)}
            first, groups, rows = first + rows, [], 0
    if groups:
        yield {"path": str(path), "first_row": first, "rows": rows, "row_groups": tuple(groups)}


def _csv_parts(path: Path, chunk_rows: int) -> Iterator[dict]:
    """Line ranges of `chunk_rows` lines, found in one pass over the bytes (a quoted field holding a newline
    would shift them: such a part fails its row count check, see read_part)."""
    with open(path, "rb") as f:
        header = f.readline()
        start = f.tell()
        if not header.endswith(b"\n"):
            return
        first = lines = 0
        pos = start
        for block in iter(lambda: f.read(1 << 20), b""):
            i = 0
            while True:
                j = block.find(b"\n", i)
                if j < 0:
                    break
                lines += 1
                i = j + 1
                if lines == chunk_rows:
                    end = pos + i
                    yield {"path": str(path), "first_row": first, "rows": lines, "byte_range": (start, end)}
                    first, start, lines = first + lines, end, 0
            pos += len(block)
        if pos > start:  # the last line may lack its newline
            tail = lines + (1 if _last_byte(f) != b"\n" else 0)
            if tail:
                yield {"path": str(path), "first_row": first, "rows": tail, "byte_range": (start, pos)}


def _last_byte(f) -> bytes:
    f.seek(-1, os.SEEK_END)
    return f.read(1)


def read_part(part: Part, columns: list[str], chunk_rows: int, text=()) -> Iterator:
    """The part's rows as pandas DataFrames of at most `chunk_rows` rows, holding only `columns`."""
    from onnxforge.tables import read_error

    path = Path(part.path)
    try:
        if path.suffix.lower() == ".parquet":

            from onnxforge.tables import _parquet_file

            pf = _parquet_file(path)
            for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=list(part.row_groups), columns=columns):
                yield batch.to_pandas()
            return
        yield from _csv_chunks(part, path, columns, chunk_rows, text)
    except UserError:
        raise
    except Exception as e:
        raise read_error(path, e) from None


def _csv_chunks(part: Part, path: Path, columns: list[str], chunk_rows: int, text=()) -> Iterator:
    import io

    import pandas as pd

    with open(path, "rb") as f:
        header = f.readline()
        f.seek(part.byte_range[0])
        body = f.read(part.byte_range[1] - part.byte_range[0])
    rows = 0
    # the columns that feed text inputs as written ("02139", not 2139), as tables.iter_chunks reads them
    dtype = {c: str for c in text} or None
    for df in pd.read_csv(io.BytesIO(header + body), usecols=columns, chunksize=chunk_rows, dtype=dtype):
        rows += len(df)
        yield df
    if rows != part.rows:
        raise UserError(f"{path}: lines {part.first_row + 2}-{part.first_row + part.rows + 1} hold {rows} rows, not "
                        f"{part.rows} — a quoted field holds a line break; save the data as parquet "
                        "(DataFrame.to_parquet) to score it in parts")


def fingerprint(paths: list[Path]) -> list[dict]:
    """What identifies the input for a resume: each file's path, size and modification time."""
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def digest(obj) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def as_dict(part: Part) -> dict:
    return asdict(part)

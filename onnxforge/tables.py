"""Data files read lazily: a Table knows its column/member names from the file's header or metadata and reads a
column only when asked, after checking from the header what it would cost in memory (limits.check_data_bytes).

Why: a 1 MB .npz can hold a 1 GiB all-zero member, a 4 KB parquet a dictionary-encoded column that decodes to
gigabytes; the model reads only some of them. Never unpickles (object arrays are refused).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from onnxforge import limits
from onnxforge.errors import UserError

SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
# decoded bytes per value of each parquet physical type (BYTE_ARRAY: its offset; the bytes are counted after reading)
_PQ_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12, "BYTE_ARRAY": 8}


FIX = {".npy": "save it with numpy.save", ".npz": "save it with numpy.savez",
       ".csv": "save it as UTF-8 text with a header row (DataFrame.to_csv)",
       ".parquet": "save it with DataFrame.to_parquet"}


def not_readable(path: Path, why: str) -> UserError:
    """The one message for a file whose bytes are not what its name says (random bytes, a renamed file)."""
    suffix = path.suffix.lower()
    return UserError(f"{path}: not a readable {suffix} file ({why}) — {FIX.get(suffix, 'check the file')}")


def sniff(path: Path) -> None:
    """Refuse a data file whose first bytes cannot be its format, before any reader guesses at them (numpy takes
    bytes without its magic for a pickle; pandas reports a codec error for a binary file)."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: the file is empty (0 bytes) — give a data file with at least one row")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        if suffix == ".parquet":
            f.seek(max(size - 4, 0))
            tail = f.read(4)
    if suffix == ".npy" and not head.startswith(b"\x93NUMPY"):
        raise not_readable(path, "no .npy header")
    if suffix == ".npz" and not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise not_readable(path, "not a zip archive")
    if suffix == ".parquet" and not (head.startswith(b"PAR1") and tail == b"PAR1" and size >= 12):
        raise not_readable(path, "no parquet magic bytes")
    if suffix == ".csv":
        import codecs

        try:  # incremental: a multi-byte character cut at the end of the sample is not an error
            text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == size)
        except UnicodeDecodeError as e:
            raise not_readable(path, f"not UTF-8 text: byte 0x{head[e.start]:02x} at offset {e.start}") from None
        if "\x00" in text:
            raise not_readable(path, "binary data: NUL bytes")


_READERS = {".csv": ("pandas",), ".parquet": ("pandas", "pyarrow")}


def need_readers(path: Path, verb: str = "reading") -> None:
    """csv/parquet need the [data] extra: say so (exit 2) instead of a ModuleNotFoundError (exit 3)."""
    import importlib.util

    suffix = Path(path).suffix.lower()
    for mod in _READERS.get(suffix, ()):  # the extra is the fix, not the file's format
        if importlib.util.find_spec(mod) is None:
            raise UserError(f"{path}: {verb} {suffix} files needs {mod}, which is not installed — "
                            "pip install 'onnxforge[data]'")


def read_error(path: Path, e: Exception) -> UserError:
    if isinstance(e, UserError):
        return e
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ValueError) and "Object arrays cannot be loaded" in str(e):
        return UserError(f"{path}: holds pickled object arrays, which onnxforge never loads — save strings "
                         "as fixed-width unicode (arr.astype(str))")
    if isinstance(e, (zipfile.BadZipFile, UnicodeDecodeError, EOFError)) or type(e).__name__ in (
            "ParserError", "EmptyDataError", "ArrowInvalid", "ArrowException"):
        return not_readable(path, first[:200])
    return UserError(f"{path}: cannot read data ({type(e).__name__}: {first[:200]}) — "
                     f"{FIX.get(path.suffix.lower(), 'check the file')}")


class Table(Mapping):
    """Column name → array; reads (and caches) columns on first access. `load(keys)` reads several in one pass.

    `typed`: the file stores each cell's type (npy, npz, parquet). A CSV does not: a column of digits may be a text
    category ("02139"), so `load(keys, text=...)` reads the columns that feed text inputs as written."""

    def __init__(self, path: Path, keys: list[str], cost: Callable[[list[str]], int],
                 read: Callable[..., dict[str, np.ndarray]], typed: bool = True):
        self.path, self._keys, self._cost, self._read = path, list(keys), cost, read
        self.typed = typed
        self._cache: dict[str, np.ndarray] = {}
        self._as_text: set[str] = set()  # cached keys read as text (an untyped file only)
        self._held = 0

    def __contains__(self, key) -> bool:  # Mapping's default would read the column
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._cache:
            self.load([key])
        return self._cache[key]

    def load(self, keys, text=None) -> None:
        """Read `keys` in one pass; `text` (default: the keys' own `.text`, see data.input_keys) are read as text
        from an untyped file. A column cached in the other reading is read again."""
        text = set() if self.typed else set(getattr(keys, "text", ()) if text is None else text)
        todo = [k for k in dict.fromkeys(keys) if k in self._keys and
                (k not in self._cache or (k in text) != (k in self._as_text))]
        if not todo:
            return
        try:
            limits.check_data_bytes(self._held + self._cost(todo), self.path, _what(todo))
            arrays = self._read(todo, [k for k in todo if k in text])
        except Exception as e:
            raise read_error(self.path, e) from None
        self._held += sum(a.nbytes for a in arrays.values()) - sum(
            self._cache[k].nbytes for k in arrays if k in self._cache)
        self._cache.update(arrays)
        self._as_text = (self._as_text - set(arrays)) | (set(arrays) & text)


class Columns(dict):
    """A chunk of columns already read (iter_chunks): `typed` as Table's; `load` has nothing left to read."""

    def __init__(self, items, path: Path, typed: bool):
        super().__init__(items)
        self.path, self.typed = path, typed

    def load(self, keys, text=None) -> None:
        pass


def _what(keys: list[str]) -> str:
    names = ", ".join(repr(k) if k else "the array" for k in keys[:4])
    return f"reading {names}{' …' if len(keys) > 4 else ''}"


def open_table(path: str | Path) -> Table:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path} — check the path")
    need_readers(path)
    suffix = path.suffix.lower()
    opener = {".npy": _npy, ".npz": _npz, ".csv": _csv, ".parquet": _parquet}.get(suffix)
    if opener is None:
        raise UserError(f"{path}: unsupported data format '{suffix}' — use one of {', '.join(SUFFIXES)}")
    try:
        sniff(path)
        return opener(path)
    except Exception as e:
        raise read_error(path, e) from None


# ------------------------------------------------------------------ .npy / .npz: the header declares the bytes


def _header(f, path: Path, name: str, stored: int) -> int:
    """Bytes the .npy header in `f` declares; refuses object dtypes and headers the stored bytes cannot back."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    except ValueError as e:
        raise UserError(f"{path}: {name or 'the file'} is not a valid .npy array ({e}) — save it with numpy.save "
                        "or numpy.savez") from None
    if dtype.hasobject:
        raise UserError(f"{path}: {name or 'the array'} holds pickled object arrays, which onnxforge never "
                        "loads — save strings as fixed-width unicode (arr.astype(str))")
    declared = math.prod(shape) * dtype.itemsize
    if declared > stored:  # a forged or truncated header: numpy would allocate it all before finding out
        raise UserError(f"{path}: {name or 'the array'} declares shape {list(shape)} {dtype} ({declared:,} bytes) "
                        f"but holds {stored:,} bytes — the file is truncated or forged; save it again")
    return declared


def _npy(path: Path) -> Table:
    def cost(keys):
        with open(path, "rb") as f:
            return _header(f, path, "", path.stat().st_size)

    return Table(path, [""], cost, lambda keys, text: {"": np.load(path, allow_pickle=False)})


def _npz(path: Path) -> Table:
    with zipfile.ZipFile(path) as zf:
        members = {n.removesuffix(".npy"): n for n in zf.namelist()}

    def cost(keys):
        with zipfile.ZipFile(path) as zf:
            total = 0
            for k in keys:
                info = zf.getinfo(members[k])
                # the sizes in the zip directory can be forged too: deflate cannot expand more than 1032:1
                stored = info.file_size if info.compress_type != zipfile.ZIP_DEFLATED else min(
                    info.file_size, 1032 * info.compress_size + 1024)
                if info.compress_type == zipfile.ZIP_STORED:
                    stored = min(info.file_size, info.compress_size)
                with zf.open(info) as f:
                    total += _header(f, path, f"member '{k}'", stored)
            return total

    def read(keys, text):
        with np.load(path, allow_pickle=False) as z:  # NpzFile reads a member only when indexed
            return {k: z[k] for k in keys}

    return Table(path, list(members), cost, read)


# ------------------------------------------------------------------ .csv / .parquet: only the columns asked for


def column(series) -> np.ndarray:
    """A pandas column as numpy; strings stay an object array of str (a fixed-width `<U` array pads every cell to
    the longest one: 20,000 rows × one 20,000-character cell = 1.6 GB)."""
    arr = series.to_numpy()
    if arr.dtype == object or arr.dtype.kind in "UST":
        try:
            return as_str_objects(arr)
        except UnicodeDecodeError:  # bytes that are not UTF-8 stay bytes: a text input refuses them by name
            return arr  # (data.cast knows the input, the column and the row; a reader here knows none of them)
    return arr


def _text(v):
    """A cell as text; a missing one (None, or the NaN pandas reads for an empty cell) stays None, so that the
    input checks refuse it instead of scoring the text 'None' or 'nan' as a level. Bytes (a parquet binary
    column, a numpy `S` array) are UTF-8 text: str(b'small') is "b'small'", no level the model knows."""
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):  # math.isnan: no numpy warning
        return None
    if isinstance(v, bytes):  # np.bytes_ too; strict: UnicodeDecodeError for bytes that are not UTF-8
        return v.decode("utf-8")
    return str(v)  # str() of a str is the same object: no cell is copied


def as_str_objects(arr) -> np.ndarray:
    """Cells as an object array of str (None where missing); raises UnicodeDecodeError for non-UTF-8 bytes."""
    arr = np.asarray(arr)
    if arr.dtype != object:
        arr = arr.astype(object)
    return np.frompyfunc(_text, 1, 1)(arr) if arr.ndim else np.asarray(_text(arr.item()), dtype=object)


def _csv(path: Path) -> Table:
    import pandas as pd

    keys = [str(c) for c in pd.read_csv(path, nrows=0).columns]

    def read(cols, text):
        df = pd.read_csv(path, usecols=cols, dtype=_as_text(text))
        return {str(c): column(df[c]) for c in df.columns}

    # plain text: what a column decodes to is bounded by the file's own size (strings are not padded, see column)
    return Table(path, keys, lambda cols: 0, read, typed=False)


def _as_text(text) -> dict | None:
    """read_csv's dtype for the columns that feed text inputs: read as written ("02139", not the number 2139;
    a text "7" is no level "007"), an empty cell still NaN (missing, refused by the input checks)."""
    return {c: str for c in text} or None


def _parquet(path: Path) -> Table:
    pf = _parquet_file(path)
    keys = list(pf.schema_arrow.names)

    def read(cols, text):
        table = pf.read(columns=cols)
        # dictionary columns are read compact: check what they decode to before they do
        limits.check_data_bytes(sum(decoded_nbytes(table.column(c)) for c in cols), path, _what(cols))
        return {str(c): column(table.column(c).to_pandas()) for c in table.column_names}

    return Table(path, keys, lambda cols: parquet_cost(pf, cols), read)


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    # string columns stay dictionary-encoded in memory: a repeated 2 MB string costs 2 MB, not rows × 2 MB
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type)]
    return pq.ParquetFile(path, read_dictionary=text)


def parquet_cost(pf, cols) -> int:
    """Decoded bytes of `cols` from the footer alone: values × width of each leaf column (nested ones too)."""
    md = pf.metadata
    want, total = set(cols), 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for i in range(rg.num_columns):
            c = rg.column(i)
            if c.path_in_schema.split(".")[0] in want:
                width = _PQ_WIDTH.get(c.physical_type, 8)
                if c.physical_type == "FIXED_LEN_BYTE_ARRAY":
                    width = pf.schema.column(i).length or 8
                total += c.num_values * width
    return total


def decoded_nbytes(col) -> int:
    """Bytes an arrow column takes once decoded to one value per row (dictionary values counted per use)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(col.type):
        return col.nbytes
    total = 0
    for ch in (col.chunks if hasattr(col, "chunks") else [col]):
        try:
            lens = pc.binary_length(ch.dictionary)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            lens = pa.array(np.full(len(ch.dictionary), 8))
        total += (pc.sum(pc.take(lens, ch.indices)).as_py() or 0) + 8 * len(ch)
    return total


# ------------------------------------------------------------------ chunked reading (predict)


def iter_chunks(path: Path, chunk_rows: int, select: Callable[[list[str]], list[str]]):
    """(total rows if known, iterator of column → array chunks) reading only the columns `select` picks from the
    file's names. Memory stays at a chunk (parquet, csv) or the selected members (npz, npy)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"input file not found: {path} — check --input")
    need_readers(path)
    if suffix in SUFFIXES:
        sniff(path)
    if suffix == ".parquet":
        try:
            pf = _parquet_file(path)
        except Exception as e:
            raise read_error(path, e) from None
        cols = select(list(pf.schema_arrow.names))
        total = pf.metadata.num_rows
        per_row = parquet_cost(pf, cols) // max(total, 1)
        limits.check_data_bytes(per_row * min(chunk_rows, total), path, f"a chunk of {chunk_rows:,} rows")

        def gen():
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
                limits.check_data_bytes(sum(decoded_nbytes(batch.column(c)) for c in cols), path, _what(cols))
                yield Columns({str(c): column(batch.column(c).to_pandas()) for c in batch.schema.names}, path, True)

        return total, gen()
    if suffix == ".csv":
        import pandas as pd

        try:
            names = [str(c) for c in pd.read_csv(path, nrows=0).columns]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise read_error(path, e) from None
        cols = select(names)
        dtype = _as_text([c for c in getattr(cols, "text", ()) if c in cols])  # see data.input_keys
        with open(path, "rb") as f:  # a newline count is cheap next to scoring, and gives the bar a total
            total = max(sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1, 0)

        def gen():
            try:
                for df in pd.read_csv(path, chunksize=chunk_rows, usecols=cols, dtype=dtype):
                    yield Columns({str(c): column(df[c]) for c in df.columns}, path, False)
            except (pd.errors.ParserError, UnicodeDecodeError) as e:
                raise read_error(path, e) from None

        return total, gen()
    if suffix in (".npz", ".npy"):
        table = open_table(path)
        cols = select(list(table))
        table.load(cols)
        arrays = {k: table[k] for k in cols}
        n = {len(v) for v in arrays.values() if np.ndim(v)}
        if len(n) != 1:
            raise UserError(f"{path}: arrays have different row counts {sorted(n)} — one table per file")
        total = n.pop()
        return total, (Columns({k: v[i:i + chunk_rows] for k, v in arrays.items()}, path, True)
                       for i in range(0, total, chunk_rows))
    raise UserError(f"{path}: unsupported input format '{suffix}' — use .csv, .parquet, .npz or .npy")

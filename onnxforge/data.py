"""Sample, calibration and evaluation data: .npy .npz .csv .parquet, mapped onto model inputs by name.

Synthetic inputs are made from the input spec only when the caller says the user allowed it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from onnxforge.errors import UserError
from onnxforge.tables import as_str_objects, open_table

NP_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
             "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "string": np.str_}
ONNX_TO_DTYPE = {1: "float32", 11: "float64", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8",
                 9: "bool", 8: "string"}


class Feeds(dict):
    """Model inputs by name. `whole` names the inputs without a batch axis (state tensors, scalars, a sample
    rate): they are fed as they are to every run — never split into rows, tiled or counted as rows.
    `rows_per_run` pins how many rows one run takes when the model says so only by failing on more."""

    whole: frozenset = frozenset()
    rows_per_run: int | None = None


def feeds_like(src, items) -> Feeds:
    """A Feeds of `items` that keeps `src`'s whole inputs and rows per run (src may be a plain dict)."""
    out = Feeds(items)
    out.whole = frozenset(getattr(src, "whole", ()))
    out.rows_per_run = getattr(src, "rows_per_run", None)
    return out


def whole(feeds) -> frozenset:
    return frozenset(getattr(feeds, "whole", ()))


def load_table(path: str | Path) -> Mapping[str, np.ndarray]:
    """Named columns/arrays of a data file, read lazily: only the columns a caller indexes are read, each after a
    check of what it costs in memory (onnxforge.limits). Never unpickles (object arrays are refused)."""
    return open_table(path)


def _where(source) -> str:
    return f"{source}: " if source else ""


def cast(arr: np.ndarray, dtype: str, name: str, source=None, keys=None, offset: int = 0) -> np.ndarray:
    target = NP_DTYPES[dtype]
    if dtype == "string":
        try:
            return as_str_objects(arr)  # not .astype(str): that pads every cell to the longest one
        except UnicodeDecodeError:
            _not_utf8(arr, name, keys, source, offset)
    if arr.dtype.kind in "UST" or (arr.dtype == object and any(isinstance(v, str | bytes) for v in arr.flat)):
        raise UserError(f"{_where(source)}input '{name}' expects {dtype} but the data holds strings — fix the input "
                        "dtype or column")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN→int are reported by check_values
            out = np.asarray(arr, dtype=target)
            return np.ascontiguousarray(out) if out.ndim else out  # ascontiguousarray makes a scalar 1-d
    except (TypeError, ValueError):
        raise UserError(f"{_where(source)}input '{name}' expects {dtype} but the data holds {arr.dtype} — fix the "
                        "input dtype or column") from None


def _not_utf8(arr: np.ndarray, name: str, keys, source, offset: int) -> None:
    """Bytes cells (a parquet binary column, a numpy `S` array) are decoded as UTF-8 text; refuse those that are
    not, naming the column and the row (scored as some other text they would be no level the model knows)."""
    cells = np.asarray(arr, dtype=object)
    bad = _undecodable(cells)
    at, where, rows = _first_bad(bad, keys if keys is not None else name, name, offset)
    value = cells.reshape(len(bad), -1)[at] if bad.ndim else cells.item()
    raise UserError(f"{_where(source)}{where} holds bytes that are not UTF-8 text ({value[:20]!r}) at {rows} — "
                    "store the text as UTF-8 (a parquet string column, a numpy str array)")


def _undecodable(cells: np.ndarray) -> np.ndarray:
    """Which cells are bytes that are not UTF-8 text (True) — str, None and numbers are not."""
    def bad_cell(v):
        try:
            v.decode("utf-8") if isinstance(v, bytes) else None
        except UnicodeDecodeError:
            return True
        return False

    return np.asarray(np.frompyfunc(bad_cell, 1, 1)(np.asarray(cells, dtype=object)), dtype=bool)


def _fit_rank(arr: np.ndarray, shape: list, name: str, source=None, columns=None, hint=None,
              npy: bool = False) -> np.ndarray:
    if shape and arr.ndim != len(shape):
        if arr.ndim + 1 == len(shape) and shape[-1] == 1:
            arr = arr.reshape(*arr.shape, 1)
        elif arr.ndim == 2 and len(shape) > 2 and all(isinstance(d, int) for d in shape[1:]) and \
                arr.shape[1] == int(np.prod(shape[1:])):
            arr = arr.reshape(arr.shape[0], *shape[1:])  # flattened images, e.g. digits rows → [N, 1, 8, 8]
    fixed_ok = arr.ndim == len(shape) and all(
        not isinstance(d, int) or d < 0 or i == 0 or arr.shape[i] == d for i, d in enumerate(shape))
    if shape and not fixed_ok:  # a batch dim (i == 0) may differ: callers tile or slice rows
        got = f"{len(columns)} columns, shape {list(arr.shape)}" if columns else f"shape {list(arr.shape)}"
        fix = ("save the array in that shape (numpy.save)" if npy else "fix the data, or " + hint if hint else
               "fix the data or the inputs[] shape/columns")
        raise UserError(f"{_where(source)}input '{name}' takes shape {shape} but the data gives {got} — {fix}")
    return arr


def check_values(arr: np.ndarray, raw: np.ndarray, name: str, keys, source=None, *, nonfinite: str = "refuse",
                 fix: str | None = None, offset: int = 0) -> None:
    """Refuse NaN/±inf in a float input (`nonfinite`: 'refuse'; 'nan' lets NaN through; 'pass' lets all through)
    and float values an integer input cannot hold (NaN, fractions). `arr` is the cast input, `raw` the data before.
    Why: a NaN calibration row breaks quantization scales, a NaN evaluation row makes comparisons meaningless, and
    a model that does not handle missing values scores them silently wrong."""
    if arr.dtype == object:  # text: a missing cell (None, an empty CSV cell) is no level of any category
        # and a NUL never reaches the model as sent (a numpy str array drops a trailing one, so 'red\0' scored
        # as 'red', a level scikit-learn calls unknown; onnxruntime's string tensors fail on it): one pass for both
        kind = np.frompyfunc(_text_kind, 1, 1)(arr).astype(np.int8) if arr.ndim else np.asarray(
            _text_kind(arr.item()))
        if (kind == 2).any():
            _, where, rows = _first_bad(kind == 2, keys, name, offset)
            raise UserError(f"{_where(source)}{where} holds a NUL character at {rows} — a text input cannot carry "
                            "one: remove it from the category")
        missing = kind == 1
        if not missing.any():
            return
        if nonfinite == "pass":  # --allow-nan: scored as the text 'nan', as before this check existed
            arr[missing] = "nan"
            return
        _, where, rows = _first_bad(missing, keys, name, offset)
        # the caller's NaN advice is about numbers (NaN, ±inf); only its --allow-nan applies to text
        allow = ", or pass --allow-nan to score it as the text 'nan'" if fix and "--allow-nan" in fix else ""
        raise UserError(f"{_where(source)}{where} has a missing value (empty cell or null) at {rows} — a text "
                        f"input has no missing level: fill those cells with a category or drop those rows{allow}")
    if arr.dtype.kind == "f":
        if nonfinite == "pass":
            return
        bad = ~np.isfinite(arr) if nonfinite == "refuse" else np.isinf(arr)
        values = arr
    elif arr.dtype.kind in "iu" and raw.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(raw) | (raw != np.trunc(raw))
        values = raw
    else:
        return
    if not bad.any():
        return
    at, where, rows = _first_bad(bad, keys, name, offset)
    shape = (len(bad), -1) if bad.ndim else (1, 1)  # the (rows, -1) view _first_bad counted in
    value = values.reshape(shape)[at]
    before = raw.reshape(shape)[at] if raw.dtype.kind == "f" else value
    what = "NaN (a missing value)" if np.isnan(value) else f"{before:g}"
    why = ""
    if arr.dtype.kind in "iu":
        why = f" (an {arr.dtype} input cannot hold it)"
        # the caller's NaN advice (--allow-nan) does not apply: an integer input holds no NaN and no fraction
        fix = ("give whole numbers for an integer input (it is never rounded for you)" if np.isfinite(value)
               else "drop or fill those rows: an integer input cannot hold a missing value (--allow-nan does not "
                    "change that)")
    elif np.isinf(value) and np.isfinite(before):
        why = f" (beyond {arr.dtype}'s range)"
    raise UserError(f"{_where(source)}{where} holds {what} at {rows}{why} — "
                    f"{fix or 'drop or impute those rows before using the data'}")


def _text_kind(v) -> int:
    """A text cell: 0 text, 1 missing, 2 text holding a NUL."""
    return 1 if v is None else 2 if (b"\0" if isinstance(v, bytes) else "\0") in v else 0


def _first_bad(bad: np.ndarray, keys, name: str, offset: int) -> tuple[tuple[int, int], str, str]:
    """Where the first flagged cell of an input is — its (row, element) in the (rows, -1) view, the column or input
    that holds it, and 'row R and N more rows' — for check_values' one-line refusals."""
    flat = bad.reshape(len(bad), -1) if bad.ndim else bad.reshape(1, 1)
    row, j = (int(v) for v in np.argwhere(flat)[0])
    if isinstance(keys, list) and len(keys) == flat.shape[1]:
        where = f"column '{keys[j]}' (input '{name}')"
    else:
        where = f"'{keys}'" if keys and keys != name else f"input '{name}'"
        where += f" element {j}" if flat.shape[1] > 1 else ""
        where += f" (input '{name}')" if keys and keys != name else ""
    n = int(flat.any(1).sum())
    rows = f"row {row + offset}" + (f" and {n - 1} more row{'s' if n > 2 else ''}" if n > 1 else "")
    return (row, j), where, rows


def _keys_for(spec, specs, table, source=None, hint=None) -> list[str] | str:
    """The table keys an input reads: its `columns` (stacked), else `column`/name (a list or a single key)."""
    fix = hint or "set inputs[].column (one key) or inputs[].columns (several) in the config"
    if list(table) == [""]:  # an .npy: one unnamed array, so no column or name can pick it (see tables._npy)
        if len(specs) == 1:  # it feeds the one input, whatever columns convert stamped (its shape is checked)
            return ""
        raise UserError(f"{_where(source)}a .npy holds one unnamed array but the model has {len(specs)} inputs "
                        f"({', '.join(s.name for s in specs)[:200]}) — save one array per input in an .npz, each "
                        "named as its input (numpy.savez(path, **arrays)), or give a table with their columns")
    if spec.columns:
        missing = [c for c in spec.columns if c not in table]
        if len(missing) == len(spec.columns) and spec.name in table:
            # none of the columns, but the input's own name: a file holding the stacked [rows, k] matrix (an .npz
            # beside the parquet the columns are for) is matched by name, as an input without `columns` is
            return spec.name
        if missing:
            fix = hint or "store those columns in the file, or list the file's own in inputs[].columns"
            raise UserError(f"{_where(source)}input '{spec.name}': columns {missing} not in the data — available: "
                            f"{', '.join(sorted(table))[:200]}; {fix}")
        return list(spec.columns)
    key = spec.column or spec.name
    if key in table:
        return key
    if len(specs) == 1 and len(table) == 1:
        return next(iter(table))
    if len(specs) == 1 and "X" in table:
        return "X"
    raise UserError(f"{_where(source)}input '{spec.name}': no '{key}' in the data — available: "
                    f"{', '.join(sorted(k or '<array>' for k in table))[:200]}; {fix}")


class Keys(list):
    """Table keys, and in `text` those that feed only text inputs: a reader of an untyped file (CSV) reads them as
    written — "02139" stays "02139", not the number 2139 whose text "2139" is another category level."""

    text: tuple = ()


def input_keys(specs, keys, source=None, hint=None) -> Keys:
    """Every key of a table with `keys` that the inputs read (so a reader can skip the rest), with `.text`."""
    out, text, other = Keys(), set(), set()
    for spec in specs:
        k = _keys_for(spec, specs, keys, source, hint)
        for key in k if isinstance(k, list) else [k]:
            (text if spec.dtype == "string" else other).add(key)
            if key not in out:
                out.append(key)
    out.text = tuple(k for k in out if k in text and k not in other)  # a key a number input reads too: as it was
    return out


def key_specs(specs, keys, source=None, hint=None) -> dict:
    """Every key of a table with `keys` that the inputs read → the spec of the input that reads it."""
    out: dict = {}
    for spec in specs:
        k = _keys_for(spec, specs, keys, source, hint)
        for key in k if isinstance(k, list) else [k]:
            out.setdefault(key, spec)
    return out


def with_columns(specs, mapping: Mapping[str, list[str]], flag: str = "--columns") -> list:
    """Specs whose inputs read the given table columns (NAME → [c1, c2, ...]); one column is read as is, several
    are stacked into [rows, k] — the same mapping as `inputs[].column/columns` in a config."""
    names = [s.name for s in specs]
    unknown = [n for n in mapping if n not in names]
    if unknown:
        raise UserError(f"{flag} {unknown[0]}=...: the model has no input '{unknown[0]}' — its inputs are "
                        f"{', '.join(names)}")
    out = []
    for s in specs:
        cols = mapping.get(s.name)
        if cols:
            upd = {"column": cols[0], "columns": None} if len(cols) == 1 else {"column": None, "columns": list(cols)}
            s = s.model_copy(update=upd)
        out.append(s)
    return out


def parse_columns(items: list[str] | None, flag: str = "--columns") -> dict[str, list[str]]:
    """'NAME=c1,c2,...' flags → {NAME: [c1, c2, ...]}. The list is read as a CSV line, so a column whose name
    holds a comma is written in double quotes, as a CSV header writes it: NAME="a,b",c."""
    import csv

    out: dict[str, list[str]] = {}
    for item in items or []:
        name, sep, cols = item.partition("=")
        listed = [c.strip() for c in next(csv.reader([cols.strip()], skipinitialspace=True), [""])]
        listed = [] if cols.count('"') % 2 else listed  # an unclosed quote would swallow the rest silently
        if not sep or not name.strip() or not listed or not all(listed):
            raise UserError(f"{flag} '{item}' is not INPUT=COL1,COL2,... — write an input name, '=', then table "
                            "columns separated by commas (a name holding a comma in double quotes: INPUT=\"a,b\",c)")
        if name.strip() in out:
            raise UserError(f"{flag} {name.strip()}=... is given twice — give each input once")
        out[name.strip()] = listed
    return out


def _check_numeric(col: np.ndarray, key: str, spec, source, offset: int = 0) -> None:
    if col.dtype.kind in "UST" or col.dtype == object:
        cells = col.reshape(len(col), -1)[:, 0] if col.ndim else [col.item()]
        texts = [(i, v) for i, v in enumerate(cells) if isinstance(v, str)]
        if not texts and col.dtype == object:
            return
        text = next(((i, v) for i, v in texts if not _is_number(v)), texts[0] if texts else None)
        col_name = f" in column '{key}'" if key and key != spec.name else ""
        at = f" ({text[1][:20]!r}{col_name}, row {offset + text[0]})" if text else ""  # file row, not chunk row
        raise UserError(f"{_where(source)}input '{spec.name}' expects {spec.dtype} but the data holds strings{at} — "
                        "fix those cells, or the input's dtype")


def _check_text(col: np.ndarray, key: str, spec, source, offset: int = 0) -> None:
    """A typed number (parquet/npz column, JSON number) for a text input: scikit-learn refuses it, and as text it
    would score as an unknown level ('5' is no category the encoder learned) — refuse it by name. Judged by the
    column's dtype first: a text column (every cell str or None, the usual case) costs no Python loop per cell."""
    cells = col.reshape(len(col), -1)[:, 0] if col.ndim else np.asarray([col.item()], dtype=object)
    kind = cells.dtype.kind
    if kind in "biufc":  # a numeric column: its first cell that is not NaN (NaN: a null, judged later)
        present = np.flatnonzero(~np.isnan(cells)) if kind in "fc" else np.arange(min(len(cells), 1))
        hit = (int(present[0]), cells[present[0]].item()) if len(present) else None
    elif kind != "O" or _all_text(cells):
        return
    else:  # mixed cells (JSON records, a DataFrame the caller built): the first typed number
        hit = next(((i, v.item() if hasattr(v, "item") else v) for i, v in enumerate(cells)
                    if isinstance(v, bool | int | float | np.number | np.bool_) and not (
                        isinstance(v, float | np.floating) and np.isnan(v))), None)
    if hit is None:
        return
    col_name = f" column '{key}'," if key and key != spec.name else ""
    what = "a boolean" if isinstance(hit[1], bool | np.bool_) else "a number"  # JSON true is no number to a user
    raise UserError(f"{_where(source)}input '{spec.name}' takes text but the data holds {what} ({hit[1]!r} in"
                    f"{col_name} row {offset + hit[0]}) — give the category as text (e.g. \"{hit[1]}\"), or "
                    "declare the input int64/float32 if the model encodes numbers")


def _all_text(cells: np.ndarray) -> bool:
    """Every cell of an object column str or missing, at C speed: pandas' infer_dtype where a reader (CSV,
    parquet, a DataFrame) has loaded pandas (~10 ms per million cells), else set(map(type)) (~30 ms); the loop
    over cells it replaces took ~0.5 s per million."""
    pd = sys.modules.get("pandas")  # not imported for this: serve's JSON path never loads it
    if pd is not None:
        return pd.api.types.infer_dtype(cells, skipna=True) in ("string", "empty")  # skipna: None and NaN
    return set(map(type, cells)) <= {str, type(None)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def feeds_from_table(table: Mapping[str, np.ndarray], specs, rows: int | None = None, *, source=None,
                     nonfinite: str = "refuse", fix: str | None = None, hint: str | None = None,
                     offset: int = 0) -> dict[str, np.ndarray]:
    """Pick each input's array from the table by `column`/`columns`/name, cast and shape it to the spec, and check
    it before use: rows, shape, dtype, finite values (see check_values). Only those columns are read from a lazy
    table. `source` names the file in messages (a Table knows its own); `fix` replaces the NaN advice, `hint`
    the column-mapping advice."""
    source = source or getattr(table, "path", None)
    if hasattr(table, "load"):
        table.load(input_keys(specs, list(table), source, hint))  # one pass over the file for all of them
    # a CSV types no cell: its text columns were read as written (Keys.text), a number there is a text of digits
    typed = getattr(table, "typed", True)
    feeds = {}
    for spec in specs:
        key = _keys_for(spec, specs, table, source, hint)
        cols = [np.asarray(table[c]) for c in (key if isinstance(key, list) else [key])]
        if is_whole(spec):  # a state tensor or scalar: the file holds it whole, whatever the rows of other inputs
            raw = cols[0] if len(cols) == 1 else np.stack(cols)
            arr = cast(raw, spec.dtype, spec.name, source, key)
            _check_whole(arr, spec, source)
            check_values(arr, raw, spec.name, key, source, nonfinite=nonfinite, fix=fix, offset=offset)
            feeds[spec.name] = arr
            continue
        cols = [c[:rows] if rows and c.ndim else c for c in cols]
        if any(c.ndim and len(c) == 0 for c in cols):
            raise UserError(f"{_where(source)}no rows for input '{spec.name}' — the data must hold at least one "
                            "row")
        if spec.dtype != "string":  # name the column a CSV read as text (one odd cell makes the whole column str)
            for k, c in zip(key if isinstance(key, list) else [key], cols, strict=True):
                _check_numeric(c, k, spec, source, offset)
        elif typed:
            for k, c in zip(key if isinstance(key, list) else [key], cols, strict=True):
                _check_text(c, k, spec, source, offset)
        if isinstance(key, list):
            lens = {len(c) for c in cols}
            if len(lens) > 1:
                raise UserError(f"{_where(source)}columns {key} have different row counts {sorted(lens)} — one "
                                "table per file")
            wide = next((k for k, c in zip(key, cols, strict=True) if c.ndim != 1), None)
            if wide is not None:  # stacking needs one value per row and column
                shape = list(np.shape(table[wide]))
                raise UserError(f"{_where(source)}column '{wide}' has shape {shape}, not one value per row — input "
                                f"'{spec.name}' stacks {len(key)} columns into shape {spec.shape}; fix the data or "
                                "the columns listed")
            raw = np.stack(cols, axis=1)
        else:
            raw = cols[0]
        # an .npy's one array has no columns to map: its shape is the fix (--columns cannot name it)
        raw = _fit_rank(raw, spec.shape, spec.name, source, key if isinstance(key, list) else None,
                        hint if key != "" else None, npy=key == "")
        arr = cast(raw, spec.dtype, spec.name, source, key, offset)
        check_values(arr, raw, spec.name, key, source, nonfinite=nonfinite, fix=fix, offset=offset)
        feeds[spec.name] = arr
    out = Feeds(feeds)
    out.whole = frozenset(s.name for s in specs if is_whole(s))
    out.rows_per_run = getattr(specs, "rows_per_run", None)
    n = {len(v) for k, v in feeds.items() if v.ndim and k not in out.whole}
    if len(n) > 1:
        raise UserError(f"{_where(source)}inputs have different row counts {sorted(n)} — all batched inputs must "
                        "share the batch dim (mark an input without one `batched: false` under inputs:)")
    return out


def _check_whole(arr: np.ndarray, spec, source) -> None:
    """An input fed whole must have exactly the model's shape (no rows to slice or tile it to)."""
    shape = spec.shape or []
    if arr.ndim != len(shape) or any(isinstance(d, int) and d > 0 and a != d for a, d in zip(arr.shape, shape,
                                                                                           strict=True)):
        raise UserError(f"{_where(source)}input '{spec.name}' has no batch axis and takes shape {shape} as a whole, "
                        f"but the data gives shape {list(arr.shape)} — give it exactly that shape")


def synthesize(specs, rows: int, seed: int = 0) -> Feeds:
    """Inputs made from the spec alone: uniform in [low, high), categories drawn from the listed levels, `value`
    where one is given. Batched inputs get `rows` rows (a multiple of the batch a model pins); inputs without a
    batch axis (see inputspec) get their declared shape once; other symbolic dims are 1 unless resolved."""
    if getattr(specs, "unresolved", None):
        raise UserError(specs.unresolved)
    whole_names = frozenset(s.name for s in specs if is_whole(s))
    shapes = {spec.name: _synth_shape(spec, rows, spec.name in whole_names) for spec in specs}
    fit = _rows_within_cap(shapes, whole_names, rows)
    if fit < rows:  # big inputs (images, audio): fewer rows rather than a refusal; one row must still fit
        shapes = {spec.name: _synth_shape(spec, fit, spec.name in whole_names) for spec in specs}
    _check_synthetic(shapes)
    rng = np.random.default_rng(seed)
    feeds = Feeds()
    for spec in specs:
        shape = shapes[spec.name]
        if spec.value is not None and spec.dtype != "string":
            arr = np.full(shape, spec.value)
        elif spec.categories:
            arr = np.asarray(spec.categories)[rng.integers(0, len(spec.categories), size=shape)]
        elif spec.dtype == "string":
            raise UserError(f"input '{spec.name}' is a string input: list its categories to synthesize data")
        elif spec.dtype == "bool":
            arr = rng.random(shape) < 0.5
        elif spec.dtype.startswith(("int", "uint")):
            arr = rng.integers(int(spec.low), max(int(spec.high), int(spec.low) + 1), size=shape)
        else:
            arr = rng.uniform(spec.low, spec.high, size=shape)
        feeds[spec.name] = cast(arr, spec.dtype, spec.name)
    feeds.whole = whole_names
    feeds.rows_per_run = getattr(specs, "rows_per_run", None)
    if isinstance(getattr(specs, "log", None), list):  # the input model's specs: summaries say what was made
        from onnxforge.inputspec import describe

        specs.log.append(describe(feeds, specs))
    return feeds


def _rows_within_cap(shapes: dict[str, list[int]], whole_names, rows: int) -> int:
    from onnxforge import limits

    cap = limits.max_synthetic_elements()
    batched = [n for n in shapes if n not in whole_names and shapes[n]]
    if cap is None or not batched or rows <= 1:
        return rows
    fixed = sum(math.prod(v) for n, v in shapes.items() if n not in batched)
    per_row = sum(math.prod(shapes[n][1:]) for n in batched)
    return max(1, min(rows, (cap - fixed) // max(per_row, 1)))


def is_whole(spec) -> bool:
    """No batch axis: a scalar, or an input the input model (or the user) marked batched: false."""
    return spec.batched is False or (spec.shape is not None and len(spec.shape) == 0)


def _synth_shape(spec, rows: int, whole_input: bool) -> list[int]:
    dims = list(getattr(spec, "_synth", None) or (spec.shape if spec.shape is not None else ["batch"]))
    out = [d if isinstance(d, int) and d >= 0 else 1 for d in dims]  # a fixed 0 stays 0: onnxruntime pins it
    if not whole_input and dims:
        d0 = dims[0]
        out[0] = max(d0, rows // d0 * d0) if isinstance(d0, int) and d0 > 0 else rows
    return out


def _check_synthetic(shapes: dict[str, list[int]]) -> None:
    """Every synthesized feed set goes through here: a 79-byte model may declare [1, 100000000] (1.3 GB)."""
    from onnxforge import limits

    cap = limits.max_synthetic_elements()
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if cap is None or sum(sizes.values()) <= cap:
        return
    name = max(sizes, key=sizes.get)
    others = f" ({sum(sizes.values()):,} for all inputs)" if len(sizes) > 1 else ""
    raise UserError(f"input '{name}': synthesizing shape {shapes[name]} takes {sizes[name]:,} elements{others}, "
                    f"over the {cap:,}-element cap for synthetic inputs — give real data (--data FILE) or a smaller batch or shape, or raise the cap "
                    f"with {limits.SYNTH_ENV}=N (0 = no cap)")


def specs_from_model(model) -> list:
    """Input specs read off an ONNX graph (initializers that are also inputs are skipped)."""
    from onnxforge.config import TensorSpec

    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        # -1 in dim_value appears in real files and means "dynamic" to onnxruntime; a 0 past dim 0 is a fixed
        # 0-size dim onnxruntime enforces ("Expected: 0"): the input holds no values and is fed empty. A 0 at dim 0
        # stays free, as the batch axis has always been read.
        dims = [d.dim_value if d.HasField("dim_value") and (d.dim_value > 0 or (i and d.dim_value == 0))
                else (d.dim_param or None) for i, d in enumerate(tt.shape.dim)]
        if not tt.HasField("shape"):  # rank unknown: guess one batched axis (the input model probes it)
            dims = ["batch"]
        specs.append(TensorSpec(name=inp.name, dtype=ONNX_TO_DTYPE.get(tt.elem_type, "float32"), shape=dims))
    return specs


def fixed_batch(model) -> int | None:
    """The batch size a model's inputs pin (an int first dim shared by every input), or None when it is free."""
    inits = {i.name for i in model.graph.initializer}
    dims = set()
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = inp.type.tensor_type.shape.dim
        dims.add(shape[0].dim_value if shape and shape[0].HasField("dim_value") and shape[0].dim_value > 0 else None)
    return dims.pop() if len(dims) == 1 and None not in dims else None


def tile_rows(feeds: dict[str, np.ndarray], n: int) -> Feeds:
    """Exactly n rows per batched input: the first n, or the data repeated when it has fewer rows than n (inputs
    without a batch axis stay whole). Refused over the memory cap: n may be a batch size a model pins (its
    declared shape), not one the user chose."""
    from onnxforge import limits

    skip = whole(feeds)
    cap = limits.max_data_bytes()
    need = sum(np.asarray(v).nbytes // max(len(v), 1) * n for k, v in feeds.items() if k not in skip)
    if cap is not None and need > cap:
        raise UserError(f"a batch of {n:,} rows takes {limits.human(need)} of inputs, over the {limits.human(cap)} "
                        f"memory cap — choose a smaller batch, or raise the cap with {limits.DATA_ENV}=SIZE "
                        "(0 = no cap)")
    out = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        if k in skip:
            out[k] = v
            continue
        idx = np.arange(n) % max(len(v), 1)
        out[k] = np.ascontiguousarray(v[idx])
    return feeds_like(feeds, out)


def n_rows(feeds: dict[str, np.ndarray]) -> int:
    """Rows of the batched inputs; 1 when every input is fed whole (the feed set is one sample)."""
    skip = whole(feeds)
    batched = [v for k, v in feeds.items() if k not in skip and np.ndim(v)]
    return len(batched[0]) if batched else (1 if feeds else 0)


def batches(feeds: dict[str, np.ndarray], size: int) -> Iterator[Feeds]:
    n = n_rows(feeds)
    for i in range(0, n, size):
        yield rows_slice(feeds, slice(i, i + size))


def take(feeds: dict[str, np.ndarray], n: int) -> Feeds:
    return rows_slice(feeds, slice(0, n))


def rows_slice(feeds: dict[str, np.ndarray], idx) -> Feeds:
    """Rows `idx` (a slice or an index array) of every batched input; whole inputs as they are."""
    skip = whole(feeds)
    return feeds_like(feeds, {k: (v if k in skip or not np.ndim(v) else v[idx]) for k, v in feeds.items()})


# ------------------------------------------------------------------ labels: user data too, checked before use

LABELS_FIX = "give one label per data row (a number or a string) in the data.labels / --labels column"


def check_labels(labels, rows: int | None = None, *, key: str | None = None, source=None) -> np.ndarray:
    """The one check of ground-truth labels/targets, for every caller (the pipeline's labels, report, quantize
    budgets, task metrics): `rows` labels (the data's row count) when given, one value per row, finite numbers or
    strings. Returns them as a 1-D array; bytes (a numpy `S` array, a parquet binary column) decoded as UTF-8 text,
    as inputs are. Why: labels shorter than the data broadcast into numpy errors, an empty or zero-width column
    reshapes into nothing, a NaN target turns MAE/RMSE/R² into NaN silently, and b'café' is no class 'café'."""
    what = f"{_where(source)}labels '{key}'" if key else f"{_where(source)}the labels"
    y = np.asarray(labels)
    if y.ndim == 0:
        raise UserError(f"{what} hold one value (shape []), not one per row — {LABELS_FIX}")
    if y.dtype.kind not in "biufUSO":
        raise UserError(f"{what} hold {y.dtype} values — {LABELS_FIX}")
    if y.dtype == object and not all(isinstance(v, str | bytes) or v is None for v in y.flat):
        kinds = sorted({type(v).__name__ for v in y.flat if not isinstance(v, str | bytes) and v is not None})
        raise UserError(f"{what} hold {', '.join(kinds)} values — {LABELS_FIX}")
    if len(y) == 0:
        raise UserError(f"{what} hold no rows{f' (the data has {rows})' if rows else ''} — {LABELS_FIX}")
    if y.ndim > 1 and math.prod(y.shape[1:]) != 1:
        raise UserError(f"{what} have shape {list(y.shape)}, not one value per row — {LABELS_FIX}")
    y = y.reshape(len(y))
    if rows is not None and len(y) != rows:
        raise UserError(f"{what} hold {len(y)} rows but the data has {rows} — {LABELS_FIX}")
    if y.dtype.kind == "S" or y.dtype == object:
        y = _text_labels(y, what)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            at = np.flatnonzero(bad)
            more = f" and {len(at) - 1} more" if len(at) > 1 else ""
            raise UserError(f"{what} hold {y[at[0]]} at row {at[0]}{more} — drop those rows or fix the labels "
                            "column (data.labels / --labels)")
    return y


def _text_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Text labels as an object array of str: bytes decoded as UTF-8 (the inputs' as_str_objects); bytes that are
    not UTF-8 and missing cells (None: an empty CSV cell, a parquet null) refused, naming the first row."""
    try:
        out = as_str_objects(y)
    except UnicodeDecodeError:
        at = np.flatnonzero(_undecodable(y))
        more = f" and {len(at) - 1} more" if len(at) > 1 else ""
        raise UserError(f"{what} hold bytes that are not UTF-8 text ({y[at[0]][:20]!r}) at row {at[0]}{more} — "
                        "store the labels as UTF-8 text (a numpy str array, a parquet string column)") from None
    at = np.flatnonzero(np.frompyfunc(lambda v: v is None, 1, 1)(out).astype(bool))
    if len(at):
        more = f" and {len(at) - 1} more" if len(at) > 1 else ""
        raise UserError(f"{what} hold a missing value (empty cell or null) at row {at[0]}{more} — drop those rows "
                        "or fill the labels column (data.labels / --labels)")
    return out


def label_column(table, key: str) -> np.ndarray:
    """Column `key` of a data table as labels. A CSV types no cell: the column is read as written (Table.load's
    text reading, as a text input's), so a class "007" or "02139" is not the number 7 or 2139, whose text is no
    class the model knows. Where every cell spells its number exactly ("3", "0.5"), the numbers are given, as the
    file always gave them (a finetune hook, a regression target); task metrics compare a text label with a number
    class as a number."""
    if getattr(table, "typed", True):
        return np.asarray(table[key])
    table.load([key], text=[key])
    y = np.asarray(table[key])
    return _spelled_numbers(y) if y.dtype == object and y.ndim == 1 else y


def _spelled_numbers(y: np.ndarray) -> np.ndarray:
    """`y` (text cells) as int64 or float64 when each cell is its number's own spelling ("7", "0.5", "nan" — not
    "007", "1e3", " 7"); else `y` as written."""
    cells = y.tolist()
    if not all(isinstance(v, str) for v in cells):
        return y  # a missing cell: check_labels names it
    try:
        ints = [int(v) for v in cells]
        if [str(n) for n in ints] == cells:
            return np.asarray(ints, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    nums = []
    for v in cells:
        try:
            n = float(v)
        except ValueError:
            return y
        if repr(n) != v and not (v.lstrip("-").isdigit() and str(int(v)) == v and abs(n) < 2**53):
            return y  # (an int beside fractions is a float, as pandas reads it, where float64 holds it exactly)
        nums.append(n)
    return np.asarray(nums, dtype=np.float64)


def read_labels(path, key: str, rows: int | None = None, *, specs=None) -> np.ndarray:
    """Labels column `key` of data file `path` (its first `rows` rows, see label_column), checked by check_labels;
    against the row count of the inputs `specs` read from the same file when given (else task metrics check the
    count against the predictions, without naming the file)."""
    table = load_table(path)
    if key not in table:
        raise UserError(f"data.labels: no '{key}' in {path} — available: {', '.join(sorted(table))[:200]}; set "
                        "data.labels / --labels to one of them")
    y = label_column(table, key)
    n = None
    if specs:
        first = np.asarray(table[input_keys(specs, list(table), path)[0]])
        n = min(len(first), rows or len(first)) if first.ndim else None
    return check_labels(y[:rows] if rows and y.ndim else y, n, key=key, source=path)

"""One scorer for every way an artifact scores rows: `predict` (a file, or a dataset on a process pool or Dask),
the HTTP server and the Python API.

`Scorer(model)` reads the model once through the admission gate, then maps named columns — a dict of arrays, a
pandas DataFrame, a pyarrow Table/RecordBatch or a list of dict records — onto the model's inputs through the
`onnxforge.input_spec` metadata convert stamps (each spec's `column`/`columns`, else its name), casts and checks
them as predict always has (strings in numeric columns, NaN by the model's stamped policy, unseen categorical
levels under the `error` policy), runs them through a `Predictor` (bound buffers: the fast path at small batches)
and names the outputs as predict writes them (`label`, `probabilities_<class>`, PyMC `mean`, `std`,
`quantiles_q0.05`, `draws_0`…).

Seeds: `Scorer(model, seed=s)` reseeds the random nodes of a stochastic artifact once, and its draws then run on
as one stream across calls (so chunking a file changes nothing). `scorer(rows, seed=s)` scores that call on a
fresh session reseeded with `s`: the same rows and seed give the same draws whatever ran before — what a server
request or one partition of a parallel run needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.artifact import meta_json
from onnxforge.errors import UserError

RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli"}
COLUMNS_HINT = "map table columns onto it with --columns INPUT=COL1,COL2,..."


def reseed(model, seed: int) -> int:
    """Give every random node a seed derived from `seed` and its position: a fresh onnxruntime session then
    replays the same draws. Seeds differ per node (identical streams would correlate) and are scrambled below
    2**24 (the attribute is a float; onnxruntime's generator starts poorly from small seeds). Returns the count."""
    from onnx import helper

    from onnxforge.summary import all_nodes

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


def derived_seed(seed: int, key: Any) -> int:
    """A seed for one part of a run (a partition, a request id): independent streams, reproducible per key."""
    return int.from_bytes(hashlib.sha256(f"{seed}:part:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def input_specs(model, where=None) -> list:
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


def nan_policy(meta: dict, allow_nan: bool, flag: bool = True) -> tuple[str, str]:
    """(what non-finite values may reach the model, the advice when one may not). NaN passes where convert stamped
    that the model scores missing values as its source framework does (tree ensembles); --allow-nan passes all.
    flag=False: advice for a caller that has no --allow-nan (an HTTP client of serve)."""
    if allow_nan:
        return "pass", ""
    if meta.get("onnxforge.accepts_missing") == "true":
        return "nan", ("this model takes NaN as a missing value but not ±inf: fix those rows"
                       + (", or pass --allow-nan" if flag else ""))
    return "refuse", ("this model was not stamped as handling missing values: "
                      + ("drop or impute those rows, or pass --allow-nan to score them anyway" if flag
                         else "send a number (or drop the record)"))


def levels(meta: dict, where=None) -> tuple[dict[str, list], dict[str, str]]:
    """(categories, unseen policies) stamped by convert: input → its known levels, input → 'error' or another."""
    from onnxforge.artifact import META_FIX

    cats = meta_json(meta, "categories", dict, {}, items=list, where=where)
    empty = next((name for name, lv in cats.items() if not lv), None)
    if empty is not None:
        raise UserError(f"{where or 'the model'}: metadata onnxforge.categories lists no levels for input "
                        f"'{empty}' — {META_FIX}")
    return cats, meta_json(meta, "unseen_policy", dict, {}, items=str, where=where)


def check_levels(feeds, levels_policy: tuple[dict[str, list], dict[str, str]], offset: int, source=None) -> None:
    """Unseen categories under the `error` policy: refuse with the levels and rows (the graph would fail too);
    `source` names the file, as every other data error does."""
    cats, policy = levels_policy
    for name, known_levels in cats.items():
        if policy.get(name, "error") != "error" or name not in feeds:
            continue
        raw = np.asarray(feeds[name]).reshape(-1)
        if isinstance(known_levels[0], str):  # a set, not .astype(str): that pads every cell to the longest
            known = {str(v) for v in known_levels}
            bad = np.fromiter((str(v) not in known for v in raw), bool, len(raw))
        else:
            bad = ~np.isin(raw, np.asarray(known_levels))
        if bad.any():
            rows = (np.flatnonzero(bad) + offset)[:3].tolist()
            lv = sorted({str(v) for v in raw[bad]})[:5]
            where = f"{source}: " if source else ""
            raise UserError(f"{where}input '{name}': unseen level(s) {lv} at row(s) {rows} and the model's unseen "
                            f"policy is 'error' — known levels: {', '.join(map(str, known_levels[:10]))}")


def named_columns(name: str, arr, names: list[str] | None) -> dict[str, np.ndarray]:
    """One output as table columns: a vector as is, [rows, k] as name_<label> (the stamped output_columns, else
    0..k-1), a ZipMap list of {label: p} as name_<label>."""
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


def as_table(data: Any, keys_wanted=None, check=None) -> Mapping[str, np.ndarray]:
    """Named columns of a dict of arrays/lists, a pandas DataFrame, a pyarrow Table/RecordBatch or a list of dict
    records, as numpy (strings as object arrays of str). `keys_wanted(keys)` picks the columns to convert (the
    others are never copied); `check(key, values)` sees each picked column of records as the client typed it."""
    from onnxforge.tables import column

    def pick(keys):
        return keys_wanted(list(keys)) if keys_wanted else list(keys)

    if isinstance(data, list | tuple):
        if not data or not all(isinstance(r, Mapping) for r in data):
            raise UserError("records come as a non-empty list of {column: value} dicts — give at least one record")
        keys = list(dict.fromkeys(k for r in data[:1] for k in r))
        out = {}
        for k in pick(keys):
            try:
                vals = [r[k] for r in data]
            except KeyError:
                i = next(i for i, r in enumerate(data) if k not in r)
                raise UserError(f"record {i} has no '{k}' — give every record the same keys") from None
            if check is not None:
                check(k, vals)
            out[k] = _array(vals, k)
        return out
    if hasattr(data, "to_numpy") and hasattr(data, "columns") and not hasattr(data, "schema"):  # pandas
        return {str(k): column(data[k]) for k in pick([str(c) for c in data.columns])}
    if hasattr(data, "schema") and hasattr(data, "column_names"):  # pyarrow Table / RecordBatch
        return {k: column(data.column(k).to_pandas()) for k in pick(list(data.column_names))}
    if isinstance(data, Mapping):
        out = {}
        for k in pick(list(data)):
            v = data[k]
            out[k] = v if isinstance(v, np.ndarray) else _array(v, k)
        return out
    raise UserError(f"rows come as a dict of columns, a DataFrame, a pyarrow Table or a list of records, not "
                    f"{type(data).__name__}")


def _array(values, key: str) -> np.ndarray:
    from onnxforge.tables import as_str_objects

    try:
        arr = np.asarray(values)
        if arr.dtype.kind in "US":  # fixed-width str drops a trailing NUL ('red\0' became 'red'): keep the cells
            arr = np.asarray(values, dtype=object)
    except (ValueError, TypeError):
        raise UserError(f"column '{key}' is ragged — give every row the same number of values") from None
    if arr.dtype.kind in "US" or (arr.dtype == object and any(isinstance(v, str | bytes) for v in arr.flat)):
        try:
            return as_str_objects(arr)  # not fixed-width: that pads every cell to the longest
        except UnicodeDecodeError:  # bytes that are not UTF-8: a text input refuses them by name (data.cast)
            return arr
    return arr


class Scorer:
    """Named columns in, named output columns out, with the artifact's own input spec and policies.

    `Scorer(path | bytes | ModelProto, threads=, providers=, seed=, columns=, allow_nan=)`; `scorer(rows)` returns
    {column: array} as predict writes them; `scorer.outputs(rows)` the raw outputs by name. `columns` maps table
    columns onto inputs ({input: [col, ...]}, as `inputs[].columns` in a config); `allow_nan` lets NaN/±inf reach
    a model not stamped as handling missing values. `model_bytes` rebuilds the same scorer in another process
    (`Scorer(blob, admitted=True, ...)` skips the gate the bytes already passed)."""

    def __init__(self, model: str | Path | bytes | Any, *, threads: int | None = None,
                 providers: list[str] | None = None, seed: int | None = None,
                 columns: Mapping[str, list[str]] | None = None, allow_nan: bool = False, name: str | None = None,
                 admitted: bool = False, lazy: bool = False):
        from onnxforge.data import with_columns

        self.proto, self.name = _load(model, name, admitted)
        self.model_bytes = self.proto.SerializeToString()  # before reseeding: per-call seeds start from it
        self.meta = {p.key: p.value for p in self.proto.metadata_props}
        self.threads, self.providers, self.seed = threads, providers, seed
        self.random_nodes = sum(1 for _ in _random_nodes(self.proto))
        self.reseeded_nodes = reseed(self.proto, seed) if seed is not None else 0
        hint = self.meta.get("onnxforge.rows_per_chunk")  # a memory hint: a positive row count
        self.rows_per_chunk = int(hint) if hint and hint.isdigit() and int(hint) > 0 else None
        specs = input_specs(self.proto, self.name)
        self.specs = with_columns(specs, columns) if columns else specs
        self.nonfinite, self.nan_fix = nan_policy(self.meta, allow_nan)
        self.output_columns = meta_json(self.meta, "output_columns", dict, {}, items=list, where=self.name)
        self.classes = meta_json(self.meta, "classes", list, [], where=self.name)  # a classifier's class labels
        self.levels = levels(self.meta, self.name)
        self.bayes = meta_json(self.meta, "bayes", dict, {}, where=self.name)  # a PyMC artifact's description
        self._pred = None if lazy else self._predictor(self.proto)  # lazy: a driver that never scores

    @property
    def predictor(self):
        """The Predictor that runs this scorer's session (built on first use when lazy)."""
        if self._pred is None:
            self._pred = self._predictor(self.proto)
        return self._pred

    @property
    def output_names(self) -> list[str]:
        return self.predictor.output_names

    @property
    def input_names(self) -> list[str]:
        return self.predictor.input_names

    def with_seed(self, seed: int) -> Scorer:
        """This scorer on a fresh session whose random nodes are reseeded with `seed`: its calls continue one
        stream from there (a partition scored in chunks). A deterministic artifact returns itself."""
        if not self.random_nodes:
            return self
        import copy

        import onnx

        proto = onnx.ModelProto.FromString(self.model_bytes)
        reseed(proto, seed)
        other = copy.copy(self)
        other.proto, other.seed, other.reseeded_nodes = proto, seed, self.random_nodes
        other._pred = other._predictor(proto)
        return other

    def _predictor(self, proto):
        from onnxforge.admission import open_session
        from onnxforge.score.predictor import Predictor

        sess = open_session(proto, name=self.name, threads=self.threads, provider_list=self.providers)
        # no caps (the rows come from the caller's own files, chunked); two shapes bound: a chunk and a tail
        return Predictor(sess, max_shapes=2, max_rows=None, max_bytes=None, max_string_length=None)

    # --- rows → feeds → outputs → columns

    def input_columns(self, keys, source: Any = None) -> list[str]:
        """The table columns the inputs read, of a table with `keys` (a reader can skip the rest)."""
        from onnxforge.data import input_keys

        return input_keys(self.specs, list(keys), source, COLUMNS_HINT)

    def feeds(self, rows: Any, *, offset: int = 0, source: Any = None, strict: bool = False):
        """Model inputs from named columns, cast and checked (`offset`: the first row's number in `source`).
        `strict`: rows that are a list of records are a client's request (serve's /predict, `records`): a key no
        input reads and a JSON type the input cannot take (true for a number) are refused, not dropped or cast."""
        from onnxforge.data import feeds_from_table

        check = None
        if strict and isinstance(rows, list | tuple) and rows and all(isinstance(r, Mapping) for r in rows):
            check = self._record_check(rows, source)
        table = rows if hasattr(rows, "load") else as_table(rows, lambda keys: self.input_columns(keys, source),
                                                            check)
        feeds = feeds_from_table(table, self.specs, source=source, nonfinite=self.nonfinite, fix=self.nan_fix,
                                 hint=COLUMNS_HINT, offset=offset)
        check_levels(feeds, self.levels, offset, source)
        if self.bayes:
            from onnxforge.bayes.families import check_param_inputs

            check_param_inputs(feeds, self.bayes, offset)
        return feeds

    def _record_check(self, records, source):
        """Refuse record keys no input reads (a typo beside the right key was dropped silently); return the
        per-column type check as_table runs on each column it converts."""
        import difflib

        from onnxforge.data import key_specs

        first = list(records[0])
        # every record's keys, at C speed (set.union), in the first record's order, then the others sorted
        rest = set().union(*records) - set(first)
        keys = first + sorted(rest, key=str)
        specs = key_specs(self.specs, keys, source, COLUMNS_HINT)
        unknown = [k for k in keys if k not in specs]
        if unknown:
            k = unknown[0]
            i = next(i for i, r in enumerate(records) if k in r)
            near = difflib.get_close_matches(str(k), [str(c) for c in specs], n=1)
            more = f" (and {', '.join(repr(u) for u in unknown[1:4])})" if len(unknown) > 1 else ""
            raise UserError(f"record {i} has key {k!r}{more} that no model input reads"
                            f"{f' (did you mean {near[0]!r}?)' if near else ''} — the model reads "
                            f"{', '.join(map(str, specs))[:300]}; drop or rename it")
        return lambda key, values: _check_record_types(key, values, specs[key])

    def run(self, feeds, *, seed: int | None = None, offset: int = 0, source: Any = None) -> dict[str, Any]:
        """Raw outputs by name, one entry per row each. `seed`: this call on a fresh session reseeded with it."""
        pred = self.predictor if seed is None else self.with_seed(seed).predictor
        n = max((len(v) for v in feeds.values() if np.ndim(v)), default=1)
        try:
            raw = pred(dict(feeds))
        except UserError as e:
            if e.__cause__ is None or not type(e.__cause__).__module__.startswith("onnxruntime"):
                raise
            msg = str(e.__cause__).split("Status Message:")[-1].strip().splitlines()[0]
            where = f" of {Path(str(source)).name}" if source is not None else ""
            raise UserError(f"onnxruntime refused rows {offset}-{offset + n - 1}{where}: {msg} — check those rows "
                            f"against the model's inputs (onnxforge inspect {Path(str(self.name)).name}) and fix "
                            "or drop them") from None
        self._check_per_row(raw, n)
        return raw

    def _check_per_row(self, raw: dict[str, Any], n: int) -> None:
        """Every output must hold one entry per input row (its first dim is the batch): scores are per row, and a
        scalar or a fixed-size output (a statistic over the batch, a state tensor) has no row to go with."""
        for name, arr in raw.items():
            shape = [len(arr)] if isinstance(arr, list) else list(np.shape(arr))
            if not shape or shape[0] != n:
                raise UserError(f"{self.name}: output '{name}' has shape {shape}, not one row per input row ({n} "
                                "rows scored) — predict writes per-row scores only: give that output a batch axis, "
                                "or remove it from the graph's outputs")

    def column_names(self, name: str, arr: Any) -> list | None:
        """The names of a [rows, k] output's columns: the stamped output_columns, else a classifier's class labels
        for its float [rows, classes] outputs (probabilities, scores), else None (0..k-1)."""
        cols = self.output_columns.get(name)
        if cols is None and self.classes and isinstance(arr, np.ndarray) and arr.dtype.kind == "f" and arr.ndim == 2:
            cols = self.classes
        return cols

    def columns(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Raw outputs as named table columns (see named_columns)."""
        cols: dict[str, np.ndarray] = {}
        for name, arr in raw.items():
            labels = self.column_names(name, arr)
            cols.update(named_columns(name, arr, [str(c) for c in labels] if labels else None))
        return cols

    def outputs(self, rows: Any, *, seed: int | None = None, offset: int = 0, source: Any = None) -> dict[str, Any]:
        return self.run(self.feeds(rows, offset=offset, source=source), seed=seed, offset=offset, source=source)

    def __call__(self, rows: Any, *, seed: int | None = None, offset: int = 0,
                 source: Any = None) -> dict[str, np.ndarray]:
        return self.columns(self.outputs(rows, seed=seed, offset=offset, source=source))

    def records(self, rows: Any, *, seed: int | None = None) -> list[dict[str, Any]]:
        """A list of {column: value} per row (JSON-ready Python values). A list of records is checked as serve's
        /predict checks a request (`feeds(strict=True)`): an unknown key or a boolean for a number is refused."""
        cols = self.columns(self.run(self.feeds(rows, strict=True), seed=seed))
        n = len(next(iter(cols.values()))) if cols else 0
        lists = {k: v.tolist() for k, v in cols.items()}
        return [{k: v[i] for k, v in lists.items()} for i in range(n)]


_BOOLS = (bool, np.bool_)


def _check_record_types(key: str, values: list, spec) -> None:
    """One column of records as the client typed it: a JSON boolean is no number (`true` scored as 1.0 hid a
    client's mistake), a bool input takes true/false (or 0/1), not 2, and a text input takes text (a number or
    boolean beside text cells became the text "5"/"False"). Costs one pass at C speed (set(map(type))) unless a
    wide input's rows are lists."""
    types = set(map(type, values))
    if spec.dtype == "string":
        if not types - {str, np.str_, bytes, np.bytes_, type(None)}:  # bytes: UTF-8 text (tables._text)
            return
        # NaN (pandas' missing text) is a missing value, refused as such further on
        j = next((j for j, v in enumerate(values) if not isinstance(v, str | bytes | type(None))
                  and not (isinstance(v, float | np.floating) and v != v)), None)
        if j is None:
            return
        v = values[j]
        what = (f"{str(bool(v)).lower()} (a boolean)" if isinstance(v, _BOOLS) else
                f"{v!r} (a number)" if isinstance(v, int | float | np.number) else f"a {type(v).__name__}")
        raise UserError(f"record {j}: '{key}' is {what} but input '{spec.name}' takes text — give the category as "
                        f"text (e.g. \"{v}\")")
    if types & {list, tuple}:  # a [rows, k] input fed one list per record: look at the elements
        try:
            flat = np.array(values, dtype=object).reshape(-1)
        except ValueError:
            return  # ragged: as_table says so
        types = set(map(type, flat))
    else:
        flat = values
    per_row = max(len(flat) // max(len(values), 1), 1)
    if spec.dtype != "bool":
        if not types & set(_BOOLS):
            return
        j = next(j for j, v in enumerate(flat) if isinstance(v, _BOOLS))
        raise UserError(f"record {j // per_row}: '{key}' is {str(bool(flat[j])).lower()} (a boolean) but input "
                        f"'{spec.name}' takes {spec.dtype} numbers — send a number (1 or 0 if that is what it "
                        "means)")
    if not types - set(_BOOLS) or types & {str, np.str_}:
        return  # booleans; text is refused by the cast, naming the input
    try:
        arr = np.asarray(flat, dtype=np.float64)  # null (serve sends it as NaN) → NaN: cast to bool it was True
    except (TypeError, ValueError):
        return  # not numbers: the cast names what it got
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        v = "null" if flat[j] is None or np.isnan(arr[j]) else repr(flat[j])
        raise UserError(f"record {j // per_row}: '{key}' is {v} but input '{spec.name}' is bool — send true or "
                        "false (or 1/0)")


def _random_nodes(model):
    from onnxforge.summary import all_nodes

    return (n for n in all_nodes(model.graph) if n.op_type in RANDOM_OPS)


def _load(model: Any, name: str | None, admitted: bool):
    """(ModelProto that passed the admission gate, the name messages give it)."""
    import onnx

    from onnxforge.admission import Admitted, admit, check

    if isinstance(model, str | Path):
        return admit(Path(model), session=False).model, name or Path(model)
    if isinstance(model, bytes | bytearray | memoryview):
        from google.protobuf.message import DecodeError

        try:
            proto = onnx.ModelProto.FromString(bytes(model))
        except (DecodeError, RuntimeError, ValueError) as e:
            raise UserError(f"{name or 'the model bytes'}: not a readable ONNX model ({type(e).__name__}) — give "
                            "the bytes of an .onnx file") from None
    elif isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        raise UserError(f"a Scorer takes a model path, its bytes or an onnx.ModelProto, not {type(model).__name__}")
    name = name or "model.onnx"
    if not admitted:
        from onnxforge.normalize import normalize

        adm = Admitted(path=Path(name), model=proto, external=False)
        check(adm)
        normalize(proto)
    return proto, name

"""One served artifact: records or tensors → validated model inputs → outputs, through `onnxforge.score.Scorer`,
the scorer under `onnxforge predict` (one code path online and offline): the stamped input spec maps record keys
onto inputs, with predict's casts, NaN policy and categorical levels; a seed replays the draws `predict --seed`
makes. What the server still reaches past Scorer's public API for is listed in /tmp/scorer_requests.md (issue
#18). Every refusal is a UserError: the app answers it with a 400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError

# ORT's tensor types as Open Inference Protocol datatypes (BYTES carries strings)
OIP_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(int8)": "INT8",
             "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8",
             "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
             "tensor(bool)": "BOOL", "tensor(string)": "BYTES"}
NP_OF_OIP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT8": np.int8, "INT16": np.int16,
             "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "BOOL": np.bool_, "BYTES": np.object_}
MAX_RECORDS = 100_000


def _dims(shape) -> list[int]:
    """An ORT shape as OIP writes it: -1 for every symbolic or unknown dim."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class ServedModel:
    """One version of a served model: its Scorer, input specs and what the artifact's metadata says about it."""

    def __init__(self, path: Path, *, name: str, version: str, stage: str | None, threads: int | None,
                 providers: list[str] | None = None):
        from onnxforge.artifact import meta_json
        from onnxforge.score.scorer import Scorer, nan_policy

        self.path, self.name, self.version, self.stage, self.threads = Path(path), name, version, stage, threads
        # the admission gate, specs, policies, a Predictor on the providers asked for (--providers)
        self.scorer = Scorer(self.path, threads=threads, providers=providers)
        # an HTTP client has no --allow-nan: the advice in a refusal is what it can do
        self.scorer.nan_fix = nan_policy(self.scorer.meta, False, flag=False)[1]
        self.proto, self.specs = self.scorer.proto, self.scorer.specs
        meta = self.scorer.meta
        self.stochastic_outputs = meta_json(meta, "stochastic_outputs", list, [], items=str, where=self.path)
        self.stochastic = self.scorer.random_nodes > 0
        self.predictor = self.scorer.predictor
        sess = self.predictor.session
        self.inputs = [{"name": i.name, "datatype": OIP_TYPES.get(i.type, i.type), "shape": _dims(i.shape)}
                       for i in sess.get_inputs()]
        self.outputs = [{"name": o.name, "datatype": OIP_TYPES.get(o.type, o.type), "shape": _dims(o.shape)}
                        for o in sess.get_outputs()]
        self.input_names = [i["name"] for i in self.inputs]
        self.output_names = [o["name"] for o in self.outputs]
        self.batchable = self._batch_axes(sess)

    def _batch_axes(self, sess) -> bool:
        """Rows of several requests can be stacked into one run: every input and output has a symbolic first dim
        (a state tensor, a scalar or a fixed batch size has none) and no input is marked `batched: false`."""
        if any(s.batched is False for s in self.specs):
            return False
        shapes = [i.shape for i in sess.get_inputs()] + [o.shape for o in sess.get_outputs()]
        return all(s and not isinstance(s[0], int) for s in shapes)

    # --- requests → validated inputs

    def check_tensors(self, feeds: dict[str, Any]) -> tuple[list[np.ndarray], int]:
        """Inputs by name → arrays of the model's dtypes in input order and the rows they hold, or a UserError
        naming the input and what it expected — checked per request, before it joins a batch, so one request's
        mistake never fails another's (the Predictor's own checks)."""
        arrays = self.predictor.check(feeds)
        return arrays, max((a.shape[0] for a in arrays if a.ndim), default=1)

    def check_values(self, arrays: list[np.ndarray]) -> None:
        """What /predict's table path checks and OIP tensors skip: NaN/±inf under the model's stamped NaN policy (a
        NaN fed to a model that does not handle it answered 200 with NaN probabilities), and NUL in text."""
        from onnxforge.data import check_values

        for name, a in zip(self.input_names, arrays, strict=True):
            if a.dtype.kind == "f" or a.dtype == object:
                check_values(a, a, name, name, nonfinite=self.scorer.nonfinite, fix=self.scorer.nan_fix)

    def feeds_from_records(self, records: Any) -> dict[str, np.ndarray]:
        """`[{"column": value, ...}, ...]` → model inputs, as `onnxforge predict` maps a table's columns (the
        Scorer's own mapping and checks). JSON null in a numeric column is a missing value (NaN), which the
        model's stamped NaN policy then takes or refuses."""
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise UserError("'records' must be a non-empty list of objects, one per row — e.g. "
                            f"[{{{', '.join(repr(k) + ': ...' for k in self.columns()[:3])}}}]")
        if len(records) > MAX_RECORDS:
            raise UserError(f"{len(records)} records in one request is over {MAX_RECORDS} — split the request")
        need = self.columns()
        for i, r in enumerate(records):
            missing = [k for k in need if k not in r]
            if missing:
                raise UserError(f"record {i} has no {', '.join(repr(k) for k in missing[:5])} — every record needs "
                                f"the model's columns: {', '.join(need)[:300]}")
        text = {k for s in self.specs if s.dtype == "string" for k in s.keys}
        if any(v is None for r in records for k, v in r.items() if k not in text):
            records = [{k: (np.nan if v is None and k not in text else v) for k, v in r.items()} for r in records]
        return dict(self.scorer.feeds(records, strict=True))  # unknown keys, a boolean for a number: a 400

    def columns(self) -> list[str]:
        """The record keys the model reads, in input order."""
        return [k for s in self.specs for k in s.keys]

    # --- running

    def run(self, arrays: list[np.ndarray], seed: int | None = None) -> dict[str, Any]:
        """One onnxruntime run (from an executor thread). A seed runs on the Scorer's fresh session reseeded with
        it, as `onnxforge predict --seed`: the same seed and rows give the same draws, online and offline."""
        feeds = dict(zip(self.input_names, arrays, strict=True))
        scorer = self.scorer if seed is None else self.scorer.with_seed(seed)
        return scorer.predictor(feeds)

    def records_out(self, outs: dict[str, Any], rows: int) -> list[dict[str, Any]]:
        """Per-row named outputs: a [rows, k] output whose columns the artifact names (class labels, quantiles)
        becomes {column: value}; ZipMap's maps stay maps; anything else is the row's value."""
        per: dict[str, list] = {}
        for name, arr in outs.items():
            if isinstance(arr, list):  # sequence of maps (ZipMap)
                per[name] = [{str(k): _py(v) for k, v in m.items()} for m in arr]
                continue
            arr = np.asarray(arr)
            if not arr.ndim or arr.shape[0] != rows:
                raise UserError(f"output '{name}' has shape {list(arr.shape)}, not one row per record — ask "
                                "POST /v2/models/{name}/infer for whole tensors")
            cols = self.scorer.column_names(name, arr)  # as predict names them: stamped, else class labels
            vals = to_json(arr)
            if cols and arr.ndim == 2 and len(cols) == arr.shape[1]:
                vals = [dict(zip(map(str, cols), v, strict=True)) for v in vals]
            per[name] = vals
        return [{k: per[k][i] for k in per} for i in range(rows)]


def _py(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return None
    return v


def to_json(arr: np.ndarray) -> list:
    """An array as nested lists for JSON: non-finite floats become null (JSON has no NaN), bytes become text."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        arr = np.where(np.isfinite(arr), arr, None).astype(object)
        arr = np.vectorize(lambda v: None if v is None else float(v), otypes=[object])(arr)
    elif arr.dtype.kind == "S" or (arr.dtype == object and arr.size and isinstance(arr.flat[0], bytes)):
        arr = np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                           otypes=[object])(arr)
    return arr.tolist()

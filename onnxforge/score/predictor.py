"""In-process low-latency scoring of an ONNX artifact from Python, safe to share between threads.

At one row the work of a small artifact (a posterior predictive, a tree ensemble) costs a few microseconds, and
`InferenceSession.run` spends more than that turning the feed dict into tensors and the results back into fresh
arrays. `Predictor` keeps, per input shape, numpy buffers bound to the session once (inputs and outputs, through
an IOBinding); a call copies the rows into the input buffers, runs, and hands back the output buffers (copied
unless `copy=False`). Inputs it cannot bind in place (strings) go through `session.run`, same results.
For the tightest loop, `Predictor.bind(example)` returns a `BoundCall`: write rows into its `inputs` arrays, call
it, read its `outputs` arrays — no per-call Python bookkeeping at all.

Security (issue #20): a `Predictor` may sit behind a threaded server, so
- the session is shared (onnxruntime's run is thread-safe) but bound buffers are per thread: two concurrent calls
  never write into, run on, or read back the same buffer;
- every input is checked against the model's declared dtype and shape before it reaches onnxruntime: only
  lossless or range-checked casts (int → float, float64 → float32 without overflow, integral floats and narrower
  ints within the target's range), never strings to numbers, numbers to strings, or anything but bools to bool;
- rows, bytes and string length per call are capped (constructor arguments);
- onnxruntime's own error text (node names, file paths) never reaches the message; it stays on `__cause__`.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError

MAX_ROWS = 100_000
MAX_BYTES = 64 << 20
MAX_STRING_LENGTH = 1024
_STRING = "string"  # an input kind beside the numpy dtypes


def _input_dtype(ort_type: str) -> np.dtype | str | None:
    """The numpy dtype of an onnxruntime input type such as 'tensor(float)', _STRING for strings, None for what
    Predictor does not feed (bfloat16, float8, complex)."""
    from onnx import TensorProto, helper

    from onnxforge.data import NP_DTYPES, ONNX_TO_DTYPE

    code = getattr(TensorProto, ort_type.removeprefix("tensor(").rstrip(")").upper(), -1)
    name = ONNX_TO_DTYPE.get(code)
    if name is not None:
        return _STRING if name == "string" else np.dtype(NP_DTYPES[name])
    try:  # the plain integer types onnxforge.data does not read (int16, uint16, uint32, uint64): onnx's own table
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code))
    except Exception:
        return None
    return dtype if dtype.kind in "iuf" else None


@functools.cache
def _safe(src: np.dtype, dst: np.dtype) -> bool:
    return np.can_cast(src, dst, "safe")


@functools.cache
def _fmax2(dtype: np.dtype) -> float:
    """The square of a float dtype's largest value, in float64 (inf for float64 itself: any float64 fits)."""
    with np.errstate(over="ignore"):
        return float(np.float64(np.finfo(dtype).max) ** 2)


def _names(names: list) -> str:
    """User-given keys, bounded: at most 5, each repr'd (no newlines) and cut to 40 characters."""
    shown = [repr(n)[:40] for n in names[:5]]
    return "[" + ", ".join(shown) + (f", … {len(names) - 5} more" if len(names) > 5 else "") + "]"


def _what(a: np.ndarray) -> str:
    k = a.dtype.kind
    if k in "US" or (k == "O" and any(isinstance(v, str | bytes) for v in a.flat)):
        return "strings" + (" (bytes)" if k == "S" else "")
    return {"b": "bool", "c": "complex numbers", "O": "Python objects"}.get(k, str(a.dtype))


def _refused(e: Exception, fix: str) -> UserError:
    """onnxruntime's message names nodes, initializers and paths: only its class goes into ours."""
    return UserError(f"the model refused these inputs (onnxruntime {type(e).__name__}) — {fix}")


class _Bound:
    """Buffers bound to one IOBinding for one set of input shapes (one thread's)."""

    def __init__(self, sess, feeds: dict[str, np.ndarray], names: list[str], first: list[np.ndarray]):
        import onnxruntime as ort

        self.binding = sess.io_binding()
        self.inputs = [np.ascontiguousarray(v).copy() for v in feeds.values()]
        for k, buf in zip(feeds, self.inputs, strict=True):
            self.binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(buf))
        self.outputs = [np.empty_like(np.ascontiguousarray(a)) for a in first]
        for k, buf in zip(names, self.outputs, strict=True):
            self.binding.bind_ortvalue_output(k, ort.OrtValue.ortvalue_from_numpy(buf))
        raw = getattr(sess, "_sess", None)
        if raw is not None:
            # the C binding under InferenceSession.run_with_iobinding: the Python wrapper adds a run-options lookup
            # and a WebGPU capture check that cost more than a small artifact's whole run
            ib = self.binding._iobinding
            self.run = lambda: raw.run_with_iobinding(ib, None)
        else:
            self.run = lambda: sess.run_with_iobinding(self.binding)


_UNBINDABLE: Any = object()


class _PerThread(threading.local):
    """One thread's bound shapes: buffers are never shared between threads, so concurrent calls cannot mix."""

    def __init__(self) -> None:
        self.bound: OrderedDict[tuple, Any] = OrderedDict()
        self.last_key: tuple | None = None
        self.last: Any = None


class BoundCall:
    """One set of input shapes, bound, for one caller: fill `inputs[name][...]`, call, read `outputs[name]`
    (overwritten by the next call). It belongs to the thread that made it and refuses calls from any other (its
    arrays are that caller's); call `Predictor.bind` in each thread. Values written into `inputs` take numpy's
    assignment casting and are not validated: use the Predictor's call for untrusted input."""

    def __init__(self, bound: _Bound, input_names: list[str], output_names: list[str]):
        self.inputs = dict(zip(input_names, bound.inputs, strict=True))
        self.outputs = dict(zip(output_names, bound.outputs, strict=True))
        self._run = bound.run
        self._owner = threading.get_ident()

    def __call__(self) -> None:
        if threading.get_ident() != self._owner:
            raise UserError("a BoundCall belongs to the thread that made it (its arrays are one caller's) — call "
                            "Predictor.bind in each thread that scores")
        try:
            self._run()
        except Exception as e:
            raise _refused(e, "fix the inputs' values, or, if an output's shape depends on the data, call the "
                              "Predictor with feeds") from e


class Predictor:
    """Score an artifact repeatedly with the least per-call cost onnxruntime allows from Python.

    `Predictor("model.onnx")(X=rows)` returns {output name: array}. Shapes seen before reuse their bound buffers
    (per thread, the `max_shapes` most recent are kept). With `copy=False` the arrays returned are the calling
    thread's bound output buffers: valid until that thread's next call with the same input shapes. A call over
    `max_rows` rows (first dim), `max_bytes` of input or `max_string_length` characters in a string is refused
    (0 or None: no cap).

    `engine="numba"` (PyMC artifacts, with `source=` the config the artifact was converted from) scores with the
    numba engine (onnxforge.bayes.numba_engine) instead of onnxruntime, after checking it equals the artifact on
    probe rows (onnxforge.bayes.numba_score); inputs are validated the same way, `threads` is numba's thread count
    (None: numba's own setting), and draws are numba's.
    """

    def __init__(self, model: str | Path | bytes | Any, *, threads: int | None = 1,
                 providers: list[str] | None = None, max_shapes: int = 8, max_rows: int | None = MAX_ROWS,
                 max_bytes: int | None = MAX_BYTES, max_string_length: int | None = MAX_STRING_LENGTH,
                 engine: str = "onnxruntime", source: Any = None):
        from onnxforge import runtime

        if engine not in ("onnxruntime", "numba"):
            raise UserError(f"Predictor(engine={engine!r}) — engines are 'onnxruntime' (any artifact) and 'numba' "
                            "(PyMC artifacts, with source='pipeline.yaml')")
        if source is not None and engine != "numba":
            raise UserError("Predictor(source=...) is for engine='numba' (onnxruntime needs only the .onnx) — add "
                            "engine='numba' or drop source")
        if type(max_shapes) is not int or max_shapes < 1:
            raise UserError(f"Predictor(max_shapes={max_shapes!r}) — give a positive int")
        for cap, value in (("max_rows", max_rows), ("max_bytes", max_bytes),
                           ("max_string_length", max_string_length)):
            if value is not None and (type(value) is not int or value < 0):
                raise UserError(f"Predictor({cap}={value!r}) — give a positive int, or 0 or None for no cap")
        if hasattr(model, "get_inputs") and hasattr(model, "run_with_iobinding"):
            self.session = model  # a session the caller built (the Scorer's, after the admission gate)
        else:
            if isinstance(model, str | Path) and not Path(model).is_file():
                raise UserError(f"model file not found: {model} — give the path of an .onnx artifact")
            try:
                self.session = runtime.session(Path(model) if isinstance(model, str) else model,
                                               provider_list=providers, threads=threads)
            except Exception as e:
                raise UserError(f"onnxruntime cannot load this model ({type(e).__name__}) — check it with "
                                "`onnxforge inspect MODEL.onnx`") from e
        inputs = self.session.get_inputs()
        self.input_types = {i.name: i.type for i in inputs}
        self.input_names = list(self.input_types)
        self.input_shapes = [list(i.shape) for i in inputs]  # [] is a scalar or an unknown rank: ORT checks it
        self.dtypes = [_input_dtype(t) for t in self.input_types.values()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bindable = all(isinstance(d, np.dtype) for d in self.dtypes)
        self._exact = [d if isinstance(d, np.dtype) else None for d in self.dtypes]  # None: always _coerce
        # 0 lifts a cap, as in onnxforge.limits
        self.max_shapes, self.max_rows, self.max_bytes = max_shapes, max_rows or None, max_bytes or None
        self.max_string_length = max_string_length or None
        self._local = _PerThread()
        self.engine = None
        if engine == "numba":
            from onnxforge.bayes.numba_score import numba_engine

            self.engine = numba_engine(self.session, source, threads, str(model) if isinstance(model, str | Path)
                                       else "the model")
            self._checked: set[tuple] = set()

    @property
    def _bound(self) -> OrderedDict:
        """The calling thread's bound shapes."""
        return self._local.bound

    # --- validation: values (every call whose dtype is not already exact), shapes and caps (once per bound shape)

    def _coerce(self, i: int, a: Any) -> np.ndarray:
        """`a` as input i's dtype, or a UserError: only casts that keep every value (or range-checked ones)."""
        name, want = self.input_names[i], self.dtypes[i]
        if isinstance(a, np.ma.MaskedArray):
            raise UserError(f"input '{name}' is a masked array — fill the masked values (a.filled(...)) first")
        if type(a) is not np.ndarray:
            if isinstance(a, list | tuple) and self.max_rows is not None and len(a) > self.max_rows:
                raise UserError(f"input '{name}': {len(a)} rows in one call is over max_rows={self.max_rows} — "
                                "split the request, or raise Predictor(max_rows=...)")
            try:
                a = np.asarray(a)
            except (ValueError, TypeError):
                raise UserError(f"input '{name}' is ragged or not array-like — give every row the same length"
                                ) from None
        k = a.dtype.kind
        if want is None:
            raise UserError(f"input '{name}' has type {self.input_types[name]}, which Predictor does not feed — "
                            "score it with onnxruntime directly")
        if isinstance(want, str):
            if k == "U" or (k == "O" and all(isinstance(v, str) for v in a.flat)):  # np.str_ too
                return self._string_lengths(name, a)
            fix = "decode them to str" if k == "S" else "pass the category levels as str"
            raise UserError(f"input '{name}' takes strings; got {_what(a)} — {fix}")
        if k in "USO" or k not in "biuf":
            raise UserError(f"input '{name}' takes {want}; got {_what(a)} — send numbers as numbers "
                            "(strings, objects and complex values are never converted)")
        if (k == "b") != (want.kind == "b"):
            fix = ("pass True/False as bool" if want.kind == "b" else
                   f"cast it yourself (x.astype(np.{want})) if you mean 0/1")
            raise UserError(f"input '{name}' takes {want}; got {_what(a)} — {fix}")
        if k == "b" or _safe(a.dtype, want):
            return a.astype(want, copy=False)
        if want.kind in "iu":
            return self._to_int(name, a, want)
        # to a narrower float (float64 → float32) or int → float: what is finite must stay finite
        if (k in "iu" and want.itemsize >= 4) or (a.dtype.itemsize <= 8 and np.vdot(a, a) <= _fmax2(want)):
            return a.astype(want)  # every int fits float32; a sum of squares within max² bounds every |value|
        with np.errstate(over="ignore"):  # overflow is refused just below, by value
            out = a.astype(want)
        bad = np.isinf(out) & np.isfinite(a) if k == "f" else np.isinf(out)
        if bad.any():
            v = a[bad].flat[0]
            raise UserError(f"input '{name}': {v} overflows {want} (it would become inf) — scale the input or "
                            "check the value")
        return out

    @staticmethod
    def _to_int(name: str, a: np.ndarray, want: np.dtype) -> np.ndarray:
        info = np.iinfo(want)
        if a.size:
            if a.dtype.kind == "f":
                if not np.isfinite(a).all():
                    raise UserError(f"input '{name}' takes {want}; a value is not finite "
                                    f"({a[~np.isfinite(a)].flat[0]}) — send integers")
                frac = a != np.trunc(a)
                if frac.any():
                    raise UserError(f"input '{name}' takes {want}; {a[frac].flat[0]} has a fractional part — "
                                    "send integers (it is never rounded for you)")
                # bounds as floats: min is -2**k or 0, max + 1 is 2**k, both exact
                ok = a.min() >= float(info.min) and a.max() < float(info.max + 1)
            else:
                ok = int(a.min()) >= info.min and int(a.max()) <= info.max
            if not ok:
                v = a.min() if a.min() < info.min else a.max()
                raise UserError(f"input '{name}' takes {want}; {v} is out of its range [{info.min}, {info.max}] — "
                                "check the value (it is never wrapped around for you)")
        return a.astype(want)

    def _string_lengths(self, name: str, a: np.ndarray) -> np.ndarray:
        cap = self.max_string_length
        if cap is not None and a.size:
            if a.dtype.kind == "U":
                longest = a.itemsize // 4 if a.itemsize // 4 <= cap else int(np.char.str_len(a).max())
            else:
                longest = max(len(v) for v in a.flat)
            if longest > cap:
                raise UserError(f"input '{name}': a string of {longest} characters is over "
                                f"max_string_length={cap} — shorten it, or raise Predictor(max_string_length=...)")
        return a

    def _check(self, arrays: list[np.ndarray]) -> None:
        """Shapes against the model's declared inputs (rank, fixed dims, one size per named dim) and the caps."""
        sizes: dict[str, tuple[str, int]] = {}
        rows = nbytes = 0
        for name, decl, a in zip(self.input_names, self.input_shapes, arrays, strict=True):
            if decl:
                if a.ndim != len(decl) or any(isinstance(d, int) and d != n for d, n in zip(decl, a.shape, strict=True)):
                    want = ", ".join("?" if d is None else str(d) for d in decl)
                    raise UserError(f"input '{name}' has shape {list(a.shape)} but the model takes [{want}] — fix "
                                    "the rows' shape")
                for d, n in zip(decl, a.shape, strict=True):
                    if isinstance(d, str) and sizes.setdefault(d, (name, n))[1] != n:
                        other, m = sizes[d]
                        raise UserError(f"inputs '{other}' and '{name}' disagree on dim '{d}' ({m} vs {n}) — give "
                                        "them the same size there")
            if a.ndim:
                rows = max(rows, a.shape[0])
            nbytes += a.nbytes + (sum(len(v) for v in a.flat) if a.dtype.kind == "O" else 0)
        if self.max_rows is not None and rows > self.max_rows:
            raise UserError(f"{rows} rows in one call is over max_rows={self.max_rows} — split the request, or "
                            "raise Predictor(max_rows=...)")
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise UserError(f"{nbytes} bytes of input in one call is over max_bytes={self.max_bytes} — split the "
                            "request, or raise Predictor(max_bytes=...)")

    def _feeds(self, feeds: Mapping[str, Any] | None, kw: dict[str, Any]) -> list[np.ndarray]:
        if feeds is not None and type(feeds) is not dict and not isinstance(feeds, Mapping):
            raise UserError(f"inputs come as a dict or keywords, not {type(feeds).__name__} — call "
                            f"pred({{{self.input_names[0]!r}: rows}}) or pred({self.input_names[0]}=rows)"
                            if self.input_names else "this model takes no inputs — call pred()")
        given = {**feeds, **kw} if feeds and kw else feeds or kw
        try:
            arrays = [given[k] for k in self.input_names]
        except (KeyError, TypeError):
            arrays = None
        if arrays is None or len(given) != len(arrays):
            missing = [k for k in self.input_names if k not in given]
            extra = [k for k in given if k not in self.input_types]
            raise UserError(f"inputs do not match the model: missing {_names(missing)}, unknown {_names(extra)} — "
                            f"the model takes {_names(self.input_names)}")
        for i, dtype in enumerate(self._exact):
            a = arrays[i]
            if dtype is None or type(a) is not np.ndarray or a.dtype is not dtype and a.dtype != dtype:
                arrays[i] = self._coerce(i, a)
        return arrays

    # --- running

    def _plain(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.session.run(self.output_names, dict(zip(self.input_names, arrays, strict=True)))
        except Exception as e:
            raise _refused(e, "check the inputs' values against what the model expects (e.g. an index in range)"
                           ) from e
        return dict(zip(self.output_names, outs, strict=True))

    def _new_bound(self, arrays: list[np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
        """A first run with plain `session.run` (output shapes and dtypes for these input shapes), then buffers
        bound for the next calls — or _UNBINDABLE where the outputs cannot be bound (sequences, maps, strings)."""
        first = self._plain(arrays)
        try:
            bound = _Bound(self.session, dict(zip(self.input_names, arrays, strict=True)), self.output_names,
                           list(first.values()))
        except Exception:
            bound = _UNBINDABLE
        return bound, first

    def check(self, feeds: Mapping[str, Any] | None = None, /, **kw: Any) -> list[np.ndarray]:
        """The inputs as a call would take them — coerced to the model's dtypes (range-checked), in input order,
        shapes and caps checked — without running the model; a UserError naming the input otherwise. A server
        checks each request this way before it joins a batch, so one request's mistake never fails another's."""
        arrays = self._feeds(feeds, kw)
        self._check(arrays)
        return arrays

    def bind(self, feeds: Mapping[str, Any] | None = None, /, **kw: Any) -> BoundCall:
        """Buffers bound for the shapes of this example (its values are the first contents of the inputs), for
        the calling thread only."""
        if self.engine is not None:
            raise UserError("bind() binds onnxruntime buffers — with engine='numba' call the Predictor with feeds")
        arrays = self._feeds(feeds, kw)
        if not self.bindable:
            raise UserError(f"inputs {[k for k, d in zip(self.input_names, self.dtypes, strict=True) if d is _STRING]}"
                            " are not numeric and cannot be bound — call the Predictor with feeds instead")
        self._check(arrays)
        bound, _ = self._new_bound(arrays)
        if bound is _UNBINDABLE:
            raise UserError("this model's outputs cannot be bound to arrays (sequences, maps or strings) — call the "
                            "Predictor with feeds instead")
        return BoundCall(bound, self.input_names, self.output_names)

    def __call__(self, feeds: Mapping[str, Any] | None = None, /, *, copy: bool = True,
                 **kw: Any) -> dict[str, np.ndarray]:
        arrays = self._feeds(feeds, kw)
        if self.engine is not None:  # numba: fresh output arrays every call (copy is moot)
            key = tuple([a.shape for a in arrays])
            if key not in self._checked:
                self._check(arrays)
                if len(self._checked) < self.max_shapes:
                    self._checked.add(key)
            return self.engine.score(arrays)
        if not self.bindable:
            self._check(arrays)
            return self._plain(arrays)
        key = tuple([a.shape for a in arrays])
        local = self._local  # this thread's buffers only: a concurrent call never touches them
        if key == local.last_key:  # the common case in a server: the same batch size again
            bound = local.last
        else:
            bound = local.bound.get(key)
            if bound is None:
                self._check(arrays)  # shapes and caps depend on the shape alone: checked once per bound shape
                bound, first = self._new_bound(arrays)  # first outputs not kept: the buffers hold the shapes
                local.bound[key] = bound
                if len(local.bound) > self.max_shapes:
                    local.bound.popitem(last=False)
                local.last_key, local.last = key, bound
                return first
            local.bound.move_to_end(key)
            local.last_key, local.last = key, bound
        if bound is _UNBINDABLE:
            return self._plain(arrays)
        for buf, a in zip(bound.inputs, arrays):  # noqa: B905 - same length by construction (hot path)
            buf[...] = a
        try:
            bound.run()
        except Exception:
            result = self._plain(arrays)  # raises a UserError when the inputs are at fault
            local.bound[key] = local.last = _UNBINDABLE  # else the fixed buffers were: a data-dependent shape
            return result
        outs = [a.copy() for a in bound.outputs] if copy else bound.outputs
        return dict(zip(self.output_names, outs, strict=True))

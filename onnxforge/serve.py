"""In-process low-latency scoring of an ONNX artifact from Python.

At one row the work of a small artifact (a posterior predictive, a tree ensemble) costs a few microseconds, and
`InferenceSession.run` spends more than that turning the feed dict into tensors and the results back into fresh
arrays. `Predictor` keeps, per input shape, numpy buffers bound to the session once (inputs and outputs, through
an IOBinding); a call copies the rows into the input buffers, runs, and hands back the output buffers (copied
unless `copy=False`). Inputs it cannot bind in place (strings) go through `session.run`, same results.
For the tightest loop, `Predictor.bind(example)` returns a `BoundCall`: write rows into its `inputs` arrays, call
it, read its `outputs` arrays — no per-call Python bookkeeping at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError


def _numpy_dtype(ort_type: str) -> np.dtype | None:
    """The numpy dtype of an onnxruntime input type such as 'tensor(float)'; None for what cannot be bound in place
    (strings, types onnxforge.data does not read)."""
    from onnx import TensorProto

    from onnxforge.data import NP_DTYPES, ONNX_TO_DTYPE

    name = ONNX_TO_DTYPE.get(getattr(TensorProto, ort_type.removeprefix("tensor(").rstrip(")").upper(), -1))
    return None if name in (None, "string") else np.dtype(NP_DTYPES[name])


class _Bound:
    """Buffers bound to one IOBinding for one set of input shapes."""

    def __init__(self, sess, feeds: dict[str, np.ndarray], names: list[str]):
        import onnxruntime as ort

        first = sess.run(names, feeds)  # output shapes and dtypes for these input shapes
        self.binding = sess.io_binding()
        self.inputs = [np.ascontiguousarray(v).copy() for v in feeds.values()]
        for k, buf in zip(feeds, self.inputs, strict=True):
            self.binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(buf))
        self.outputs = [np.empty_like(np.ascontiguousarray(a)) for a in first]
        for k, buf in zip(names, self.outputs, strict=True):
            self.binding.bind_ortvalue_output(k, ort.OrtValue.ortvalue_from_numpy(buf))
        self.first = first
        raw = getattr(sess, "_sess", None)
        if raw is not None:
            # the C binding under InferenceSession.run_with_iobinding: the Python wrapper adds a run-options lookup
            # and a WebGPU capture check that cost more than a small artifact's whole run
            ib = self.binding._iobinding
            self.run = lambda: raw.run_with_iobinding(ib, None)
        else:
            self.run = lambda: sess.run_with_iobinding(self.binding)


_UNBINDABLE: Any = object()


class BoundCall:
    """One set of input shapes, bound: fill `inputs[name][...]`, call, read `outputs[name]` (overwritten by the
    next call)."""

    def __init__(self, bound: _Bound, input_names: list[str], output_names: list[str]):
        self.inputs = dict(zip(input_names, bound.inputs, strict=True))
        self.outputs = dict(zip(output_names, bound.outputs, strict=True))
        self._run = bound.run

    def __call__(self) -> None:
        try:
            self._run()
        except Exception as e:
            raise UserError(f"onnxruntime refused the bound call ({str(e).splitlines()[0][:160]}) — fix the inputs, "
                            "or, if an output's shape depends on the data, call the Predictor with feeds") from e


class Predictor:
    """Score an artifact repeatedly with the least per-call cost onnxruntime allows from Python.

    `Predictor("model.onnx")(X=rows)` returns {output name: array}. Shapes seen before reuse their bound buffers
    (the `max_shapes` most recent are kept). With `copy=False` the arrays returned are the bound output buffers:
    valid until the next call with the same input shapes.
    """

    def __init__(self, model: str | Path | bytes | Any, *, threads: int | None = 1,
                 providers: list[str] | None = None, max_shapes: int = 8):
        from onnxforge import runtime

        if isinstance(model, str | Path) and not Path(model).is_file():
            raise UserError(f"model file not found: {model} — give the path of an .onnx artifact")
        self.session = runtime.session(Path(model) if isinstance(model, str) else model, provider_list=providers,
                                       threads=threads)
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.input_names = list(self.input_types)
        self.dtypes = [_numpy_dtype(t) for t in self.input_types.values()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bindable = None not in self.dtypes
        self.max_shapes = max_shapes
        self._bound: OrderedDict[tuple, Any] = OrderedDict()
        self._last_key: tuple | None = None
        self._last: Any = None

    def _feeds(self, feeds: Mapping[str, Any] | None, kw: dict[str, Any]) -> list[np.ndarray]:
        given = {**feeds, **kw} if feeds and kw else feeds or kw
        try:
            arrays = [given[k] for k in self.input_names]
        except KeyError:
            arrays = None
        if arrays is None or len(given) != len(arrays):
            missing = [k for k in self.input_names if k not in given]
            extra = [k for k in given if k not in self.input_types]
            raise UserError(f"inputs do not match the model: missing {missing}, unknown {extra} — the model takes "
                            f"{self.input_names}")
        for i, dtype in enumerate(self.dtypes):
            a = arrays[i]
            if type(a) is not np.ndarray or (dtype is not None and a.dtype is not dtype and a.dtype != dtype):
                arrays[i] = np.asarray(a, dtype=dtype)
        return arrays

    def bind(self, feeds: Mapping[str, Any] | None = None, /, **kw: Any) -> BoundCall:
        """Buffers bound for the shapes of this example (its values are the first contents of the inputs)."""
        arrays = self._feeds(feeds, kw)
        if not self.bindable:
            raise UserError(f"inputs {[k for k, d in zip(self.input_names, self.dtypes, strict=True) if d is None]} "
                            "are not numeric and cannot be bound — call the Predictor with feeds instead")
        bound = _Bound(self.session, dict(zip(self.input_names, arrays, strict=True)), self.output_names)
        return BoundCall(bound, self.input_names, self.output_names)

    def _plain(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, dict(zip(self.input_names, arrays, strict=True)))
        return dict(zip(self.output_names, outs, strict=True))

    def __call__(self, feeds: Mapping[str, Any] | None = None, /, *, copy: bool = True,
                 **kw: Any) -> dict[str, np.ndarray]:
        arrays = self._feeds(feeds, kw)
        if not self.bindable:
            return self._plain(arrays)
        key = tuple([a.shape for a in arrays])
        if key == self._last_key:  # the common case in a server: the same batch size again
            bound = self._last
        else:
            bound = self._bound.get(key)
            if bound is None:
                bound = _Bound(self.session, dict(zip(self.input_names, arrays, strict=True)), self.output_names)
                self._bound[key] = bound
                if len(self._bound) > self.max_shapes:
                    self._bound.popitem(last=False)
                self._last_key, self._last = key, bound
                first, bound.first = bound.first, None  # not kept: the buffers hold the shapes
                return dict(zip(self.output_names, first, strict=True))
            self._bound.move_to_end(key)
            self._last_key, self._last = key, bound
        if bound is _UNBINDABLE:
            return self._plain(arrays)
        for buf, a in zip(bound.inputs, arrays):  # noqa: B905 - same length by construction (hot path)
            buf[...] = a
        try:
            bound.run()
        except Exception:
            result = self._plain(arrays)  # raises the model's own error when the inputs are at fault
            self._bound[key] = self._last = _UNBINDABLE  # else the fixed buffers were: a data-dependent shape
            return result
        outs = [a.copy() for a in bound.outputs] if copy else bound.outputs
        return dict(zip(self.output_names, outs, strict=True))

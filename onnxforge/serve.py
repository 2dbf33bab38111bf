"""In-process low-latency scoring of an ONNX artifact from Python.

At one row the work of a small artifact (a posterior predictive, a tree ensemble) costs a few microseconds, and
`InferenceSession.run` spends more than that turning the feed dict into tensors and the results back into fresh
arrays. `Predictor` keeps, per input shape, numpy buffers bound to the session once (inputs and outputs, through
an IOBinding); a call copies the rows into the input buffers, runs, and hands back the output buffers (copied
unless `copy=False`). Inputs it cannot bind in place (strings) go through `session.run`, same results.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import UserError

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class _Bound:
    """Buffers bound to one IOBinding for one set of input shapes."""

    def __init__(self, sess, feeds: dict[str, np.ndarray], names: list[str]):
        import onnxruntime as ort

        first = sess.run(names, feeds)  # output shapes and dtypes for these input shapes
        self.binding = sess.io_binding()
        self.inputs = {k: np.ascontiguousarray(v).copy() for k, v in feeds.items()}
        for k, buf in self.inputs.items():
            self.binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(buf))
        self.outputs = [np.empty_like(np.ascontiguousarray(a)) for a in first]
        for k, buf in zip(names, self.outputs, strict=True):
            self.binding.bind_ortvalue_output(k, ort.OrtValue.ortvalue_from_numpy(buf))
        self.first = first


_UNBINDABLE: Any = object()


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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bindable = all(t in _NUMPY for t in self.input_types.values())
        self.max_shapes = max_shapes
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()
        # the C binding under InferenceSession.run_with_iobinding: the Python wrapper adds a run-options lookup and
        # a WebGPU capture check that cost more than a small artifact's whole run
        self._run = getattr(self.session, "_sess", None)

    def _feeds(self, feeds: Mapping[str, Any] | None, kw: dict[str, Any]) -> dict[str, np.ndarray]:
        given = {**(feeds or {}), **kw}
        missing = [k for k in self.input_types if k not in given]
        extra = [k for k in given if k not in self.input_types]
        if missing or extra:
            raise UserError(f"inputs do not match the model: missing {missing}, unknown {extra} — the model takes "
                            f"{list(self.input_types)}")
        out = {}
        for k, t in self.input_types.items():
            dtype = _NUMPY.get(t)
            out[k] = np.asarray(given[k], dtype=dtype) if dtype is not None else np.asarray(given[k])
        return out

    def __call__(self, feeds: Mapping[str, Any] | None = None, /, *, copy: bool = True,
                 **kw: Any) -> dict[str, np.ndarray]:
        arrays = self._feeds(feeds, kw)
        if not self.bindable:
            return dict(zip(self.output_names, self.session.run(self.output_names, arrays), strict=True))
        key = tuple((k, a.shape) for k, a in arrays.items())
        bound = self._bound.get(key)
        if bound is None:
            bound = _Bound(self.session, arrays, self.output_names)
            self._bound[key] = bound
            if len(self._bound) > self.max_shapes:
                self._bound.popitem(last=False)
            return dict(zip(self.output_names, bound.first, strict=True))
        self._bound.move_to_end(key)
        if bound is _UNBINDABLE:
            return dict(zip(self.output_names, self.session.run(self.output_names, arrays), strict=True))
        for k, a in arrays.items():
            bound.inputs[k][...] = a
        try:
            if self._run is not None:
                self._run.run_with_iobinding(bound.binding._iobinding, None)
            else:
                self.session.run_with_iobinding(bound.binding)
        except Exception:  # output shapes that depend on the data cannot use fixed buffers
            self._bound[key] = _UNBINDABLE
            return dict(zip(self.output_names, self.session.run(self.output_names, arrays), strict=True))
        outs = [a.copy() for a in bound.outputs] if copy else bound.outputs
        return dict(zip(self.output_names, outs, strict=True))

"""In-process scoring without onnxruntime: the predictive mean, std and exact quantiles compiled by PyTensor's
numba backend (mode NUMBA), for Python callers that are the only consumer.

The same computation as the ONNX artifact, built from the same BayesPredictive: a hand transform runs with the
PyTensor `xp` over the posterior (float32 constants, sample axis last); a zero-code transform's per-sample graphs
are vectorized over the samples (pytensor.graph.replace.vectorize_graph). Then the family's moments and the
quantiles (sort + numpy's 'linear' interpolation) — all in one compiled function. Draws stay with the artifact
(their random streams are onnxruntime's). Hook for onnxforge.score.Predictor: `engine="numba"` →
`NumbaPredictive(pred)` where `pred` is the loaded BayesPredictive; call it with the raw feeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxforge.errors import UserError


class NumbaPredictive:
    def __init__(self, pred, mode: str = "NUMBA"):
        import pytensor
        import pytensor.tensor as pt

        from onnxforge.bayes.predictive import Params
        from onnxforge.bayes.shim import pytensor_xp

        if pred.family.classes:
            raise UserError("the numba engine scores scalar families; class probabilities (categorical) are served "
                            "by the ONNX artifact")
        self.pred = pred
        xp = pytensor_xp()
        s = pred.posterior.samples
        self.inputs = []
        args = {}
        for spec in pred.inputs:
            cat = spec.name in pred.categorical
            nd = len(spec.shape or ["batch"])
            var = pt.tensor(spec.name, dtype="int64" if cat else "float32", shape=(None,) * (1 if cat else max(nd, 2)))
            self.inputs.append(var)
            args[spec.name] = var
        values = {n: pt.constant(np.asarray(pred.values[n], np.float32)) for n in sorted(pred.used)}
        out = pred.transform(xp, Params(values, pred.posterior.path), **{k: args[k] for k in pred.args}) \
            if not hasattr(pred.transform, "graphs") else self._zero_code(pred, args)
        extra = {}
        if isinstance(out, dict):
            extra = {k: v for k, v in out.items() if k != "mu"}
            out = out["mu"]
        rows = self.inputs[0].shape[0]
        mu = pt.broadcast_to(out, (rows, s))
        p: dict[str, Any] = {}
        for k, (kind, ref) in pred.fparams.items():
            if kind == "var":
                p[k] = pt.constant(np.asarray(pred.values[ref], np.float32))
            elif kind == "const":
                p[k] = np.float32(ref)
            elif kind == "input":
                p[k] = args[ref]
            else:
                p[k] = pt.broadcast_to(extra[k], (rows, s))
        m = pt.broadcast_to(pred.family.mean(xp, mu, p), (rows, s))
        mean = m.mean(-1)
        outs = []
        if pred.want_mean:
            outs.append(mean)
        if pred.want_std:
            within = pt.broadcast_to(pred.family.variance(xp, mu, p), (rows, s)).mean(-1)
            d = m - mean[:, None]
            outs.append(pt.sqrt(within + (d * d).mean(-1)))
        if pred.quantiles:
            srt = pt.sort(m, axis=-1)
            cols = []
            for q in pred.quantiles:  # numpy's 'linear': x[lo] + (x[hi] - x[lo]) * (h - lo), h = q (s - 1)
                h = q * (s - 1)
                lo = int(np.floor(h))
                hi = min(lo + 1, s - 1)
                cols.append(srt[:, lo] + (srt[:, hi] - srt[:, lo]) * np.float32(h - lo))
            outs.append(pt.stack(cols, axis=1))
        self.names = [pred.output_names[k] for k in ("mean", "std", "quantiles") if k in pred.output_names]
        self.fn = pytensor.function(self.inputs, outs, mode=mode, on_unused_input="ignore")
        self.fn.trust_input = True

    @staticmethod
    def _zero_code(pred, args):
        """The per-sample graphs vectorized over the posterior samples, sample axis moved last."""
        import pytensor.tensor as pt
        from pytensor.graph.replace import vectorize_graph

        zc = pred.transform
        repl = {}
        for name in zc.used:
            batched = np.moveaxis(np.asarray(pred.values[name], np.float32), -1, 0)  # (S, *dims)
            repl[zc.param_vars[name]] = pt.constant(batched)
        for name in zc.inputs_used:
            v = args[name]
            want = zc.input_vars[name]
            repl[want] = (v[:, 0] if want.ndim == 1 and v.ndim == 2 else v).astype(want.dtype)
        names = list(zc.graphs)
        outs = vectorize_graph([zc.graphs[n] for n in names], replace=repl)
        return {n: pt.moveaxis(o, 0, -1) for n, o in zip(names, outs, strict=True)}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        enc = self.pred.encode(feeds)
        arrays = []
        for spec, var in zip(self.pred.inputs, self.inputs, strict=True):
            a = enc[spec.name]
            arrays.append(np.ascontiguousarray(a, dtype=var.type.dtype))
        return dict(zip(self.names, self.fn(*arrays), strict=True))

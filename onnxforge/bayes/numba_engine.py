"""In-process scoring without onnxruntime, for Python callers that are the only consumer: the posterior predictive
of a loaded BayesPredictive (the same object the ONNX artifact is built from) computed with numba.

`NumbaPredictive(pred)`:
1. the mean function — a hand transform run with the PyTensor `xp` over the posterior (float32 constants, sample
   axis last), or a zero-code model's per-sample graphs vectorized over the samples
   (pytensor.graph.replace.vectorize_graph) — and the family's E[y|x,θ] (and Var[y|x,θ] where it depends on x) are
   one PyTensor function compiled by PyTensor's numba backend (mode NUMBA): a float32 (rows, samples) matrix, or
   (rows, classes, samples) for class probabilities;
2. draws (if any) from that matrix: the njit draw kernel (onnxforge.bayes.numba_kernels);
3. each row sorted in place by numpy (x86-simd-sort: far faster than any sort or selection compiled with numba);
4. one njit kernel over the rows: mean, std, and the exact quantiles by numpy's 'linear' rule.
The kernels are `parallel=True` (prange) builds from `parallel_rows` rows when more than one numba thread is
allowed, serial builds below.

Outputs equal the artifact's (tests/test_bayes_numba.py, rtol 1e-4). Draws cannot equal the artifact's (its random
streams are onnxruntime's): they come from numpy Generators run inside numba, checked as distributions.

`PyTensorPredictive(pred, mode)`: the whole computation (moments and sort-based quantiles) as one PyTensor function,
mode "FAST_RUN" (C) or "NUMBA": the compiled-PyTensor baseline the bench measures the engine against.

`onnxforge.score.Predictor(model, engine="numba", source=CONFIG)` builds a NumbaPredictive through
onnxforge.bayes.numba_score, which checks it against the artifact first.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from onnxforge.errors import UserError

_EMPTY = np.empty(0, np.float32)
_NO_PLAN = (np.empty(0, np.int64), np.empty(0, np.int64), _EMPTY, np.empty((0, 0), np.float32))
PARALLEL_ROWS = 64  # below this many rows the serial kernels run (a parallel launch costs more than it saves)
DRAW_CHUNKS = 16  # draws from PARALLEL_ROWS rows: this many fixed row chunks, each with its own generator


def require_numba() -> None:
    try:
        import numba  # noqa: F401
    except ImportError:
        raise UserError("the numba engine needs numba — pip install numba (PyTensor ≥ 2.x installs it), or use "
                        "the ONNX artifact (engine='onnxruntime')") from None


class _Graph:
    """The predictive's symbolic pieces over all posterior samples: inputs, mu (rows, S) or (rows, K, S), family
    parameters, E[y|θ] and (when wanted) Var[y|θ], all PyTensor."""

    def __init__(self, pred):
        import pytensor.tensor as pt

        from onnxforge.bayes.predictive import Params
        from onnxforge.bayes.shim import pytensor_xp

        self.pred = pred
        self.xp = xp = pytensor_xp()
        self.s = s = pred.posterior.samples
        self.inputs, args = [], {}
        for spec in pred.inputs:
            cat = spec.name in pred.categorical
            dims = list(spec.shape or ["batch"])
            # static sizes where the config fixes them; a 1-D number is a (rows, 1) column, broadcastable as such
            static = (None,) if cat else (None, 1) if len(dims) == 1 else \
                (None, *[d if isinstance(d, int) else None for d in dims[1:]])
            var = pt.tensor(spec.name, dtype="int64" if pred.takes_integers(spec) else "float32", shape=static)
            self.inputs.append(var)
            args[spec.name] = var
        if hasattr(pred.transform, "graphs"):
            out = self._zero_code(pred, args)
        else:
            values = {n: pt.constant(np.asarray(pred.values[n], np.float32)) for n in sorted(pred.used)}
            out = pred.transform(xp, Params(values, pred.posterior.path), **{k: args[k] for k in pred.args})
        extra = {}
        if isinstance(out, dict):
            extra = {k: v for k, v in out.items() if k != "mu"}
            out = out["mu"]
        self.rows = rows = self.inputs[0].shape[0]
        out = pt.as_tensor(out)
        self.classes = bool(pred.family.classes and out.ndim == 3)
        self.shape = (rows, out.shape[1], s) if self.classes else (rows, s)
        self.mu = pt.broadcast_to(out, self.shape)
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
        self.p = p
        # float32 like the artifact (a zero-code graph computes in float64): half the bytes to reduce and sort
        self.m = pt.broadcast_to(pred.family.mean(xp, self.mu, p), self.shape).astype("float32")

    def variance(self):
        import pytensor.tensor as pt

        return pt.broadcast_to(self.pred.family.variance(self.xp, self.mu, self.p), self.shape).astype("float32")

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
        # a graph of the data alone (a known per-row sigma) gets no sample axis from vectorizing: give it one
        return {n: pt.moveaxis(o, 0, -1) if o.ndim > zc.graphs[n].ndim else o[..., None]
                for n, o in zip(names, outs, strict=True)}


def _quantile_plan(quantiles: list[float], s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's 'linear' rule: x[lo] + (x[hi] - x[lo]) * w, h = q (s - 1), lo = floor(h), hi = min(lo + 1, s - 1)."""
    h = np.asarray(quantiles, np.float64) * (s - 1)
    lo = np.minimum(np.floor(h).astype(np.int64), s - 1)
    hi = np.minimum(lo + 1, s - 1)
    return lo, hi, (h - lo).astype(np.float32)


def _encode(pred, inputs, feeds) -> list[np.ndarray]:
    enc = pred.encode(feeds)
    return [np.ascontiguousarray(enc[spec.name], dtype=var.type.dtype)
            for spec, var in zip(pred.inputs, inputs, strict=True)]


class NumbaPredictive:
    """The predictive's outputs {output name: array} for raw feeds (categorical levels as strings), computed with
    numba: see the module docstring. `threads`: numba threads for the row kernels (None: numba's current setting,
    numba.set_num_threads / NUMBA_NUM_THREADS; an int: that many during each call). `draws`: also return predictive
    draws when the predictive has them: numpy Generators (PCG64) run inside numba, one per fixed chunk of rows, so
    the draws do not depend on the thread count; with `seed` an engine's sequence of calls is reproducible (as a
    seeded artifact's session is), without it the generators start from fresh entropy. `mode`: PyTensor's mode for
    the mean function."""

    def __init__(self, pred, mode: str = "NUMBA", *, threads: int | None = None, draws: bool = True,
                 seed: int | None = None, parallel_rows: int = PARALLEL_ROWS):
        import pytensor

        from onnxforge.bayes.numba_kernels import DRAW_PARAMS, FAMILY_CODES, kernels

        require_numba()
        import numba

        if threads is not None:
            if type(threads) is not int or not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
                raise UserError(f"threads={threads!r}: the numba engine runs 1 to {numba.config.NUMBA_NUM_THREADS} "
                                "threads here (NUMBA_NUM_THREADS) — give one of those, or None for numba's setting")
        self.pred, self.threads, self.seed, self.parallel_rows = pred, threads, seed, parallel_rows
        self._numba = numba
        g = _Graph(pred)
        self.classes, self.s = g.classes, g.s
        self.inputs = g.inputs
        outs = [g.m]
        self.within: float | None = None
        self.want_within = False
        if pred.want_std:
            if not pred.family.variance_uses_mu and not pred.graph_params:
                self.within = float(np.float32(pred.within_variance()))  # a constant: no per-row work
            else:
                outs.append(g.variance().mean(-1))
                self.want_within = True
        fam = pred.family.name
        self.n_draws = pred.n_draws if draws else 0
        if self.n_draws:
            import pytensor.tensor as pt

            if not g.classes and fam not in FAMILY_CODES:
                raise UserError(f"the numba engine has no draws for family {fam} — NumbaPredictive(pred, "
                                "draws=False), or score draws with the artifact")
            self.code = -1 if g.classes else FAMILY_CODES[fam]
            self.mu_out = 0 if g.mu is g.m else len(outs)  # E[y|θ] is mu itself (normal, poisson, ...): reuse it
            if self.mu_out:
                outs.append(g.mu)
            # each draw parameter: a fixed array (per sample, or a number), an input (by position) or a graph output
            self.draw_p: list[tuple[str, Any]] = []
            names = [spec.name for spec in pred.inputs]
            for k in (() if g.classes else DRAW_PARAMS[fam]):
                kind, ref = pred.fparams[k]
                if kind == "var":
                    self.draw_p.append(("fixed", np.asarray(pred.values[ref], np.float64)))
                elif kind == "const":
                    self.draw_p.append(("fixed", np.asarray(float(ref), np.float64)))
                elif kind == "input":
                    self.draw_p.append(("input", names.index(ref)))
                else:
                    self.draw_p.append(("graph", len(outs)))
                    outs.append(pt.as_tensor(g.p[k]))
            self.draw_p += [("fixed", np.asarray(0.0))] * (2 - len(self.draw_p))
            self.draw_idx = np.ascontiguousarray(pred.draw_index(), dtype=np.int64)
        self.fn = pytensor.function(self.inputs, outs, mode=mode, on_unused_input="ignore")
        self.fn.trust_input = True
        self.plan = _quantile_plan(pred.quantiles, g.s) if pred.quantiles else None
        self.names = dict(pred.output_names)
        if not self.n_draws:
            self.names.pop("draws", None)
        self.names = {k: self.names[k] for k in ("mean", "std", "quantiles", "draws") if k in self.names}
        self.within_c = np.float64(self.within if self.within is not None else 0.0)
        self.k = kernels()
        self._lock = threading.Lock()
        # numpy Generators (numba runs their ziggurat/PCG64 code): one per fixed row chunk, so the draws do not
        # depend on the thread count; from `seed` a reproducible sequence per engine, as a seeded artifact's
        self.gens = tuple(np.random.default_rng(c) for c in np.random.SeedSequence(seed).spawn(DRAW_CHUNKS))
        self._fn_lock = threading.Lock()
        self._encoders = [self._encoder(spec, var) for spec, var in zip(pred.inputs, self.inputs, strict=True)]

    # ------------------------------------------------------------------ calls

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw feeds by name (categorical levels as given: strings or integers)."""
        missing = [spec.name for spec in self.pred.inputs if spec.name not in feeds]
        if missing:
            raise UserError(f"missing input(s) {missing} — the model takes {[s.name for s in self.pred.inputs]}")
        return self.score([feeds[spec.name] for spec in self.pred.inputs])

    def score(self, raw: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Raw inputs in the predictive's (the artifact's) input order."""
        return self.run([enc(a) for enc, a in zip(self._encoders, raw, strict=True)])

    def _encoder(self, spec, var):
        cat = self.pred.categorical.get(spec.name)
        if cat is None:
            nd = var.type.ndim

            dtype = np.int64 if var.type.dtype == "int64" else np.float32

            def number(a):
                a = np.ascontiguousarray(a, dtype=dtype)
                return a.reshape(-1, 1) if a.ndim == 1 and nd == 2 else a
            return number
        lut = {level: code for code, level in enumerate(cat.levels)}

        def category(a):
            a = np.asarray(a)
            if a.size <= 64 and a.dtype.kind in "OUi":  # a dict lookup beats argsort + searchsorted at a few rows
                flat = a.reshape(-1)
                codes = np.fromiter((lut.get(v, -1) for v in flat.tolist()), np.int64, flat.size)
                if (codes >= 0).all():
                    return codes
            codes, unseen = cat.encode(a)  # the predictive's own rule, unseen levels and their policy included
            if cat.policy == "error":
                cat.refuse_unseen(a, unseen)
            return codes
        return category

    def run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded inputs (codes for categorical inputs, float32 numbers) in the predictive's input order."""
        with self._fn_lock:  # a compiled PyTensor function holds its inputs in shared containers
            res = self.fn(*arrays)
        m = res[0]
        lead = m.shape[:-1]
        m2 = np.ascontiguousarray(m, dtype=np.float32).reshape(-1, self.s)
        n = m2.shape[0]
        par = 0
        prev = None
        if n >= self.parallel_rows:
            threads = self.threads if self.threads is not None else self._numba.get_num_threads()
            par = int(threads > 1)
            if par and self.threads is not None and self._numba.get_num_threads() != threads:
                prev = self._numba.get_num_threads()
                self._numba.set_num_threads(threads)
        try:
            draws = self._draws(res, arrays, lead[0], par) if self.n_draws else None  # before m is sorted
            if self.plan is not None:
                if not m2.flags.writeable:
                    m2 = np.sort(m2, axis=-1)
                else:  # a fresh array (PyTensor copies an output that aliases its constants): sorted in place
                    m2.sort(axis=-1)
                lo, hi, w = self.plan
                q = np.empty((n, len(w)), np.float32)
            else:
                lo, hi, w, q = _NO_PLAN
            pr = self.pred
            mean = np.empty(n if pr.want_mean or pr.want_std else 0, np.float32)
            std = np.empty(n if pr.want_std else 0, np.float32)
            within = np.ascontiguousarray(res[1].reshape(-1), dtype=np.float32) if self.want_within else _EMPTY
            self.k["summary"][par](m2, within, self.within_c, lo, hi, w, mean, std, q)
        finally:
            if prev is not None:
                self._numba.set_num_threads(prev)
        out = {}
        for kind, name in self.names.items():
            out[name] = (mean.reshape(lead) if kind == "mean" else std.reshape(lead) if kind == "std"
                         else draws if kind == "draws" else q.reshape(*lead, len(w)))
        return out

    def _draws(self, res, arrays, rows: int, par: int) -> np.ndarray:
        out = np.empty((rows, self.n_draws), np.float32)
        mu = res[self.mu_out]
        shape = (rows, self.s)
        ps = []
        for kind, ref in self.draw_p:  # broadcast views (zero strides), no copies
            v = ref if kind == "fixed" else arrays[ref] if kind == "input" else res[ref]
            ps.append(np.broadcast_to(np.asarray(v, np.float64), shape))
        # below parallel_rows rows one generator draws them all (numba unboxes each Generator per call, ~7 µs);
        # from there the rows are cut into DRAW_CHUNKS chunks, each with its own: fixed by the row count alone
        gens = self.gens if rows >= self.parallel_rows else self.gens[:1]
        with self._lock:  # the generators advance: one call at a time draws
            if self.code < 0:
                self.k["class_draws"][par](gens, mu, self.draw_idx, out)
            else:
                self.k["draws"][par](gens, self.code, mu, ps[0], ps[1], self.draw_idx, out)
        return out


class PyTensorPredictive:
    """Mean, std and exact quantiles (sort + numpy's 'linear' rule) as one compiled PyTensor function: mode
    "FAST_RUN" (PyTensor's C backend) or "NUMBA" (its numba backend, sort included). The bench's compiled-PyTensor
    baseline; no draws."""

    def __init__(self, pred, mode: str = "FAST_RUN"):
        import pytensor
        import pytensor.tensor as pt

        g = _Graph(pred)
        self.pred, self.inputs = pred, g.inputs
        m = g.m
        mean = m.mean(-1)
        outs = []
        if pred.want_mean:
            outs.append(mean)
        if pred.want_std:
            within = g.variance().mean(-1)
            d = m - mean[..., None]
            outs.append(pt.sqrt(within + (d * d).mean(-1)))
        if pred.quantiles:
            srt = pt.sort(m, axis=-1)
            lo, hi, w = _quantile_plan(pred.quantiles, g.s)
            cols = [srt[..., a] + (srt[..., b] - srt[..., a]) * c for a, b, c in zip(lo, hi, w, strict=True)]
            outs.append(pt.stack(cols, axis=-1))
        self.names = [pred.output_names[k] for k in ("mean", "std", "quantiles") if k in pred.output_names]
        self.fn = pytensor.function(self.inputs, outs, mode=mode, on_unused_input="ignore")
        self.fn.trust_input = True

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.fn(*_encode(self.pred, self.inputs, feeds)), strict=True))

"""The loaded predictive: posterior + transform + family + categorical encoding, evaluated with numpy.

This numpy evaluation (float64, on the posterior as stored) is the reference the ONNX artifact is validated
against; the torch module (module.py) is built from the same object, so both see the same parameters.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.bayes.families import Family
from onnxforge.bayes.posterior import Posterior, thin_index
from onnxforge.errors import UserError


def load_callable(ref: str, what: str) -> Callable:
    """'path/to/file.py:name' → the function (the file is imported as a module; it is the user's code)."""
    path_s, _, name = str(ref).rpartition(":")
    if not path_s or not name:
        raise UserError(f"source.{what}: expected 'path/file.py:function', got {ref!r}")
    path = Path(path_s)
    if not path.is_file():
        raise UserError(f"source.{what}: file not found: {path} — paths are relative to the config file")
    mod_name = f"_onnxforge_user_{abs(hash(str(path.resolve())))}"
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            raise UserError(f"source.{what}: importing {path.name} failed ({type(e).__name__}: {e})") from None
        sys.modules[mod_name] = mod
    fn = getattr(mod, name, None)
    if not callable(fn):
        have = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))
        raise UserError(f"source.{what}: {path.name} has no function '{name}' — it has: {', '.join(have)}")
    return fn


class Params(Mapping):
    """The `params` a transform sees: posterior variables by name, recording which ones it used. A name the
    posterior does not have is the user's error, reported with the names it does have."""

    def __init__(self, values: Mapping[str, Any], path: Path, used: set[str] | None = None):
        self._values, self._path, self.used = values, path, used if used is not None else set()

    def __getitem__(self, name: str):
        if name not in self._values:
            raise UserError(f"the transform asks for posterior variable '{name}' but {self._path.name} has only "
                            f"{', '.join(sorted(self._values))} — fix the transform or the posterior file")
        self.used.add(name)
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)


@dataclass
class Categorical:
    input: str
    dim: str
    levels: list
    policy: str  # error | population
    population: dict[str, str]

    @property
    def unseen_code(self) -> int:
        # out of range for `error` (the in-graph guard fails); the appended population level for `population`
        return len(self.levels)

    def encode(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, unseen mask) for raw levels."""
        raw = np.asarray(raw).reshape(-1)
        levels = np.asarray(self.levels)
        keys = raw.astype(str) if levels.dtype.kind == "U" else raw
        order = np.argsort(levels, kind="stable")
        pos = np.searchsorted(levels[order], keys)
        pos = np.minimum(pos, len(levels) - 1)
        hit = levels[order][pos] == keys
        codes = np.where(hit, order[pos], -1).astype(np.int64)
        unseen = codes < 0
        codes[unseen] = self.unseen_code
        return codes, unseen

    def refuse_unseen(self, raw: np.ndarray, unseen: np.ndarray) -> None:
        if unseen.any():
            bad = sorted({str(v) for v in np.asarray(raw).reshape(-1)[unseen]})
            raise UserError(f"input '{self.input}': {int(unseen.sum())} row(s) have levels not in the posterior "
                            f"({', '.join(bad[:5])}) and the unseen policy is 'error' — known levels: "
                            f"{', '.join(map(str, self.levels[:10]))}; or set categorical.{self.input}.policy: "
                            "population")


def _about_shapes(message: str) -> bool:
    """numpy's broadcasting, matmul and indexing errors (the usual result of inputs that do not fit the posterior)."""
    words = ("shape", "broadcast", "dimension", "mismatch", "out of bounds", "size", "axis", "operands", "index")
    return any(w in message.lower() for w in words)


@dataclass
class BayesPredictive:
    posterior: Posterior
    transform: Callable
    family: Family
    inputs: list  # TensorSpec, in the config's order (the ONNX input order)
    args: list[str]  # the transform's input arguments (family-parameter inputs may be extra)
    categorical: dict[str, Categorical]
    fparams: dict[str, tuple[str, Any]]  # family parameter → ("var", name) | ("const", float) | ("input", name)
    quantiles: list[float]
    want_mean: bool
    want_std: bool
    n_draws: int
    max_count: int
    output_names: dict[str, str]  # kind (mean|std|quantiles|draws) → ONNX output name
    used: set[str] = field(default_factory=set)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # float64, extended with population levels
    builder: Callable | None = None
    observed: str = "y"

    # ------------------------------------------------------------------ inputs

    def encode(self, feeds: dict[str, np.ndarray], *, refuse: bool = True) -> dict[str, np.ndarray]:
        """Raw feeds → the arrays the transform sees: categorical levels become integer codes (unseen levels
        refused under `error`), numeric arrays become float64 (1-D ones as (rows, 1) columns)."""
        out = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise UserError(f"missing input '{spec.name}' — the transform takes {[s.name for s in self.inputs]}")
            arr = np.asarray(feeds[spec.name])
            cat = self.categorical.get(spec.name)
            if cat is not None:
                codes, unseen = cat.encode(arr)
                if refuse and cat.policy == "error":
                    cat.refuse_unseen(arr, unseen)
                out[spec.name] = codes
            else:
                a = arr.astype(np.float64)
                out[spec.name] = a.reshape(-1, 1) if a.ndim == 1 else a
        return out

    def dummy_feeds(self, rows: int = 3) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.inputs:
            shape = [rows] + [d if isinstance(d, int) else 1 for d in (spec.shape or ["batch"])[1:]]
            cat = self.categorical.get(spec.name)
            feeds[spec.name] = (np.asarray(cat.levels)[np.zeros(shape, dtype=int)] if cat is not None
                                else np.zeros(shape, dtype=np.float32))
        return feeds

    # ------------------------------------------------------------------ numpy evaluation

    def mu(self, encoded: dict[str, np.ndarray], values: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The transform over all posterior samples: (rows, samples)."""
        return self.evaluate(encoded, values)[0]

    @property
    def graph_params(self) -> list[str]:
        """Family parameters the transform computes per row besides mu (zero-code export: e.g. a sigma that
        depends on the inputs)."""
        return [k for k, (kind, _) in self.fparams.items() if kind == "graph"]

    def evaluate(self, encoded: dict[str, np.ndarray],
                 values: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(mu, {graph parameter: value}), each (rows, samples). A hand transform returns mu; a zero-code one a
        mapping of the family parameters that depend on the inputs."""
        from onnxforge.bayes.shim import numpy_xp

        values = self.values if values is None else values
        rows = len(next(iter(encoded.values())))
        params = Params(values, self.posterior.path, self.used)
        with np.errstate(all="ignore"):
            try:
                out = self.transform(numpy_xp(), params, **{k: encoded[k] for k in self.args})
            except UserError:
                raise
            except (ValueError, IndexError) as e:
                raise UserError(self._shape_message(encoded, e)) from None
            except Exception as e:  # the user's code failed: their bug to fix (exit 2), named as it is
                raise UserError(self._raised_message(e)) from None
        if out is None or (not isinstance(out, dict) and np.asarray(out).dtype.kind not in "biuf"):
            raise UserError(f"the transform returned {type(out).__name__}, not mu — return an array of shape "
                            "(rows, samples) computed with xp (e.g. return xp.exp(params['a'] + X @ params['b']))")
        extra = {}
        if isinstance(out, dict):
            extra = {k: self._rows_by_samples(v, rows, encoded) for k, v in out.items() if k != "mu"}
            out = out["mu"]
        return self._rows_by_samples(out, rows, encoded), extra

    def _rows_by_samples(self, out, rows: int, encoded) -> np.ndarray:
        out = np.asarray(out, dtype=np.float64)
        want = (rows, self.posterior.samples)
        if self.family.classes and out.ndim == 3:  # class probabilities (rows, K, samples)
            want = (rows, out.shape[1], self.posterior.samples)
        try:
            return np.broadcast_to(out, want) if out.shape != want else out
        except ValueError:
            raise UserError(f"the transform returned shape {list(out.shape)} but needs (rows, samples) = "
                            f"{list(want)}: {self._shapes(encoded)} — make the input shapes match the posterior "
                            "dims") from None

    @property
    def subject(self) -> str:
        """What computes mu, for messages: a zero-code model's graph, or the hand-written transform."""
        return "the model's graph" if hasattr(self.transform, "graphs") else "the transform"

    def _shapes(self, encoded) -> str:
        ins = ", ".join(f"{k} {list(v.shape)}" for k, v in encoded.items())
        used = self.used or set(self.values)
        parts = []
        for k in sorted(used):
            if k in self.values:
                dims = ", ".join(f"{d}={n}" for d, n in zip(self.posterior.dims.get(k, ()), self.values[k].shape,
                                                            strict=False))
                parts.append(f"{k}({dims})")
        post = ", ".join(parts)
        return f"inputs {ins}; posterior {post} (+ a trailing axis of {self.posterior.samples} samples)"

    def _shape_message(self, encoded, e: Exception) -> str:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        what = self.subject
        if not _about_shapes(first):
            return self._raised_message(e)
        return (f"{what} fails on these shapes ({first}): {self._shapes(encoded)} — make inputs[].shape match the "
                "posterior dims (e.g. a design matrix's columns = the length of its coefficients' dim)")

    def _raised_message(self, e: Exception) -> str:
        first = " ".join((str(e).splitlines() or [""])[0].split())[:200]
        what = self.subject
        return f"{what} raised {type(e).__name__}: {first} — fix {what} (it runs on the posterior's samples)"

    def family_params(self, encoded: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, Any]:
        out = {}
        for name, (kind, ref) in self.fparams.items():
            if kind == "var":
                v = self.values[ref]
                out[name] = v if index is None else v[..., index]
            elif kind == "graph":
                continue  # computed per row by the transform (evaluate)
            elif kind == "input":
                out[name] = encoded[ref]
            else:
                out[name] = ref
        return out

    def outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Deterministic outputs (mean, std, quantiles) in float64: the validation reference."""
        from onnxforge.bayes.shim import numpy_xp

        xp = numpy_xp()
        enc = self.encode(feeds)
        mu, extra = self.evaluate(enc)
        p = {**self.family_params(enc), **extra}
        with np.errstate(all="ignore"):
            m = np.broadcast_to(self.family.mean(xp, mu, p), mu.shape)
            mean = m.mean(-1)
        bad = ~np.isfinite(mean).reshape(len(mean), -1).all(-1)
        if bad.any():  # both sides would be NaN alike and every comparison would pass on nothing
            what = self.subject
            raise UserError(f"{what} gives a NaN/inf mean for {int(bad.sum())} of {len(bad)} rows (row "
                            f"{int(np.argmax(bad))} first) on these data and the posterior's samples — fix {what} "
                            "(a log or sqrt of a negative value? a division by zero?) or those rows")
        with np.errstate(all="ignore"):
            res = {}
            if self.want_mean:
                res[self.output_names["mean"]] = mean
            if self.want_std:
                within = np.broadcast_to(self.family.variance(xp, mu, p), mu.shape).mean(-1)
                res[self.output_names["std"]] = np.sqrt(within + ((m - mean[..., None]) ** 2).mean(-1))
            if self.quantiles:  # (rows, Q), or (rows, K, Q) per class
                res[self.output_names["quantiles"]] = np.moveaxis(np.quantile(m, self.quantiles, axis=-1), 0, -1)
        return res

    def within_variance(self) -> float:
        """Mean over samples of Var[y | theta], for families whose noise variance does not depend on mu."""
        from onnxforge.bayes.shim import numpy_xp

        mu = np.zeros((1, self.posterior.samples))
        with np.errstate(all="ignore"):
            v = self.family.variance(numpy_xp(), mu, self.family_params({}))
        return float(np.broadcast_to(v, mu.shape).mean())

    def draw_index(self) -> np.ndarray:
        """Which posterior sample each predictive draw uses."""
        s = self.posterior.samples
        return thin_index(s, self.n_draws) if self.n_draws <= s else np.arange(self.n_draws) % s

    # ------------------------------------------------------------------ PyMC reference draws

    def takes_integers(self, spec) -> bool:
        """The input reaches the model as int64: a categorical's codes, or an input declared integer (an index)."""
        return spec.name in self.categorical or str(spec.dtype).startswith(("int", "uint"))

    def builder_args(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encoded feeds as the model builder takes them: 1-D numeric inputs back to 1-D, codes as integers."""
        args = {}
        for spec in self.inputs:
            cat = self.categorical.get(spec.name)
            a = encoded[spec.name]
            a = a.reshape(-1) if (cat is None and a.ndim == 2 and a.shape[1] == 1
                                  and len(spec.shape or [1]) == 1) else a
            if cat is None and self.takes_integers(spec):
                a = a.astype(np.int64)  # an integer input (a group index) stays integer for the model's pm.Data
            args[spec.name] = a
        return args

    def build_model(self, encoded: dict[str, np.ndarray]):
        """source.model called on these rows (and the posterior's coords)."""
        from onnxforge.bayes.lower import call_builder

        if self.builder is None:
            raise UserError("source.model is not set")
        args = self.builder_args(encoded)
        model = call_builder(self.builder, args, {d: list(c) for d, c in self.posterior.coords.items()})
        put_rows(model, args)
        return model

    def sample_pymc(self, feeds: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
        """pm.sample_posterior_predictive on the same new data and the same (thinned) posterior: (rows, samples)."""
        import logging
        import warnings

        if self.builder is None:
            raise UserError("the stochastic check needs source.model ('file.py:builder' returning the pm.Model) "
                            "to run pm.sample_posterior_predictive — set it, or drop outputs.draws")
        import pymc as pm

        enc = self.encode(feeds)
        for spec in self.inputs:
            cat = self.categorical.get(spec.name)
            if cat is not None and (enc[spec.name] >= len(cat.levels)).any():
                raise UserError(f"input '{spec.name}' has levels the PyMC model never saw — "
                                "pm.sample_posterior_predictive cannot score them; use data with known levels")
        model = self.build_model(enc)
        if self.observed not in model.named_vars:
            raise UserError(f"source.observed: the PyMC model has no variable '{self.observed}' — it has "
                            f"{', '.join(sorted(model.named_vars))[:200]}")
        log = logging.getLogger("pymc")  # PyMC logs "Sampling: [y]" at INFO on every call: noise in our output
        level = log.level
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log.setLevel(logging.WARNING)
            try:
                idata = pm.sample_posterior_predictive(self.posterior.dataset(), model=model,
                                                       var_names=[self.observed], random_seed=seed,
                                                       progressbar=False)
            except Exception as e:  # PyMC's own sampler on the user's model (e.g. float trials for a Binomial)
                msg = " ".join(str(e).split())[:200]
                raise UserError(f"the stochastic check's reference failed: pm.sample_posterior_predictive on the "
                                f"model raised {type(e).__name__}: {msg} — fix the model so PyMC can sample it "
                                "(or drop outputs.draws)") from None
            finally:
                log.setLevel(level)
        draws = idata.posterior_predictive[self.observed].values  # (chain, draw, rows)
        return draws.reshape(-1, draws.shape[-1]).T.astype(np.float64)


def put_rows(model, args: dict[str, np.ndarray]) -> None:
    """The new rows into the model's pm.Data, as `pm.set_data` does before pm.sample_posterior_predictive: a
    builder() that takes no inputs was built on its training data, and a dim of the rows (dims=("obs_id", ...))
    still has the posterior's coords, as long as the training rows."""
    import pymc as pm

    data = {v.name: v for v in model.data_vars}
    values, coords = {}, {}
    for k, v in args.items():
        if k not in data:
            continue
        v, have = np.asarray(v), data[k].get_value()
        dims = model.named_vars_to_dims.get(k) or ()
        row_dim = dims[0] if dims and dims[0] is not None else None
        if row_dim is not None and len(model.coords.get(row_dim) or ()) != len(v):
            coords[row_dim] = np.arange(len(v))
        elif v.shape == have.shape and np.array_equal(v, have):
            continue  # the builder took these rows itself (and cast them as it wanted)
        dt = np.dtype(data[k].dtype)
        if dt.kind in "iu" and (v.dtype.kind in "iu" or (v.dtype.kind == "f" and np.all(v == np.round(v)))):
            v = v.astype(dt)  # whole numbers for integer data (int32 on some platforms): same values, its dtype
        values[k] = v
    if not values:
        return
    try:
        pm.set_data(values, model=model, coords=coords or None)
    except Exception as e:  # the model's own checks (dtype, rank, a dim it does not let change)
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"source.model: putting the new rows into the model's pm.Data failed ({type(e).__name__}: "
                        f"{msg}) — give inputs shaped and typed as its pm.Data ({', '.join(values)})") from None

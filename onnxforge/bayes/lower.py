"""Zero-code export: the observed variable's distribution parameters, read from the PyMC model itself.

`source.model` builds the model; the observed variable's random-variable node gives the family (NormalRV → normal,
…) and its parameters as PyTensor graphs. In those graphs every free variable and deterministic the posterior holds
becomes a placeholder for its posterior draws (a deterministic is cut where it stands, so an unseen-level
population value appended to it reaches the rows), and every `pm.Data` named in `inputs:` becomes a placeholder for
new data. The result behaves as a transform: `zc(xp, params, **inputs)` returns the family parameters that depend
on the inputs, shaped (rows, samples) — with numpy through PyTensor itself (compiled once, run per posterior sample:
the validation reference), with torch through the op lowering in lower_torch (the ONNX artifact). Parameters that
depend on the posterior only (a noise sigma) are evaluated once, in float64, into per-sample values, exactly as a
hand-written config's `params: {sigma: sigma}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxforge.errors import UserError

# RandomVariable op → (family, its dist params → the family's parameters). Written as PyTensor expressions so that
# the reference (PyTensor) and the artifact (the lowering) compute the same thing from the same graph.
FAMILY_OF_RV = {
    "NormalRV": ("normal", lambda p: {"mu": p[0], "sigma": p[1]}),
    "StudentTRV": ("student-t", lambda p: {"nu": p[0], "mu": p[1], "sigma": p[2]}),
    "BernoulliRV": ("bernoulli", lambda p: {"mu": p[0]}),
    "BinomialRV": ("binomial", lambda p: {"n": p[0], "mu": p[1]}),
    "PoissonRV": ("poisson", lambda p: {"mu": p[0]}),
    # PyMC stores NegativeBinomial(mu, alpha) as nbinom(n=alpha, p=alpha/(mu+alpha))
    "NegBinomialRV": ("negative-binomial", lambda p: {"mu": p[0] * (1.0 - p[1]) / p[1], "alpha": p[0]}),
    # PyTensor's gamma takes (shape, scale): PyMC's Gamma(alpha, beta) is gamma(alpha, 1 / beta)
    "GammaRV": ("gamma", lambda p: {"mu": p[0] * p[1], "alpha": p[0]}),
    "LogNormalRV": ("lognormal", lambda p: {"mu": p[0], "sigma": p[1]}),
    "BetaRV": ("beta", lambda p: {"mu": p[0] / (p[0] + p[1]), "kappa": p[0] + p[1]}),
    "CategoricalRV": ("categorical", lambda p: {"mu": p[0]}),
}
LIKELIHOODS = ("pm.Normal, StudentT, Bernoulli, Binomial, Poisson, NegativeBinomial, Gamma, LogNormal, Beta, "
               "Categorical (OrderedLogistic, OrderedProbit), ZeroInflatedPoisson and ZeroInflatedNegativeBinomial")
HINT = "write the mean function yourself as source.transform: 'file.py:function' (fn(xp, params, **inputs))"


def _traversal():
    try:
        from pytensor.graph import traversal as t
    except ImportError:  # pytensor < 2.36
        from pytensor.graph import basic as t
    return t


def call_builder(builder, args: dict[str, np.ndarray], coords: dict):
    """builder(**inputs, coords=...) as the hand-transform configs use it, or builder() for a model that takes
    its data from pm.Data defaults (then the data are replaced by name)."""
    import inspect

    sig = inspect.signature(builder).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.values())
    kw = {k: v for k, v in args.items() if k in sig or takes_any}
    if "coords" in sig or takes_any:
        kw["coords"] = coords
    name = getattr(builder, "__name__", "the builder")
    try:
        return builder(**kw)
    except TypeError as e:
        odd = [k for k in args if not k.isidentifier()]  # 'sub::x' from pm.Model(name="sub"): no parameter name
        kwargs = f", or **kwargs: {odd[0]!r} is no Python name" if odd else ""
        raise UserError(f"source.model: calling the builder failed ({e}) — it must accept the inputs "
                        f"{list(args)} (or none of them{kwargs}) and coords=") from None
    except Exception as e:  # the user's code failed: their bug to fix, not ours (exit 2, not an internal error)
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"source.model: {name}() raised {type(e).__name__}: {msg} — fix the model builder (it is "
                        f"called with the inputs {list(args)} as new rows, and coords=)") from None


@dataclass
class ZeroCode:
    """The observed variable's family parameters as a transform (see the module docstring)."""

    observed: str
    family: str
    input_vars: dict[str, Any]  # input name → PyTensor placeholder (the pm.Data it replaces)
    param_vars: dict[str, Any]  # posterior variable → placeholder
    graphs: dict[str, Any]  # family parameter → PyTensor graph of the placeholders (the ones depending on inputs)
    ops: list[str] = field(default_factory=list)  # the op names in the graphs, for the report
    _fn: Any = None
    _torch: Any = None

    @property
    def used(self) -> list[str]:
        anc = set(_traversal().ancestors(list(self.graphs.values())))
        return sorted(n for n, v in self.param_vars.items() if v in anc)

    def direct_inputs(self) -> dict[str, str]:
        """Family parameter → the input it is, unchanged but for dims and casts (binomial n=pm.Data("trials")):
        the scorer checks such an input against the parameter's domain."""
        out = {}
        for name, g in self.graphs.items():
            found = _placeholder(g, self.input_vars, casts=True)
            if name != "mu" and found is not None:
                out[name] = found
        return out

    @property
    def inputs_used(self) -> list[str]:
        anc = set(_traversal().ancestors(list(self.graphs.values())))
        return [n for n, v in self.input_vars.items() if v in anc]

    def _constants(self) -> list[tuple[str, bytes]]:
        from pytensor.graph.basic import Constant

        out = []
        for node in _traversal().io_toposort([], list(self.graphs.values())):
            for i in node.inputs:
                if isinstance(i, Constant) and not isinstance(i.data, slice | type(None)):
                    out.append((str(node.op), np.asarray(i.data).tobytes()))
        return out

    def constants_changed(self, other: ZeroCode) -> str | None:
        """The op whose constant input differs between two builds of the model (None: same graph constants)."""
        a, b = self._constants(), other._constants()
        for (op, x), (_, y) in zip(a, b, strict=False):
            if x != y:
                return f"the op {op} in {self.observed}'s graph"
        return None if len(a) == len(b) else f"{self.observed}'s graph"

    def _shape_inputs(self, inputs: dict) -> dict:
        # onnxforge hands 1-D numeric inputs over as (rows, 1) columns; the pm.Data has its own rank
        out = {}
        for k, v in inputs.items():
            nd = self.input_vars[k].ndim
            out[k] = v.reshape(v.shape[0]) if nd == 1 and v.ndim == 2 else v
        return out

    def __call__(self, xp, params, **inputs) -> dict:
        values = {n: params[n] for n in self.used}  # records what the artifact stores
        inputs = self._shape_inputs(inputs)
        if xp.name == "torch":
            return self.torch_module()(inputs, values)
        return self.reference(inputs, values)

    def reference(self, inputs: dict, values: dict) -> dict:
        """PyTensor's own evaluation, posterior sample by sample: {param: (*core, samples)} in float64."""
        import pytensor

        names = list(self.graphs)
        if self._fn is None:
            ins = [self.input_vars[n] for n in self.inputs_used] + [self.param_vars[n] for n in self.used]
            self._fn = pytensor.function(ins, [self.graphs[n] for n in names], mode="FAST_COMPILE",
                                         on_unused_input="ignore")
        data = [np.asarray(inputs[n], dtype=self.input_vars[n].dtype) for n in self.inputs_used]
        post = [np.asarray(values[n]) for n in self.used]
        s = post[0].shape[-1] if post else 1
        outs: list[list[np.ndarray]] = [[] for _ in names]
        for i in range(s):
            res = self._fn(*data, *[p[..., i] for p in post])
            for acc, r in zip(outs, res, strict=True):
                acc.append(np.asarray(r, dtype=np.float64))
        return {n: np.stack(acc, axis=-1) for n, acc in zip(names, outs, strict=True)}

    def torch_module(self):
        if self._torch is None:
            from onnxforge.bayes.lower_graph import TorchGraph

            self._torch = TorchGraph(self)
        return self._torch


def _rv_family(model, observed: str):
    from pytensor.tensor.random.op import RandomVariable

    names = [v.name for v in model.observed_RVs]
    if observed not in names and observed in {v.name for v in model.free_RVs}:
        raise UserError(f"source.observed: '{observed}' is a free variable of the model as the builder built it, "
                        "not an observed one (observed=None when called without the labels?) — give it placeholder "
                        "observations when the labels are missing, e.g. observed=np.zeros(len(x)), "
                        "with shape=x.shape[0]")
    if observed not in names:
        raise UserError(f"source.observed: '{observed}' is not an observed variable of the PyMC model — it has "
                        f"{', '.join(names) or 'none'}")
    rv = model[observed]
    node = rv.owner
    op = node.op if node is not None else None
    kind = type(op).__name__
    if kind == "MixtureRV":
        found = _zero_inflated(op, node)
        if found is not None:
            return found
    if not isinstance(op, RandomVariable) or kind not in FAMILY_OF_RV:
        what = getattr(op, "name", None) or (kind or type(rv).__name__).removesuffix("RV")  # weibull, Censored
        raise UserError(f"zero-code export: the observed '{observed}' is a {what} likelihood, which onnxforge has no "
                        f"predictive family for — the supported ones are {LIKELIHOODS}")
    family, params = FAMILY_OF_RV[kind]
    return family, params(list(op.dist_params(node)))


def _zero_inflated(op, node):
    """pm.ZeroInflatedPoisson / ZeroInflatedNegativeBinomial: a two-component mixture of DiracDelta(0) and a count
    RandomVariable, weights (1 - psi, psi)."""
    w, *comps = op.dist_params(node)
    if len(comps) != 2 or "DiracDelta" not in type(comps[0].owner.op).__name__:
        return None
    count = comps[1].owner
    kind = type(count.op).__name__
    if kind not in ("PoissonRV", "NegBinomialRV"):
        return None
    fam, params = FAMILY_OF_RV[kind]
    out = params(list(count.op.dist_params(count)))
    # the weights are MakeVector(1 - psi, psi) for a scalar psi: take psi itself (a per-sample value then)
    out["psi"] = w.owner.inputs[1] if type(getattr(w.owner, "op", None)).__name__ == "MakeVector" else w[..., 1]
    return f"zero-inflated-{fam}", out


def extract(model, observed: str, input_names: list[str], posterior):
    """(family, the ZeroCode of the input-dependent parameters, {param: ("var", posterior name, None) | ("var",
    new name, per-sample values) | ("const", number, None)} for the others)."""
    import pytensor.tensor as pt
    from pytensor.graph.replace import clone_replace
    from pytensor.tensor.random.op import RandomVariable

    family, graphs = _rv_family(model, observed)
    data = {v.name: v for v in model.data_vars}
    unknown = [n for n in input_names if n not in data]
    if unknown:
        raise UserError(f"inputs: '{unknown[0]}' is not a pm.Data of the model — zero-code inputs are its pm.Data "
                        f"names: {', '.join(data) or 'none (wrap the predictors in pm.Data)'}")
    repl, input_vars, param_vars = {}, {}, {}
    for name in input_names:
        v = data[name]
        input_vars[name] = repl[v] = pt.tensor(name=name, dtype=v.dtype, shape=(None,) * v.ndim)
    # deterministics first: cut there, so values appended to them (population levels) reach the rows — but not
    # one computed from the data (OrderedLogistic's y_probs): its stored values belong to the training rows
    trav = _traversal()
    data_vars = set(model.data_vars)
    for v in [*model.deterministics, *model.free_RVs]:
        if v in model.deterministics and data_vars & set(trav.ancestors([v])):
            continue
        if v.name in posterior.values and v.name not in param_vars:
            param_vars[v.name] = repl[v] = pt.tensor(name=v.name, dtype=v.dtype, shape=(None,) * v.ndim)
    names = list(graphs)
    replaced = clone_replace([pt.as_tensor_variable(graphs[n]) for n in names], replace=repl)
    graphs = dict(zip(names, replaced, strict=True))
    nodes = list(trav.io_toposort([], list(graphs.values())))
    for node in nodes:
        if isinstance(node.op, RandomVariable):
            out = node.outputs[1] if len(node.outputs) > 1 else node.outputs[0]
            name = getattr(out, "name", None) or str(node.op)
            raise UserError(f"zero-code export: '{observed}' depends on '{name}', which {posterior.path.name} does "
                            f"not hold (it has {', '.join(sorted(posterior.values))}) — store it in the posterior "
                            f"(pm.Deterministic) or {HINT}")
    from onnxforge.bayes import lower_torch

    for node in nodes:
        what = lower_torch.unsupported(node)
        if what is not None:
            param = next(n for n, g in graphs.items() if node in {a.owner for a in trav.ancestors([g])})
            raise UserError(f"zero-code export: PyTensor op {what} (in the graph of {observed}'s {param}) has no "
                            f"ONNX lowering — {HINT}")
    anc_inputs = {n: set(trav.ancestors([g])) & set(input_vars.values()) for n, g in graphs.items()}
    zc = ZeroCode(observed, family, input_vars, param_vars, {},
                  ops=sorted({type(n.op).__name__ if type(n.op).__name__ != "Elemwise"
                              else type(n.op.scalar_op).__name__ for n in nodes}))
    fixed: dict[str, tuple[str, np.ndarray | None]] = {}
    for n, g in graphs.items():
        if n == "mu" or anc_inputs[n]:
            zc.graphs[n] = g
            continue
        direct = _placeholder(g, param_vars)
        if direct is not None and posterior.values[direct].ndim == 1:
            fixed[n] = ("var", direct, None)  # the posterior variable itself, as params: {sigma: sigma} by hand
            continue
        # posterior-only parameter: per-sample values, computed once by PyTensor in float64
        probe = ZeroCode(observed, family, {}, param_vars, {n: g})
        values = probe.reference({}, {k: posterior.values[k] for k in probe.used})[n]
        if int(np.prod(values.shape[:-1])) != 1:
            zc.graphs[n] = g  # shaped like the training rows or groups: leave it to the graph
            continue
        if not probe.used:  # a number in the model (sigma=1.0, nu=4, n=20): a constant, as params: {sigma: 1.0}
            fixed[n] = ("const", float(values.reshape(-1)[0]), None)
            continue
        fixed[n] = ("var", f"{observed}.{n}", values.reshape(-1))
    return family, zc, fixed


def _placeholder(g, named: dict, casts: bool = False) -> str | None:
    """The placeholder `g` is, up to broadcasting dims and views (sigma → ExpandDims(sigma)) and, with casts, dtype
    casts (an int64 pm.Data as float)."""
    def passes(op) -> bool:
        kind = type(op).__name__
        return kind in ("DimShuffle", "ViewOp", "SpecifyShape") or (
            casts and kind == "Elemwise" and type(op.scalar_op).__name__ == "Cast")

    while g.owner is not None and passes(g.owner.op):
        g = g.owner.inputs[0]
    return next((n for n, v in named.items() if v is g), None)

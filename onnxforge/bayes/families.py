"""Observation families: moments (any `xp` backend) and predictive draws (torch, exported to ONNX).

The transform's output `mu` is the family's natural mean parameter: the mean (normal, student-t location, poisson
rate, negative-binomial mean) or the success probability (bernoulli, binomial). Draws are built only from
RandomUniformLike / RandomNormalLike: never ONNX Bernoulli (onnxruntime 1.32 returns 1 with probability 1-p), so a
bernoulli draw is `uniform < p`; student-t uses Bailey's polar formula; counts use the inverse CDF over a support
[0, K) and, where max_count would truncate (mean + 6 sd beyond it), a rounded normal (behind an If: a batch
without such a mean draws no normals). K is sized at run time
from the batch's largest mean (at most max_count) so that the mass above K is < COUNT_TAIL = 2^-25 (poisson: checked
with scipy; negative binomial: a Chernoff bound): below the resolution of the float32 uniform that picks the count
(its largest value is 1 - 2^-24), so no uniform reaches a cell above K and cutting them changes no draw (up to the
cdf's own float32 rounding). 1-row queries with small means compute a few cells, not max_count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TINY = 1e-30  # keeps log(mu) finite at mu = 0 in float32


@dataclass(frozen=True)
class Family:
    name: str
    params: tuple[str, ...]  # parameters besides mu, e.g. ("sigma",)
    discrete: bool
    mean: Callable  # (xp, mu, p) -> E[y | theta]
    variance: Callable  # (xp, mu, p) -> Var[y | theta]
    pymc: str  # the PyMC distribution, for documentation and error messages
    variance_uses_mu: bool = True  # False: Var[y | theta] depends on the noise parameters only
    classes: bool = False  # mu carries a class axis before the samples: (rows, K, samples); outputs per class


def _t_var(xp, mu, p):
    nu, sigma = p["nu"] + 0 * mu, p["sigma"]  # + 0 * mu: a tensor even when nu is a number (nu=4 in the model)
    return xp.where(nu > 2, sigma * sigma * nu / xp.maximum(nu - 2, 1e-12), math.inf) + 0 * mu


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("normal", ("sigma",), False, lambda xp, mu, p: mu, lambda xp, mu, p: p["sigma"] ** 2 + 0 * mu,
           "pm.Normal(mu, sigma)", variance_uses_mu=False),
    Family("student-t", ("nu", "sigma"), False, lambda xp, mu, p: xp.where(p["nu"] + 0 * mu > 1, mu, math.nan),
           _t_var, "pm.StudentT(nu, mu, sigma)", variance_uses_mu=False),
    Family("bernoulli", (), True, lambda xp, mu, p: mu, lambda xp, mu, p: mu * (1 - mu), "pm.Bernoulli(p=mu)"),
    Family("binomial", ("n",), True, lambda xp, mu, p: p["n"] * mu, lambda xp, mu, p: p["n"] * mu * (1 - mu),
           "pm.Binomial(n, p=mu)"),
    Family("poisson", (), True, lambda xp, mu, p: mu, lambda xp, mu, p: mu, "pm.Poisson(mu)"),
    Family("negative-binomial", ("alpha",), True, lambda xp, mu, p: mu, lambda xp, mu, p: mu + mu * mu / p["alpha"],
           "pm.NegativeBinomial(mu, alpha)"),
    # mu: the mean; alpha: the shape (rate alpha / mu)
    Family("gamma", ("alpha",), False, lambda xp, mu, p: mu, lambda xp, mu, p: mu * mu / p["alpha"],
           "pm.Gamma(alpha, beta=alpha / mu)"),
    # mu, sigma: the location and scale of log y
    Family("lognormal", ("sigma",), False, lambda xp, mu, p: xp.exp(mu + 0.5 * p["sigma"] ** 2),
           lambda xp, mu, p: xp.expm1(p["sigma"] ** 2) * xp.exp(2 * mu + p["sigma"] ** 2),
           "pm.LogNormal(mu, sigma)"),
    # mu: the count component's mean; psi: the probability of the count component (PyMC's psi), zeros otherwise
    Family("zero-inflated-poisson", ("psi",), True, lambda xp, mu, p: p["psi"] * mu,
           lambda xp, mu, p: p["psi"] * mu * (1 + (1 - p["psi"]) * mu), "pm.ZeroInflatedPoisson(psi, mu)"),
    Family("zero-inflated-negative-binomial", ("psi", "alpha"), True, lambda xp, mu, p: p["psi"] * mu,
           lambda xp, mu, p: p["psi"] * (mu + mu * mu / p["alpha"]) + p["psi"] * (1 - p["psi"]) * mu * mu,
           "pm.ZeroInflatedNegativeBinomial(psi, mu, alpha)"),
    # mu: the class probabilities (rows, K, samples); mean/std/quantiles per class of the indicator y == k,
    # draws are class indices (pm.Categorical; pm.OrderedLogistic / OrderedProbit are categoricals too)
    Family("categorical", (), True, lambda xp, mu, p: mu, lambda xp, mu, p: mu * (1 - mu), "pm.Categorical(p)",
           classes=True),
    # mu: the mean in (0, 1); kappa: the concentration alpha + beta (PyMC's nu)
    Family("beta", ("kappa",), False, lambda xp, mu, p: mu, lambda xp, mu, p: mu * (1 - mu) / (p["kappa"] + 1),
           "pm.Beta(mu=mu, nu=kappa)"),
)}

# parameter name → default posterior variable name
DEFAULT_PARAMS = {"sigma": "sigma", "nu": "nu", "alpha": "alpha", "n": None, "kappa": None, "psi": "psi"}
ZERO_INFLATED = {"zero-inflated-poisson": "poisson", "zero-inflated-negative-binomial": "negative-binomial"}
COUNT_TAIL = 2.0**-25  # the run-time count support leaves at most this mass above it (see the module doc)
SQRT_HALF = math.sqrt(0.5)
GAMMA_TRIES = 6  # Marsaglia-Tsang proposals per draw: all rejected with probability < 0.05**6 ≈ 2e-8


# a family parameter fed straight from an input: (values that are fine, what they must be); PyMC refuses the rest,
# and the artifact would return numbers for them (a negative binomial n: a negative mean, draws of max_count + 1)
PARAM_DOMAINS = {
    "n": (lambda v: (v >= 0) & (v == np.floor(v)), "whole numbers >= 0 (binomial trials)"),
    "sigma": (lambda v: v > 0, "positive (a scale)"),
    "nu": (lambda v: v > 0, "positive (degrees of freedom)"),
    "alpha": (lambda v: v > 0, "positive (a shape or dispersion)"),
    "kappa": (lambda v: v > 0, "positive (a concentration)"),
    "psi": (lambda v: (v >= 0) & (v <= 1), "in [0, 1] (a probability)"),
}


def check_param_inputs(feeds: dict, bayes: dict, offset: int = 0) -> None:
    """Refuse rows whose input feeds a family parameter outside its domain (`bayes`: the artifact's
    onnxforge.bayes metadata); binomial trials above max_count have no row in the draws' log-factorial table."""
    from onnxforge.artifact import META_FIX
    from onnxforge.errors import UserError

    top, pairs = bayes.get("max_count"), bayes.get("param_inputs") or {}
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()) or not (
            top is None or (isinstance(top, int) and not isinstance(top, bool))):
        raise UserError(f"metadata onnxforge.bayes: param_inputs/max_count are not an input map and a count — "
                        f"{META_FIX}")
    for param, name in pairs.items():
        if name not in feeds or param not in PARAM_DOMAINS or np.asarray(feeds[name]).dtype.kind not in "iuf":
            continue
        v = np.asarray(feeds[name], np.float64).reshape(-1)
        ok, what = PARAM_DOMAINS[param]
        bad = ~ok(v)
        fix = "fix those rows"
        if param == "n" and top is not None:
            bad |= v > top
            what = f"whole numbers from 0 to {top} (binomial trials; the draws' table ends at source.max_count)"
            fix += ", or convert again with a larger source.max_count" if (v > top).any() else ""
        if bad.any():
            rows = (np.flatnonzero(bad) + offset)[:3].tolist()
            got = [float(x) for x in v[bad][:3]]
            raise UserError(f"input '{name}' feeds the family's {param}, which must be {what}; got "
                            f"{', '.join(f'{x:g}' for x in got)} at row(s) {rows} — {fix}")


def check_model_inputs(feeds: dict, model, model_name: str) -> None:
    """check_param_inputs for a model that may be a PyMC artifact (its onnxforge.bayes metadata says)."""
    from onnxforge.artifact import meta_json

    bayes = meta_json(model, "bayes", dict, {}, where=model_name)
    if bayes:
        check_param_inputs(feeds, bayes)


def log_factorials(k_max: int) -> np.ndarray:
    """log k! for k = 0..k_max, in float64."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, k_max + 1, dtype=np.float64)))])


def negbin_log_rising(alpha: np.ndarray, support: int) -> np.ndarray:
    """log Γ(k+α)/Γ(α) = Σ_{j<k} log(α+j) for k in [0, support): shape (*alpha.shape, support)."""
    a = np.asarray(alpha, dtype=np.float64)[..., None]
    terms = np.log(a + np.arange(support - 1, dtype=np.float64))
    return np.concatenate([np.zeros(a.shape), np.cumsum(terms, axis=-1)], axis=-1)


# ----------------------------------------------------------------------------- torch draws


def draw(family: str, mu, p: dict, tables: dict):
    """Predictive draws (float32, same shape as mu) with observation noise. `p` holds the family parameters
    broadcastable to mu; `tables` holds constants prepared by the module builder (support, log factorials)."""
    import torch

    if family == "normal":
        return mu + p["sigma"] * torch.randn_like(mu)
    if family == "bernoulli":
        return (torch.rand_like(mu) < mu).to(mu.dtype)
    if family == "student-t":
        u = 1.0 - torch.rand_like(mu)  # (0, 1]: keeps u^(-2/nu) finite
        v = torch.rand_like(mu)
        nu = p["nu"]
        t = torch.sqrt(nu * (torch.pow(u, -2.0 / nu) - 1.0)) * torch.cos(2.0 * math.pi * v)
        return mu + p["sigma"] * t
    if family == "categorical":  # inverse CDF over the class axis
        cdf = torch.cumsum(mu, dim=-2)
        u = torch.rand_like(mu[..., 0, :]).unsqueeze(-2)
        k = (cdf <= u).to(mu.dtype).sum(-2)
        return torch.clamp(k, max=float(mu.shape[-2] - 1))  # u above a cdf that rounds below 1: the last class
    if family in ZERO_INFLATED:  # a count draw kept with probability psi, zero otherwise
        count = draw(ZERO_INFLATED[family], mu, p, tables)
        return torch.where(torch.rand_like(mu) < p["psi"], count, 0.0)
    if family == "lognormal":
        return torch.exp(mu + p["sigma"] * torch.randn_like(mu))
    if family == "gamma":
        a = _tensor(p["alpha"])
        return mu / a * standard_gamma(a, mu)
    if family == "beta":  # both gammas in one sampler call: half the nodes of two
        # (a, b) = kappa · (mu, 1 - mu) as one broadcast along a new leading axis: 3 nodes, where stacking the
        # two products takes 6
        sign = torch.tensor([1.0, -1.0]).reshape(2, *[1] * mu.dim())
        g = standard_gamma(p["kappa"] * (mu * sign + (1.0 - sign) / 2))
        return g[0] / g.sum(0)
    k = tables["k"]  # float32 [K]
    if family == "binomial":
        n = p["n"] + 0 * mu
        q = torch.clamp(mu, 1e-7, 1.0 - 2.0**-24)
        nk = n.unsqueeze(-1) - k
        lf = tables["log_factorial"]
        log_c = (lf[n.long()].unsqueeze(-1) - lf[k.long()]
                 - lf[torch.clamp(nk, min=0).long()])
        logpmf = log_c + k * torch.log(q).unsqueeze(-1) + nk * torch.log1p(-q).unsqueeze(-1)
        logpmf = torch.where(nk >= 0, logpmf, torch.full_like(logpmf, -math.inf))
        return _inverse_cdf(logpmf, torch.rand_like(mu))
    m = torch.clamp(mu, min=TINY)
    if family == "negative-binomial":
        a = _tensor(p["alpha"])  # not broadcast to mu: terms of a posterior alpha alone fold into initializers
        need = _nb_need(m, a).max()
        # not mean + 6 sd: a small dispersion's tail is far heavier than a normal's (alpha 0.37, mean 3.5: 2e-4 of
        # the mass sits above 64 counts; alpha 0.5, mean 8: 0.5 %). A batch that max_count would truncate draws
        # all its counts from the gamma-Poisson mixture, so its inverse CDF over max_count cells is not computed
        return torch.cond(need <= float(k.shape[0]), _nb_inverse_cdf, _nb_mixture,
                          (m, a, need, k, tables["log_nb_coef"], tables["log_factorial"]))
    # need and the exactness test grow with the mean: computed once on the batch's largest mean
    top = m.max()
    need = top + 5.75 * torch.sqrt(top) + 4.0  # P(X >= ceil(need)) < 2.4e-8 < COUNT_TAIL for every mean (scipy)
    exact = _poisson_inverse_cdf(m, need, k, tables["log_factorial"])
    # means that max_count would truncate take a rounded normal; an If, so the usual batch (all exact) makes no
    # normals: they cost ~8 ns each in onnxruntime, more than the inverse CDF of a small-mean draw
    cap = float(k.shape[0] - 1)
    return torch.cond(top + 6.0 * torch.sqrt(top) < cap, _first, lambda e, m_: _rounded_normal(e, m_, m_, cap),
                      (exact, m))


def _support(need, k) -> int:
    """The count support sized at run time from the batch (small means compute few cells), capped at max_count:
    a run-time size the exporter emits the Slices with."""
    import torch

    size = torch.clamp(torch.ceil(need), 1.0, float(k.shape[0])).to(torch.int64).item()
    torch._check(size >= 1)
    torch._check(size <= k.shape[0])
    return size


def _poisson_inverse_cdf(m, need, k, log_factorial):
    """Exact Poisson(m) draws over [0, need). The log-pmf is one small GEMM of per-draw terms with rows of
    constants, k log m - m - log k! = [log m, m, 1] @ [k; -1; -log k!]: onnxruntime's broadcasting elementwise ops
    ((rows, S, 1) against (K,)) run several times slower at one row."""
    import torch

    size = _support(need, k)
    w = torch.stack([k, -torch.ones_like(k), -log_factorial])[:, :size]
    m1 = m.unsqueeze(-1)
    logpmf = torch.cat([torch.log(m1), m1, m1 / m1], -1) @ w  # m1 / m1: ones (m >= TINY) in one node
    return _inverse_cdf(logpmf, torch.rand_like(m), k.shape[0])


def _nb_inverse_cdf(m, a, need, k, log_nb_coef, log_factorial):
    """The If's branch for a batch whose negative binomials fit max_count: exact draws by the inverse CDF of
    Γ(k+α)/(k! Γ(α)) (α/(α+μ))^α (μ/(α+μ))^k (the table holds log Γ(k+α)/(k! Γ(α))), one GEMM as the Poisson's."""
    import torch

    size = _support(need, k)
    log_den = torch.log(a + m)
    k1 = torch.stack([k, torch.ones_like(k)])[:, :size]
    logpmf = (torch.stack([torch.log(m) - log_den, a * torch.log(a) - a * log_den + 0 * m], -1) @ k1
              + log_nb_coef[..., :size])
    return _inverse_cdf(logpmf, torch.rand_like(m), k.shape[0])


def _nb_need(m, a):
    """Per draw, a support size K leaving < COUNT_TAIL of the negative binomial's mass above it: Chernoff at
    s = q^-0.8 (q = m/(α+m)) gives P(X >= K) <= 5^α q^(0.8 K)."""
    import torch

    return (a * math.log(5.0) - math.log(COUNT_TAIL)) / (0.8 * torch.log1p(a / m))


def _nb_mixture(m, a, need, k, log_nb_coef, log_factorial):
    """The If's branch for a batch holding a negative binomial that max_count would truncate: every draw from the
    gamma-Poisson mixture (λ = μ/α · Gamma(α), then Poisson(λ)), exact while λ's own Poisson support fits in
    max_count, a rounded normal of Poisson(λ) past it (λ > ~31 at max_count 64, where that normal is close). A
    rounded normal of the negative binomial itself is badly off for small α: at α 0.5, mean 8 its clamp at zero
    lifts the mean by a quarter. All draws, not only those past the support: the gathered few cost the full
    support's inverse CDF for the rest plus a gather and scatter (the zinb fixture: ~1.4x slower at one row,
    A/B). need and log_nb_coef are unused: an If's branches take the same operands."""
    import torch

    lam = torch.clamp(m / a * standard_gamma(a, m), min=TINY)
    top = lam.max()
    root = torch.sqrt(top)
    pois = _poisson_inverse_cdf(lam, top + 5.75 * root + 4.0, k, log_factorial)
    # the rounded normal behind an If, as the Poisson family's (k an operand: its size is symbolic in a branch)
    return torch.cond(top + 6.0 * root < float(k.shape[0] - 1), _first,
                      lambda e, l_, k_: _rounded_normal(e, l_, l_, float(k_.shape[0] - 1)), (pois, lam, k))


def _first(x, *_):
    """An If's branch that keeps its first operand (a copy: a branch may not return its input itself)."""
    return x.clone()


def _rounded_normal(exact, m, var, cap: float):
    """The exact draw where the mean + 6 sd stays inside the support, a rounded normal elsewhere."""
    import torch

    sd = torch.sqrt(var)
    approx = torch.round(torch.clamp(m + sd * torch.randn_like(m), min=0.0))
    return torch.where(m + 6.0 * sd < cap, exact, approx)


def _tensor(x):
    """A family parameter (a number, or a tensor broadcastable to mu) as a tensor, left unbroadcast: an `x + 0 * mu`
    would cost two nodes per use and keep onnxruntime from folding what depends on a posterior parameter alone."""
    import torch

    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x))


def _inverse_cdf(logpmf, u, top: int | None = None):
    """The count k with cdf(k-1) <= u < cdf(k), i.e. the number of cdf values <= u. The cdf is a MatMul with an
    upper-triangular ones matrix: onnxruntime runs that ~2x faster than CumSum on a few hundred rows x tens of
    counts (a blocked two-MatMul cdf measured slower at these sizes: more nodes and a last-axis Gather)."""
    import torch

    pmf = torch.exp(logpmf)
    n = pmf.shape[-1]
    # a run-time n: the corner of a constant max_count square (one Slice; built at run time it is Concat, Expand
    # and Trilu)
    cdf = pmf @ torch.triu(torch.ones(top or n, top or n, dtype=pmf.dtype))[:n, :n]
    return (cdf <= u.unsqueeze(-1)).to(u.dtype).sum(-1)


def standard_gamma(a, like=None):
    """Gamma(a, 1) draws of `like`'s shape (default a's; a broadcasts to it) from normals and uniforms only (ONNX
    has no gamma sampler): Marsaglia & Tsang (2000); a batch with a shape below 1 takes the boost Gamma(a+1) ·
    U^(1/a) for all its draws. Every draw gets one
    proposal; the few rejected (< 5 %) get GAMMA_TRIES - 1 more at once along a new leading axis, the first
    accepted one kept. So the random numbers made are about one normal and one uniform per draw, not GAMMA_TRIES,
    and the node count does not grow with GAMMA_TRIES. (Two proposals per draw up front, with the retries behind an
    If, measured no faster at one row: the doubled generators and logs cost what the skipped retries save.) d and
    s = sqrt(4.5 d) are computed on a before broadcasting: a posterior shape folds into initializers (and its boost
    If into one branch). Exact up to the chance that every proposal is rejected (each is accepted with probability
    > 0.95 since the shape sampled is >= 1, so < 0.05**6 < 2e-8);
    such a draw is the first retry, or the mode d where that proposal is invalid (v <= 0)."""
    import torch

    like = a if like is None else like
    # the boost runs only when some shape is below 1, the whole sampler in each branch of an If: the usual batch
    # then computes no a + 1 and U^(1/a) (nor the test for each draw); the test as min(a) < 1 is two nodes
    return torch.cond(a.min() < 1, _boosted, _marsaglia_tsang, (a, like))


def _boosted(a, like):
    """Gamma(a) = Gamma(a + 1) · U^(1/a) for every a > 0; U^(1/a) as exp(log(U)/a): onnxruntime's Pow is ~5x
    slower than Log + Div + Exp."""
    import torch

    out = _marsaglia_tsang(a + 1.0, like)
    return out * torch.exp(torch.log(1.0 - torch.rand_like(out)) / a)  # 1 - U in (0, 1]


def _marsaglia_tsang(a, like):
    import torch

    d = a - 1.0 / 3.0
    s = torch.sqrt(4.5 * d)  # Marsaglia-Tsang's c = 1 / sqrt(9 d) over the sqrt(2) of z ~ N(0, 1/2)
    ok, x = _mt_proposals(d, s, like)
    return _mt_retries(x, ~ok, d, s)


def _mt_retries(first, miss, d, s):
    """The draws whose proposal was rejected (flat indices, a run-time count): GAMMA_TRIES - 1 more proposals
    each, gathered (Gather, not GatherND), the first accepted kept (ArgMax returns the first maximum)."""
    import torch

    rej = torch.nonzero(miss.reshape(-1)).reshape(-1)
    d2, s2 = (_take(v, first, rej) for v in (d, s))
    # the retries' shape by a broadcasting Mul: one node, where expand() is Shape, Gather, Concat and Expand
    ok2, x2 = _mt_proposals(d2, s2, d2 * torch.ones(GAMMA_TRIES - 1, 1))
    pick = torch.argmax(ok2.to(torch.int32), dim=0, keepdim=True)
    x2 = torch.gather(x2, 0, pick).squeeze(0)
    x2 = torch.where(x2 > 0, x2, d2)  # all rejected and the first retry invalid (NaN or <= 0): the mode
    return first.reshape(-1).scatter(0, rej, x2).reshape(first.shape)


def _take(v, like, flat):
    """v (broadcastable to like) at like's flat indices. A v with at most one axis, the last (a posterior shape:
    one per sample), is read at index mod its length: expanding it to like first costs four nodes more. (Only
    then: a size computed from a symbolic batch dimension inside a torch.cond branch is traced wrong.)"""
    n = like.shape[-1] if like.dim() else 1
    if v.dim() <= 1 and isinstance(n, int) and v.numel() in (1, n):
        return v.reshape(-1).index_select(0, flat % v.numel())
    return v.expand_as(like).reshape(-1).index_select(0, flat)


def _mt_proposals(d, s, like):
    """Marsaglia-Tsang proposals of like's shape: (accepted, d·v). A proposal with v <= 0 is rejected by the
    comparison itself (log v is NaN or -inf there, and no comparison with NaN holds), so it needs no mask; its d·v
    is never kept. u is in [0, 1): at u = 0, log u = -inf accepts, as the test u < exp(...) does."""
    import torch

    z = torch.randn_like(like) * SQRT_HALF  # N(0, 1/2): 0.5 z² is z·z (the export folds the Mul into the generator)
    t = 1.0 + z / s
    v = t * t * t  # not ** 3: Pow runs several times slower than Mul in onnxruntime
    ok = torch.log(torch.rand_like(like)) < z * z + d * (1.0 - v + torch.log(v))
    return ok, d * v

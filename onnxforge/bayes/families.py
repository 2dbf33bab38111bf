"""Observation families: moments (any `xp` backend) and predictive draws (torch, exported to ONNX).

The transform's output `mu` is the family's natural mean parameter: the mean (normal, student-t location, poisson
rate, negative-binomial mean) or the success probability (bernoulli, binomial). Draws are built only from
RandomUniformLike / RandomNormalLike: never ONNX Bernoulli (onnxruntime 1.32 returns 1 with probability 1-p), so a
bernoulli draw is `uniform < p`; student-t uses Bailey's polar formula; counts use the inverse CDF over a fixed
support [0, max_count) and, where that support would truncate (mean + 6 sd beyond it), a rounded normal.
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
    nu, sigma = p["nu"], p["sigma"]
    return xp.where(nu > 2, sigma * sigma * nu / xp.maximum(nu - 2, 1e-12), math.inf) + 0 * mu


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("normal", ("sigma",), False, lambda xp, mu, p: mu, lambda xp, mu, p: p["sigma"] ** 2 + 0 * mu,
           "pm.Normal(mu, sigma)", variance_uses_mu=False),
    Family("student-t", ("nu", "sigma"), False, lambda xp, mu, p: xp.where(p["nu"] > 1, mu, math.nan), _t_var,
           "pm.StudentT(nu, mu, sigma)", variance_uses_mu=False),
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
GAMMA_TRIES = 6  # Marsaglia-Tsang proposals per draw: all rejected with probability < 0.05**6 ≈ 2e-8


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
        return torch.where(torch.rand_like(mu) < p["psi"] + 0 * mu, count, torch.zeros_like(count))
    if family == "lognormal":
        return torch.exp(mu + p["sigma"] * torch.randn_like(mu))
    if family == "gamma":
        a = p["alpha"] + 0 * mu
        return mu / a * standard_gamma(a)
    if family == "beta":
        kappa = p["kappa"] + 0 * mu
        ga, gb = standard_gamma(mu * kappa), standard_gamma((1 - mu) * kappa)
        return ga / (ga + gb)
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
    if family == "poisson":
        logpmf = k * torch.log(m).unsqueeze(-1) - m.unsqueeze(-1) - tables["log_factorial"]
        sd = torch.sqrt(m)
    else:  # negative-binomial: Γ(k+α)/(k! Γ(α)) (α/(α+μ))^α (μ/(α+μ))^k
        a = p["alpha"] + 0 * m
        log_den = torch.log(a + m)
        logpmf = (tables["log_rising"] - tables["log_factorial"]
                  + (a * (torch.log(a) - log_den)).unsqueeze(-1)
                  + k * (torch.log(m) - log_den).unsqueeze(-1))
        sd = torch.sqrt(m + m * m / a)
    exact = _inverse_cdf(logpmf, torch.rand_like(mu))
    approx = torch.round(torch.clamp(m + sd * torch.randn_like(mu), min=0.0))
    return torch.where(m + 6.0 * sd < float(k.shape[0] - 1), exact, approx)


def _inverse_cdf(logpmf, u):
    import torch

    cdf = torch.cumsum(torch.exp(logpmf), dim=-1)
    return (cdf <= u.unsqueeze(-1)).to(u.dtype).sum(-1)


def standard_gamma(a):
    """Gamma(a, 1) draws from normals and uniforms only (ONNX has no gamma sampler): Marsaglia & Tsang (2000) with
    GAMMA_TRIES proposals unrolled, the first accepted one kept; a < 1 by the boost Gamma(a+1) · U^(1/a). Exact up
    to the chance that every proposal is rejected (< 2e-8; such a draw is the mode d)."""
    import torch

    boost = a < 1
    a1 = torch.where(boost, a + 1.0, a)
    d = a1 - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out, done = d, torch.zeros_like(a, dtype=torch.bool)
    for _ in range(GAMMA_TRIES):
        z = torch.randn_like(a)
        v = (1.0 + c * z) ** 3
        u = 1.0 - torch.rand_like(a)  # (0, 1]: log u finite
        vs = torch.where(v > 0, v, torch.ones_like(v))
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * vs + d * torch.log(vs))
        out = torch.where(ok & ~done, d * vs, out)
        done = done | ok
    u = 1.0 - torch.rand_like(a)
    return torch.where(boost, out * torch.pow(u, 1.0 / a), out)

"""The numba engine's row kernels (onnxforge.bayes.numba_engine): per-row predictive moments, the exact quantiles'
interpolation and predictive draws,
`@njit` over rows, each in a serial and a `parallel=True` (prange) build. Compiled on first use, in memory only
(cache=False: nothing is written to disk). Imported only by the numba engine.

Exact quantiles are not here: numpy's own sort (x86-simd-sort on AVX2 / AVX-512 CPUs) sorts a 1000 × 500 float32
matrix ~15× faster than any per-row selection or sort compiled with numba (measured: numba's quickselect, its
np.sort and its np.partition), so the engine sorts in place with numpy and the summary kernel reads the order
statistics from the sorted rows.
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
from numba import prange

# draw kernels: one code per family (categorical has its own kernel: a class axis)
FAMILY_CODES = {"normal": 0, "student-t": 1, "bernoulli": 2, "binomial": 3, "poisson": 4, "negative-binomial": 5,
                "gamma": 6, "lognormal": 7, "beta": 8, "zero-inflated-poisson": 9,
                "zero-inflated-negative-binomial": 10}
# the family parameters a draw kernel reads, in order (p1, p2)
DRAW_PARAMS = {"normal": ("sigma",), "student-t": ("nu", "sigma"), "bernoulli": (), "binomial": ("n",),
               "poisson": (), "negative-binomial": ("alpha",), "gamma": ("alpha",), "lognormal": ("sigma",),
               "beta": ("kappa",), "zero-inflated-poisson": ("psi",),
               "zero-inflated-negative-binomial": ("psi", "alpha")}


def _summary(m, within, within_c, lo, hi, w, mean, std, q):
    """Per row r of m (N, S) float32, sorted along S when quantiles are wanted: mean[r] (when mean has N entries),
    std[r] = sqrt(within[r] (or within_c when within is empty) + the variance over S) (when std has N entries),
    both accumulated in float64, and q[r, t] = m[r, lo[t]] + (m[r, hi[t]] - m[r, lo[t]]) * w[t] (numpy's 'linear'
    rule on the order statistics, float32 as the artifact computes it)."""
    n, s = m.shape
    want_mean, want_std, nq = mean.shape[0] == n, std.shape[0] == n, lo.shape[0]
    per_row = within.shape[0] == n
    for r in prange(n):
        if want_mean:
            acc = 0.0
            for j in range(s):
                acc += m[r, j]
            mu = acc / s
            mean[r] = mu
            if want_std:
                ss = 0.0
                for j in range(s):
                    d = m[r, j] - mu
                    ss += d * d
                std[r] = np.sqrt((within[r] if per_row else within_c) + ss / s)
        for t in range(nq):
            a = m[r, lo[t]]
            q[r, t] = a + (m[r, hi[t]] - a) * w[t]


@numba.njit(cache=False, nogil=True)
def _nb(g, mu, alpha):
    """NegativeBinomial(mu, alpha) as PyMC parameterizes it: a Poisson with a Gamma(alpha, mu / alpha) rate."""
    if mu <= 0.0:
        return 0.0
    return float(g.poisson(g.gamma(alpha, mu / alpha)))


@numba.njit(cache=False, nogil=True)
def _draw_one(g, code, mu, p1, p2):
    if code == 0:
        return mu + p1 * g.standard_normal()
    if code == 1:
        return mu + p2 * g.standard_t(p1)
    if code == 2:
        return 1.0 if g.random() < mu else 0.0
    if code == 3:
        return float(g.binomial(int(p1), min(max(mu, 0.0), 1.0)))
    if code == 4:
        return float(g.poisson(max(mu, 0.0)))
    if code == 5:
        return _nb(g, mu, p1)
    if code == 6:
        return g.gamma(p1, mu / p1)
    if code == 7:
        return np.exp(mu + p1 * g.standard_normal())
    if code == 8:
        return g.beta(mu * p1, (1.0 - mu) * p1)
    if code == 9:
        return float(g.poisson(max(mu, 0.0))) if g.random() < p1 else 0.0
    return _nb(g, mu, p2) if g.random() < p1 else 0.0


def _draws(gens, code, mu, p1, p2, idx, out):
    """out[r, d] ~ family(mu[r, idx[d]], p1[r, idx[d]], p2[r, idx[d]]): one draw per (row, posterior sample).
    Rows are cut into len(gens) fixed chunks, chunk c drawn from gens[c]: the serial and parallel builds (and any
    thread count) give the same draws."""
    n, d = out.shape
    nc = len(gens)
    for c in prange(nc):
        g = gens[c]
        for r in range(c * n // nc, (c + 1) * n // nc):
            for k in range(d):
                j = idx[k]
                out[r, k] = _draw_one(g, code, mu[r, j], p1[r, j], p2[r, j])


def _class_draws(gens, p, idx, out):
    """Class indices by the inverse CDF over the class axis of p (N, K, S), chunked as _draws; a u above a CDF that
    rounds below 1 takes the last class (as the artifact does)."""
    n, kk, _ = p.shape
    d = out.shape[1]
    nc = len(gens)
    for c in prange(nc):
        g = gens[c]
        for r in range(c * n // nc, (c + 1) * n // nc):
            for k in range(d):
                j = idx[k]
                u = g.random()
                acc = 0.0
                cls = kk - 1
                for i in range(kk):
                    acc += p[r, i, j]
                    if acc > u:
                        cls = i
                        break
                out[r, k] = cls


@functools.cache
def kernels() -> dict[str, Any]:
    """{name: (serial, parallel)} njit builds of the row kernels; each compiles on its first call for the argument
    types it gets, in memory only (cache=False)."""
    out: dict[str, Any] = {}
    for name, fn in (("summary", _summary), ("draws", _draws), ("class_draws", _class_draws)):
        out[name] = (numba.njit(cache=False, nogil=True)(fn), numba.njit(parallel=True, cache=False, nogil=True)(fn))
    return out

"""Numerical comparison of one output against its reference, Polygraphy-style: pass iff
|got - ref| <= atol + rtol * |ref| everywhere, with error statistics and the smallest tolerance that passes."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np


def _is_label(a: np.ndarray) -> bool:
    return a.dtype.kind in "iubUSO"


def fmt_shape(shape) -> str:
    """An array's shape as numpy writes it: (64, 3), (64,), ()."""
    return str(tuple(int(d) for d in shape))


def fmt_dims(dims) -> str:
    """A declared ONNX shape: [batch, 1], with ? for a dim that has neither a value nor a name."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _family(a: np.ndarray) -> str:
    """text, integer (bool included) or float: outputs of different families differ in type, not in tolerance."""
    k = a.dtype.kind
    if k in "US" or (k == "O" and a.size > 0 and isinstance(a.flat[0], str | bytes)):
        return "text"
    return "integer" if k in "biu" else "float" if k in "fc" else k


def compare(name: str, ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    ref, got = np.asarray(ref), np.asarray(got)
    out: dict[str, Any] = {"output": name, "shape": list(got.shape), "rtol": rtol, "atol": atol}
    if ref.shape != got.shape:
        # (N,) vs (N, 1) is the same prediction; nothing else is reshaped or broadcast: (N, 3) vs (N,) is a
        # different output, not a tolerance problem
        if ref.size == got.size and ref.squeeze().shape == got.squeeze().shape:
            ref = ref.reshape(got.shape)
        else:
            return out | {"kind": "shape", "pass": False, "ref_shape": list(ref.shape),
                          "reason": f"shape mismatch: onnx {fmt_shape(got.shape)} vs reference {fmt_shape(ref.shape)}"}
    if _is_label(ref) or _is_label(got):
        r = ref.astype(str) if ref.dtype.kind in "USO" or got.dtype.kind in "USO" else ref
        g = got.astype(str) if r.dtype.kind == "U" else got
        bad = np.asarray(r != g)
        n_bad = int(bad.sum())
        res = out | {"kind": "label", "pass": n_bad == 0, "flips": n_bad, "total": int(bad.size),
                     "flip_rate": n_bad / max(bad.size, 1)}
        if n_bad and _family(ref) != _family(got):  # e.g. text vs numbers that differ: a type, not flips
            res |= {"kind": "dtype", "ref_dtype": str(ref.dtype), "dtype": str(got.dtype),
                    "reason": f"dtype mismatch: onnx {got.dtype} vs reference {ref.dtype}"}
        if n_bad:
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            res["worst"] = {"index": [int(i) for i in idx], "ref": _py(r[idx]), "got": _py(g[idx])}
        return res
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    rn, gn = np.isnan(r), np.isnan(g)
    ri, gi = np.isinf(r), np.isinf(g)
    nan_mismatch = int((rn != gn).sum())
    inf_mismatch = int(((ri | gi) & ~((ri & gi) & (np.sign(r) == np.sign(g)))).sum())
    finite = np.isfinite(r) & np.isfinite(g)
    # non-finite elements are counted above and masked out here: subtract only the finite values (inf - inf
    # would warn), and keep numpy quiet where finite differences overflow float64 (an inf difference: a mismatch)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        d = np.abs(np.where(finite, g, 0.0) - np.where(finite, r, 0.0))
        ar = np.abs(np.where(finite, r, 0.0))
        tol = atol + rtol * ar
        excess = d - tol
        n_bad = int((excess > 0).sum()) + nan_mismatch + inf_mismatch
        rel = np.where(ar > 0, d / ar, np.where(d > 0, np.inf, 0.0))
        need_rtol = np.where(d > atol, np.where(ar > 0, (d - atol) / ar, np.inf), 0.0)
        fd = d[finite] if finite.any() else np.zeros(1)
        nonfinite = nan_mismatch + inf_mismatch
        res = out | {
            "kind": "float",
            "pass": n_bad == 0,
            "mismatches": n_bad,
            "total": int(d.size),
            "nan_mismatch": nan_mismatch,
            "inf_mismatch": inf_mismatch,
            "max_abs": float(fd.max()),
            "max_rel": float(rel[finite].max()) if finite.any() else 0.0,
            "mean_abs": float(fd.mean()),
            "p99_abs": float(np.percentile(fd, 99)),
            # smallest atol that passes at this rtol, and smallest rtol that passes at this atol; a NaN/inf
            # mismatch passes at no tolerance (inf, written null in JSON), never the finite elements' figure
            "min_atol": float(max((d - rtol * ar).max(initial=0.0), 0.0)) if not nonfinite else float("inf"),
            "min_rtol": float(need_rtol.max(initial=0.0)) if not nonfinite else float("inf"),
        }
    if d.size:
        idx = np.unravel_index(int(np.argmax(np.where(finite, excess, np.inf))), d.shape)
        res["worst"] = {"index": [int(i) for i in idx], "ref": float(r[idx]), "got": float(g[idx]),
                        "abs": float(d[idx])}
    return res


def declared_outputs(model) -> dict[str, tuple[int, list | None]]:
    """Each tensor output's declared element type and dims (None where the graph declares no shape). A dim is its
    value, its name, or None; -1 and 0 count as symbolic, as onnxruntime reads them."""
    out = {}
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            continue  # sequences and maps (ZipMap) carry no tensor shape to check
        tt = o.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                    for d in tt.shape.dim]
        out[o.name] = (tt.elem_type, dims)
    return out


def conforms(name: str, declared: tuple[int, list | None], got: np.ndarray) -> dict[str, Any]:
    """What onnxruntime returned for an output against what the graph declares for it: the rank and every fixed dim
    must match (a symbolic dim matches any size), and the element type. onnxruntime itself only warns."""
    import onnx

    elem, dims = declared
    got = np.asarray(got)
    res: dict[str, Any] = {"output": name, "kind": "declared", "pass": True, "shape": list(got.shape),
                           "dtype": str(got.dtype), "declared": None if dims is None else fmt_dims(dims),
                           "declared_dims": dims}
    if dims is not None and (len(dims) != got.ndim or any(isinstance(d, int) and d != n
                                                          for d, n in zip(dims, got.shape, strict=False))):
        return res | {"kind": "shape", "pass": False,
                      "reason": f"shape mismatch: declared {fmt_dims(dims)} vs onnxruntime {fmt_shape(got.shape)}"}
    if elem == onnx.TensorProto.STRING:
        ok = got.dtype.kind in "OUS"
        want = "string"
    else:
        try:
            want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, TypeError, ValueError):
            return res  # an element type numpy has no name for (float8, ...): nothing to compare
        ok = got.dtype == want
    if not ok:
        res = res | {"kind": "dtype", "pass": False, "declared_dtype": str(want),
                     "reason": f"dtype mismatch: declared {want} vs onnxruntime {got.dtype}"}
    return res


def _py(v):
    return v.item() if hasattr(v, "item") else v


MIN_DRAWS = 20  # fewer draws per row on a side: no distribution check (it would pass anything, or fail by chance)


def _betabinom_bounds(n: int, a: float, b: float, alpha: float) -> tuple[int, int]:
    """(L, U): the alpha-lower and alpha-upper quantiles of BetaBinomial(n, a, b) — the law of how many of n
    candidate draws fall below the reference's k-th smallest of nr draws (a = k, b = nr + 1 - k) when both come
    from one continuous distribution. Exact for any nr, unlike a normal band (a tail quantile's law is skewed)."""
    from math import lgamma

    x = np.arange(n + 1)
    lg = np.frompyfunc(lgamma, 1, 1)
    logp = (lgamma(n + 1) - lg(x + 1).astype(float) - lg(n - x + 1).astype(float)
            + lg(x + a).astype(float) + lg(n - x + b).astype(float) - lgamma(n + a + b)
            - (lgamma(a) + lgamma(b) - lgamma(a + b)))
    cdf = np.cumsum(np.exp(logp - logp.max()))
    cdf /= cdf[-1]
    lower = int(np.searchsorted(cdf, alpha))  # P(X < L) <= alpha
    upper = int(np.searchsorted(cdf, 1 - alpha))  # P(X > U) <= alpha
    return lower, upper


def _t_critical(nu: int, alpha: float) -> float:
    """t with P(T_nu > t) = alpha: the mean check's critical value. Welch's t has at least min(nr, ng) - 1 degrees
    of freedom; a normal critical value there fails correct artifacts at 20-50 reference draws (heavier tails).
    P(T > t) = ∫ cos^(nu-1) θ dθ over [atan(t/√nu), π/2], normalized over [-π/2, π/2] (u = √nu tan θ)."""
    z = NormalDist().inv_cdf(1 - alpha)
    if nu >= 20000:  # t and normal differ by < 1e-3 there (and the grid below would be too coarse)
        return z
    theta = np.linspace(-np.pi / 2, np.pi / 2, 40001)
    total = np.trapezoid(np.cos(theta) ** (nu - 1), theta)

    def tail(t: float) -> float:
        th = np.linspace(np.arctan(t / np.sqrt(nu)), np.pi / 2, 4001)
        return float(np.trapezoid(np.cos(th) ** (nu - 1), th) / total)

    lo, hi = z, z * 4 + 10
    for _ in range(60):  # bisection: tail() falls as t grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > alpha else (lo, mid)
    return hi


def distribution(name: str, ref_draws: np.ndarray, got_draws: np.ndarray, axis: int = -1, sigmas: float = 4.0,
                 quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)) -> dict[str, Any]:
    """Stochastic outputs, row by row: means agree within `sigmas` Monte-Carlo standard errors, and each reference
    quantile sits where the candidate's empirical CDF says it should: the count of candidate draws below it (and
    at or below it, so 0/1 and other discrete draws are judged fairly) inside the exact beta-binomial band of a
    reference order statistic. Non-finite draws, or fewer than MIN_DRAWS per row on a side, fail with a reason."""
    r = np.moveaxis(np.asarray(ref_draws, dtype=np.float64), axis, -1)
    g = np.moveaxis(np.asarray(got_draws, dtype=np.float64), axis, -1)
    base = {"output": name, "kind": "distribution", "pass": False}
    if r.shape[:-1] != g.shape[:-1]:
        return {**base, "reason": f"row shape {list(g.shape[:-1])} differs from reference {list(r.shape[:-1])}"}
    nr, ng = r.shape[-1], g.shape[-1]
    if min(nr, ng) < MIN_DRAWS:
        return {**base, "draws_ref": nr, "draws_got": ng,
                "reason": f"{min(nr, ng)} draws per row on the {'reference' if nr < ng else 'candidate'} side: a "
                          f"distribution check needs at least {MIN_DRAWS} (more posterior samples, or more draws)"}
    for side, a in (("candidate", g), ("reference", r)):
        if not np.isfinite(a).all():
            return {**base, "draws_ref": nr, "draws_got": ng,
                    "reason": f"the {side}'s draws hold {int((~np.isfinite(a)).sum())} NaN/inf value(s)"}
    # Many rows × several checks: widen the band (Bonferroni) so a correct artifact fails < 1 in 10,000 runs.
    checks = max(1, int(np.prod(r.shape[:-1]))) * (1 + len(quantiles))
    alpha = 1e-4 / (2 * checks)
    sigmas = max(sigmas, _t_critical(min(nr, ng) - 1, alpha))
    mr, mg = r.mean(-1), g.mean(-1)
    se = np.sqrt(r.var(-1, ddof=1) / nr + g.var(-1, ddof=1) / ng)
    z = np.abs(mg - mr) / np.maximum(se, 1e-9 + 1e-6 * np.abs(mr))
    mean_bad = ~(z <= sigmas)  # a NaN statistic fails
    q_bad = np.zeros(r.shape[:-1], dtype=bool)
    q_err = {}
    for q in quantiles:
        qr = np.quantile(r, q, axis=-1)[..., None]  # between the reference's (lo+1)-th and (lo+2)-th smallest
        below, at_or_below = (g < qr).sum(-1), (g <= qr).sum(-1)
        lo = min(int(np.floor(q * (nr - 1))), nr - 1)
        low, _ = _betabinom_bounds(ng, lo + 1, nr - lo, alpha)
        k = min(lo + 2, nr)
        _, high = _betabinom_bounds(ng, k, nr + 1 - k, alpha)
        q_bad |= (at_or_below < low) | (below > high)
        # the figure shown: how far the candidate's CDF at the reference quantile is from q (0 inside [F(q-), F(q)])
        q_err[str(q)] = float(np.maximum(q - at_or_below / ng, below / ng - q).max(initial=0.0))
    rows = mean_bad.size
    res = {**base, "draws_ref": nr, "draws_got": ng, "sigmas": sigmas,
           "max_z": float(z.max(initial=0.0)), "mean_fail_rows": int(mean_bad.sum()),
           "quantile_fail_rows": int(q_bad.sum()), "rows": int(rows), "quantile_cdf_error": q_err}
    # With many rows a few sigma-level excursions happen by chance; allow 1 % of rows.
    allowed = int(0.01 * rows)
    res["pass"] = bool(mean_bad.sum() <= allowed and q_bad.sum() <= allowed)
    if not res["pass"]:
        i = np.unravel_index(int(np.argmax(np.nan_to_num(z, nan=np.inf))), z.shape)
        res["worst"] = {"index": [int(k) for k in i], "ref_mean": float(mr[i]), "got_mean": float(mg[i]),
                        "z": float(z[i])}
    return res

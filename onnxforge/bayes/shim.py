"""`xp`: the small array namespace a predictive transform is written against, for numpy, torch and PyTensor.

One transform, e.g. ``def mu(xp, params, X): return xp.sigmoid(params["alpha"] + X @ params["beta"])``, builds the
mean inside the PyMC model (PyTensor, parameters shaped ``(*dims)``) and, with a trailing sample axis on every
parameter (``(*dims, samples)``), is evaluated by numpy (the reference) and exported through torch (the artifact).
Operators (``+ * @``, indexing) work in all three; the functions below cover what operators do not.
"""

from __future__ import annotations

from types import SimpleNamespace

NAMES = ("exp", "log", "log1p", "expm1", "sqrt", "abs", "tanh", "sin", "cos", "sigmoid", "softplus", "square",
         "power", "maximum", "minimum", "clip", "where", "matmul", "dot", "take", "sum", "mean", "erf",
         "normal_cdf")


def numpy_xp() -> SimpleNamespace:
    import numpy as np

    def sigmoid(x):
        return np.exp(-np.logaddexp(0.0, -x))  # stable on both tails

    def erf(x):
        from scipy.special import erf as _erf

        return _erf(x)

    return SimpleNamespace(
        name="numpy", exp=np.exp, log=np.log, log1p=np.log1p, expm1=np.expm1, sqrt=np.sqrt, abs=np.abs,
        tanh=np.tanh, sin=np.sin, cos=np.cos, sigmoid=sigmoid, softplus=lambda x: np.logaddexp(0.0, x),
        square=np.square, power=np.power, maximum=np.maximum, minimum=np.minimum, clip=np.clip,
        where=np.where, matmul=np.matmul, dot=lambda a, b: np.tensordot(a, b, axes=([-1], [0])),
        take=lambda a, idx: a[idx], sum=lambda a, axis=None: np.sum(a, axis=axis),
        mean=lambda a, axis=None: np.mean(a, axis=axis), erf=erf,
        normal_cdf=lambda x: 0.5 * (1.0 + erf(x / np.sqrt(2.0))),
    )


def torch_xp() -> SimpleNamespace:
    import math

    import torch

    def _t(v, like):
        return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=like.dtype)

    def where(c, a, b):
        like = a if isinstance(a, torch.Tensor) else b
        return torch.where(c, _t(a, like), _t(b, like))

    def _reduce(fn):
        return lambda a, axis=None: fn(a) if axis is None else fn(a, dim=axis)

    return SimpleNamespace(
        name="torch", exp=torch.exp, log=torch.log, log1p=torch.log1p, expm1=torch.expm1, sqrt=torch.sqrt,
        abs=torch.abs, tanh=torch.tanh, sin=torch.sin, cos=torch.cos, sigmoid=torch.sigmoid,
        softplus=torch.nn.functional.softplus, square=lambda a: a * a, power=torch.pow,
        maximum=lambda a, b: torch.maximum(a, _t(b, a)), minimum=lambda a, b: torch.minimum(a, _t(b, a)),
        clip=lambda a, lo=None, hi=None: torch.clamp(a, lo, hi), where=where, matmul=torch.matmul,
        dot=lambda a, b: torch.tensordot(a, b, dims=([a.dim() - 1], [0])), take=lambda a, idx: a[idx],
        sum=_reduce(torch.sum), mean=_reduce(torch.mean),
        erf=torch.erf, normal_cdf=lambda x: 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    )


def pytensor_xp() -> SimpleNamespace:
    import numpy as np
    import pytensor.tensor as pt

    return SimpleNamespace(
        name="pytensor", exp=pt.exp, log=pt.log, log1p=pt.log1p, expm1=pt.expm1, sqrt=pt.sqrt, abs=pt.abs,
        tanh=pt.tanh, sin=pt.sin, cos=pt.cos, sigmoid=pt.sigmoid, softplus=pt.softplus, square=pt.sqr,
        power=pt.pow, maximum=pt.maximum, minimum=pt.minimum, clip=pt.clip, where=pt.switch, matmul=pt.dot,
        dot=lambda a, b: pt.tensordot(a, b, axes=[[a.ndim - 1], [0]]), take=lambda a, idx: a[idx],
        sum=lambda a, axis=None: pt.sum(a, axis=axis), mean=lambda a, axis=None: pt.mean(a, axis=axis),
        erf=pt.erf, normal_cdf=lambda x: 0.5 * (1.0 + pt.erf(x / np.sqrt(2.0))),
    )


def get(name: str) -> SimpleNamespace:
    """The namespace for a backend: 'numpy', 'torch' or 'pytensor'."""
    return {"numpy": numpy_xp, "torch": torch_xp, "pytensor": pytensor_xp}[name]()

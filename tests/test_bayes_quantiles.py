"""The exported exact-quantile graph (two TopKs per quantile on its smaller side) equals numpy's 'linear'
np.quantile on tricky data: ties, constant rows, tiny sample counts, q = 0 and q = 1, repeated quantiles."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout

import numpy as np
import onnxruntime as ort
import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) needs it: a missing one must fail, not skip)
import pytest
import torch

from onnxforge.bayes.module import exact_quantiles, quantile_plan

QS = [0.0, 0.01, 0.05, 0.25, 0.5, 0.5, 0.75, 0.95, 0.99, 1.0]


def _session(qs, s):
    plan = quantile_plan(qs, s)

    class Q(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.tensor([p[3] for p in plan], dtype=torch.float32))

        def forward(self, m):
            return exact_quantiles(m, plan, self.w)

    import onnxscript.optimizer

    with warnings.catch_warnings(), torch.no_grad(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(Q(), (torch.zeros(3, s),), dynamo=True, input_names=["m"], output_names=["q"],
                                 dynamic_shapes=({0: torch.export.Dim("rows")},), opset_version=18,
                                 external_data=False, verbose=False, optimize=False)
    model = onnxscript.optimizer.optimize(prog.model_proto)
    assert not [n.op_type for n in model.graph.node if n.op_type in ("Bernoulli",)]
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _data(rows, s, rng):
    m = rng.normal(size=(rows, s)).astype(np.float32)
    m[0] = 0.25  # a constant row
    if rows > 1:
        m[1] = rng.integers(0, 3, size=s)  # heavy ties, three levels
    if rows > 2:
        m[2, ::2] = m[2, 0]  # half the samples tied
    if rows > 3:
        m[3] = np.sort(m[3])[::-1]  # sorted descending
    if rows > 4:
        m[4] = rng.choice([-1e-30, 0.0, 1e-30, 1.0], size=s)  # values too close for any value bisection
    return m


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 7, 20, 101, 500])
def test_exact_quantiles_equal_numpy(s):
    rng = np.random.default_rng(s)
    sess = _session(QS, s)
    for rows in (1, 6, 40):
        m = _data(rows, s, rng)
        got = sess.run(None, {"m": m})[0]
        want = np.quantile(m.astype(np.float64), QS, axis=-1).T
        assert got.shape == (rows, len(QS))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"s={s} rows={rows}")


def test_quantile_plan_picks_the_smaller_side():
    plan = quantile_plan([0.05, 0.5, 0.95, 0.0, 1.0], 500)
    assert [(lower, k) for lower, k, *_ in plan] == [(True, 26), (True, 251), (False, 26), (True, 1), (False, 1)]
    assert [pair for _, _, pair, _ in plan] == [True, True, True, False, False]
    np.testing.assert_allclose([w for *_, w in plan], [0.95, 0.5, 0.05, 0.0, 0.0], atol=1e-9)

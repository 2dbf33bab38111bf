"""The exported count and gamma samplers against scipy (issue #16's 1-row latency work changed how they are built:
a run-time count support, a MatMul cdf, one gamma proposal per draw with retries for the rejected ones)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")
torch = pytest.importorskip("torch")

N = 20000  # draws per row


def _export(module, *args, dynamic=None):
    # the product's exporter (bayes/module.export_onnx): dynamo, no exporter optimization
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
        prog = torch.onnx.export(module, args, dynamo=True, external_data=False, optimize=False, opset_version=18,
                                 dynamic_shapes=tuple({0: batch} if d else None
                                                      for d in dynamic or [True] * len(args)), verbose=False)
    return prog.model_proto


def _session(module, *args, dynamic=None):
    """A session of the exported module with seeded random nodes (as every artifact has): the goodness-of-fit
    p-values below are then fixed numbers, not a 1-in-1000 chance per assert of a failure on a correct sampler."""
    import onnxruntime as ort

    from onnxforge.score.scorer import reseed

    model = _export(module, *args, dynamic=dynamic)
    reseed(model, 0)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _counts_module(family: str, alpha: float | None, support: int = 64):
    from onnxforge.bayes import families

    class Counts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("t_k", torch.arange(support, dtype=torch.float32))
            lf = families.log_factorials(support - 1)
            self.register_buffer("t_log_factorial", torch.from_numpy(lf.astype(np.float32)))
            if alpha is not None:
                coef = families.negbin_log_rising(np.float64(alpha), support) - lf
                self.register_buffer("t_log_nb_coef", torch.from_numpy(coef.astype(np.float32)))

        def forward(self, mu):
            tables = {k[2:]: v for k, v in self.named_buffers()}
            return families.draw(family, mu, {} if alpha is None else {"alpha": alpha}, tables)

    return Counts().eval()


def _chi2_pvalue(x: np.ndarray, dist) -> float:
    """Goodness of fit of integer draws to dist, cells merged until each expects >= 20."""
    top = int(x.max()) + 1
    pmf = dist.pmf(np.arange(top))
    pmf[-1] += dist.sf(top - 1)
    obs = np.bincount(x.astype(np.int64), minlength=top).astype(float)
    o, e, cells = [], [], (0.0, 0.0)
    for oi, ei in zip(obs, pmf * len(x), strict=True):
        cells = (cells[0] + oi, cells[1] + ei)
        if cells[1] >= 20:
            o.append(cells[0])
            e.append(cells[1])
            cells = (0.0, 0.0)
    o[-1] += cells[0]
    e[-1] += cells[1]
    return float(stats.chisquare(o, e).pvalue)


@pytest.mark.parametrize(("family", "alpha"), [("poisson", None), ("negative-binomial", 2.0)])
def test_count_draws_match_scipy_with_a_run_time_support(family, alpha):
    """One batch mixing small and large means (support sized by the largest, capped at max_count) and one of small
    means only (a support of a few counts): every row's draws fit the exact distribution."""
    sess = _session(_counts_module(family, alpha), torch.ones(3, N))
    # means where max_count = 64 does not truncate (mean + 6 sd < 63; beyond it the draw is a rounded normal)
    for means in ([0.5, 3.0, 20.0] if alpha is None else [0.5, 2.0, 6.0], [0.5, 1.5]):
        mu = np.repeat(np.asarray(means, np.float32)[:, None], N, axis=1)
        x = sess.run(None, {sess.get_inputs()[0].name: mu})[0]
        assert x.shape == mu.shape and np.all(x == np.round(x)) and x.min() >= 0
        for m, row in zip(means, x, strict=True):
            dist = stats.poisson(m) if alpha is None else stats.nbinom(alpha, alpha / (alpha + m))
            assert _chi2_pvalue(row, dist) > 1e-3, (family, means, m)


@pytest.mark.parametrize("alpha", [0.5, 0.37])
def test_heavy_tailed_negative_binomial_is_neither_truncated_nor_a_rounded_normal(alpha):
    """A small dispersion's tail passes max_count (64) at a mean of a few counts (alpha 0.5, mean 8: 0.5 % of the
    mass above 64; alpha 0.37, mean 10: 2 %) while mean + 6 sd says it fits. Those draws come from the gamma-Poisson
    mixture: every row fits scipy's negative binomial, its mean within 5 s.e. (a rounded normal, as before, lifted
    the mean by a quarter; a truncated support piles the tail on 64)."""
    sess = _session(_counts_module("negative-binomial", alpha), torch.ones(3, N))
    means = [1.0, 8.0, 10.0]
    mu = np.repeat(np.asarray(means, np.float32)[:, None], N, axis=1)
    x = sess.run(None, {sess.get_inputs()[0].name: mu})[0]
    assert np.all(x == np.round(x)) and x.min() >= 0
    for m, row in zip(means, x, strict=True):
        dist = stats.nbinom(alpha, alpha / (alpha + m))
        assert _chi2_pvalue(row, dist) > 1e-3, (alpha, m)
        assert abs(row.mean() - m) < 5 * dist.std() / np.sqrt(N), (alpha, m, row.mean())
    assert x[2].max() > 64


def test_gamma_draws_broadcast_a_posterior_shape_over_rows():
    """standard_gamma(a, like): a per-sample shape (S,) drawn for (rows, S), the shapes spanning the boost (< 1)
    and the retries (about 5 % of proposals rejected near shape 1): each column fits its Gamma by KS."""
    from onnxforge.bayes.families import standard_gamma

    class G(torch.nn.Module):
        def forward(self, a, rows):
            return standard_gamma(a[0], rows)

    shapes = np.asarray([0.3, 1.0, 7.0], np.float32)
    sess = _session(G().eval(), torch.ones(1, 3), torch.ones(5, 3), dynamic=[False, True])
    x = sess.run(None, {"a": shapes[None, :], "rows": np.ones((N, 3), np.float32)})[0]
    assert x.shape == (N, 3)
    for j, a in enumerate(shapes):
        assert stats.kstest(x[:, j], stats.gamma(float(a)).cdf).pvalue > 1e-3, a
    assert np.unique(x[:, 1], return_counts=True)[1].max() <= 3  # no stuck value (float32 ties aside)


@pytest.mark.parametrize(("family", "alpha"), [("poisson", None), ("negative-binomial", 50.0)])
def test_count_means_past_the_support_take_the_rounded_normal_branch(family, alpha):
    """A mean whose support passes max_count (64 here) takes an If's else branch (poisson: a rounded normal;
    negative binomial: the gamma-Poisson mixture) while the batch's other rows still draw exactly; the normals sit
    only in that branch, so a batch of small means makes none (onnxruntime's normals cost more than a small mean's
    inverse CDF)."""
    import onnxruntime as ort

    from onnxforge.summary import all_nodes

    model = _export(_counts_module(family, alpha), torch.ones(2, N))
    from onnxforge.score.scorer import reseed

    reseed(model, 0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    big = 200.0
    mu = np.repeat(np.asarray([2.0, big], np.float32)[:, None], N, axis=1)
    x = sess.run(None, {sess.get_inputs()[0].name: mu})[0]
    assert np.all(x == np.round(x)) and x.min() >= 0
    exact = stats.poisson(2.0) if alpha is None else stats.nbinom(alpha, alpha / (alpha + 2.0))
    assert _chi2_pvalue(x[0], exact) > 1e-3
    sd = np.sqrt(big if alpha is None else big + big * big / alpha)
    assert abs(x[1].mean() - big) < 5 * sd / np.sqrt(N) + 0.1
    assert 0.97 < x[1].std() / sd < 1.03
    assert x[1].max() > 64  # not truncated to the support
    top = [n.op_type for n in model.graph.node]
    normals = [n for n in all_nodes(model.graph) if n.op_type == "RandomNormalLike"]
    # poisson: the rounded normal's; negative binomial: the gamma-Poisson mixture's proposals (first and retries,
    # in each branch of the gamma's boost If: unfolded in this unoptimized export) and its Poisson's
    assert "If" in top and "RandomNormalLike" not in top and len(normals) == (1 if alpha is None else 5)


def test_gamma_draws_with_a_shape_per_element_retry_at_their_own_shape():
    """standard_gamma with a of like's full shape (a beta's a, b vary per row and sample): the shapes vary along both
    axes, so a retry read at the wrong element's shape (a flat index taken modulo the wrong size) shows as a misfit.
    Each shape's draws fit its Gamma by KS."""
    from onnxforge.bayes.families import standard_gamma

    class G(torch.nn.Module):
        def forward(self, a):
            return standard_gamma(a)

    shapes = np.asarray([1.0, 7.0, 40.0], np.float32)  # no boost: the Marsaglia-Tsang branch alone
    rows, cols = N // 4, 12
    pick = (np.arange(rows)[:, None] + np.arange(cols)[None, :]) % 3
    sess = _session(G().eval(), torch.ones(5, cols))
    x = sess.run(None, {sess.get_inputs()[0].name: shapes[pick]})[0]
    for j, a in enumerate(shapes):
        assert stats.kstest(x[pick == j], stats.gamma(float(a)).cdf).pvalue > 1e-3, a


def test_peephole_drops_nodes_and_keeps_every_draw():
    """bayes.peephole.simplify on an exported gamma/beta sampler: fewer nodes (the generator takes the constant
    factor as its scale; no Transpose before a flatten; no Reshape of a flat tensor) and, seeded alike, the same
    draws bit for bit."""
    import onnxruntime as ort

    from onnxforge.bayes import families
    from onnxforge.bayes.peephole import simplify
    from onnxforge.score.scorer import reseed

    class Beta(torch.nn.Module):
        def forward(self, mu, kappa):
            return families.draw("beta", mu, {"kappa": kappa}, {})

    model = _export(Beta().eval(), torch.full((3, 8), 0.5), torch.full((3, 8), 4.0))
    reseed(model, 7)
    before = model.SerializeToString()
    removed = simplify(model)
    reseed(model, 7)
    assert removed >= 3
    import onnx

    onnx.checker.check_model(model, full_check=True)
    feed = {"mu": np.linspace(0.05, 0.95, 500 * 8, dtype=np.float32).reshape(500, 8),
            "kappa": np.full((500, 8), 3.0, np.float32)}
    names = [i.name for i in model.graph.input]
    feed = dict(zip(names, feed.values(), strict=True))
    a = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    b = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1 and 0.4 < a.mean() < 0.6  # means 0.05 to 0.95


def test_peephole_pads_a_constant_column_and_drops_a_view_chain():
    """A reference-category column (Concat of Expand(0), the logits and Expand(1), as the lowering of
    pt.concatenate emits it) becomes Pads, and a (rows, 1, S) view of a (rows, S) MatMul squeezed back becomes the
    MatMul: same outputs bit for bit at several batch sizes, 8 nodes fewer, checker-clean."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from onnxforge.bayes.peephole import simplify

    w = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    inits = [nh.from_array(w, "w"), nh.from_array(np.asarray([-1, 1, 6], np.int64), "view"),
             nh.from_array(np.asarray([1], np.int64), "one"), nh.from_array(np.asarray([6], np.int64), "six"),
             nh.from_array(np.zeros((1, 1), np.float32), "zero"), nh.from_array(np.ones((1, 1), np.float32), "ones")]
    nodes = [h.make_node("MatMul", ["X", "w"], ["mm"]), h.make_node("Reshape", ["mm", "view"], ["v"]),
             h.make_node("Squeeze", ["v", "one"], ["eta"]),
             h.make_node("Shape", ["X"], ["rows"], start=0, end=1),
             h.make_node("Concat", ["rows", "one"], ["col"], axis=0),
             h.make_node("Expand", ["zero", "col"], ["z"]), h.make_node("Expand", ["ones", "col"], ["o"]),
             h.make_node("Concat", ["z", "eta", "o"], ["cat"], axis=1), h.make_node("Sigmoid", ["cat"], ["Y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("X", T.FLOAT, ["batch", 2])],
                     [h.make_tensor_value_info("Y", T.FLOAT, ["batch", 8])], inits,
                     # the shapes torch's exporter records (onnx's own inference cannot name a -1 or an Expand)
                     value_info=[h.make_tensor_value_info(n, T.FLOAT, s) for n, s in (
                         ("v", ["batch", 1, 6]), ("eta", ["batch", 6]), ("z", ["batch", 1]), ("o", ["batch", 1]))])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    before = model.SerializeToString()
    simplify(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Pad", "Pad", "Sigmoid"]
    a = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (1, 5):
        x = np.random.default_rng(rows).normal(size=(rows, 2)).astype(np.float32)
        np.testing.assert_array_equal(a.run(None, {"X": x})[0], b.run(None, {"X": x})[0])


def test_peephole_folds_only_a_positive_factor_into_a_normal():
    """RandomNormalLike · 0.5 becomes scale 0.5; · -2 stays a Mul (a negative standard deviation is undefined in
    the generator)."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from onnxforge.bayes.peephole import simplify

    def graph(k: float):
        g = h.make_graph([h.make_node("RandomNormalLike", ["X"], ["z"], seed=1.0), h.make_node("Mul", ["z", "k"], ["Y"])],
                         "g", [h.make_tensor_value_info("X", T.FLOAT, ["batch", 4])],
                         [h.make_tensor_value_info("Y", T.FLOAT, ["batch", 4])],
                         [nh.from_array(np.asarray(k, np.float32), "k")])
        model = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
        simplify(model)
        return model

    folded, kept = graph(0.5), graph(-2.0)
    assert [n.op_type for n in folded.graph.node] == ["RandomNormalLike"]
    assert [a.f for a in folded.graph.node[0].attribute if a.name == "scale"] == [0.5]
    assert [n.op_type for n in kept.graph.node] == ["RandomNormalLike", "Mul"]

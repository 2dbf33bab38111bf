"""The torch predictive module and its ONNX export.

The module holds the posterior variables the transform uses as float32 buffers shaped (*dims, samples), runs the
transform with the torch `xp`, and reduces over the sample axis: mean, std (with observation noise), quantiles of
the expected value (exact order statistics from two small TopKs on the quantile's smaller side, then fixed-weight
interpolation), and predictive draws. After the torch export, each categorical input gets an in-graph ai.onnx.ml
LabelEncoder in front (raw level → code), and the draws' random nodes get their seeds.
"""

from __future__ import annotations

import warnings

import numpy as np

from onnxforge.bayes.families import log_factorials, negbin_log_rising
from onnxforge.errors import UserError

ML_OPSET = 3  # ai.onnx.ml LabelEncoder-2: keys_strings/keys_int64s → values_int64s with default_int64


def build_module(pred):
    """A torch.nn.Module computing the predictive outputs of `pred` (a BayesPredictive)."""
    import torch

    from onnxforge.bayes.shim import torch_xp

    names = sorted(pred.used)
    s = pred.posterior.samples

    class Predictive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, n in enumerate(names):
                self.register_buffer(f"post_{i}", torch.from_numpy(pred.values[n].astype(np.float32)))
            self.fp_kinds = {}
            for k, (kind, ref) in pred.fparams.items():
                self.fp_kinds[k] = (kind, ref)
                if kind == "var":
                    self.register_buffer(f"fp_{k}", torch.from_numpy(pred.values[ref].astype(np.float32)))
            if hasattr(pred.transform, "torch_module"):  # zero-code: the lowered graph, its constants as buffers
                self.lowered = pred.transform.torch_module()
            self.within = None
            if pred.want_std and not pred.family.variance_uses_mu and not pred.graph_params:
                self.within = float(pred.within_variance())
            if pred.quantiles:
                self.q_plan = quantile_plan(pred.quantiles, s)
                self.register_buffer("q_w", torch.from_numpy(np.asarray([w for *_, w in self.q_plan], np.float32)))
            self.n_draws = pred.n_draws
            if pred.n_draws:
                idx = pred.draw_index()
                self.register_buffer("draw_idx", torch.from_numpy(idx.astype(np.int64)))
                self.same_draws = bool(idx.size == s and (idx == np.arange(s)).all())
                self._tables(pred, idx)

        def _tables(self, pred, idx):
            from onnxforge.bayes import families

            fam = pred.family.name
            fam = families.ZERO_INFLATED.get(fam, fam)
            if fam not in ("poisson", "negative-binomial", "binomial"):
                return
            support = pred.max_count  # counts 0..support-1
            if fam == "binomial":
                kind, ref = pred.fparams["n"]
                support = (int(ref) if kind == "const" else pred.max_count) + 1
            self.register_buffer("t_k", torch.arange(support, dtype=torch.float32))
            self.register_buffer("t_log_factorial",
                                 torch.from_numpy(log_factorials(support - 1).astype(np.float32)))
            if fam == "negative-binomial":
                kind, ref = pred.fparams["alpha"]
                a = pred.values[ref][..., idx] if kind == "var" else np.float64(ref)
                coef = negbin_log_rising(a, support) - log_factorials(support - 1)  # in float64, then rounded once
                self.register_buffer("t_log_nb_coef", torch.from_numpy(coef.astype(np.float32)))

        def _fp(self, inputs, draws: bool):
            out = {}
            for k, (kind, ref) in self.fp_kinds.items():
                if kind == "var":
                    v = getattr(self, f"fp_{k}")
                    out[k] = v if not draws or self.same_draws else v[..., self.draw_idx]
                elif kind == "input":
                    out[k] = inputs[ref]
                elif kind == "graph":
                    continue  # computed per row by the transform
                else:
                    out[k] = float(ref)
            return out

        def forward(self, *args):
            from onnxforge.bayes import families
            from onnxforge.bayes.predictive import Params

            xp = torch_xp()
            inputs = {}
            for spec, a in zip(pred.inputs, args, strict=True):
                if spec.name not in pred.categorical and a.dim() == 1:
                    a = a.unsqueeze(-1)  # 1-D numeric inputs are (rows, 1) columns, as in numpy
                inputs[spec.name] = a
            params = Params({n: getattr(self, f"post_{i}") for i, n in enumerate(names)}, pred.posterior.path)
            mu = pred.transform(xp, params, **{k: inputs[k] for k in pred.args})
            rows = args[0].shape[0]
            extra = {}
            if isinstance(mu, dict):  # zero-code: the family parameters that depend on the inputs
                extra = {k: v.expand(rows, s) if tuple(v.shape) != (rows, s) else v
                         for k, v in mu.items() if k != "mu"}
                mu = mu["mu"]
            if not (pred.family.classes and mu.dim() == 3):  # class probabilities stay (rows, K, samples)
                mu = mu.expand(rows, s) if tuple(mu.shape) != (rows, s) else mu
            p = {**self._fp(inputs, draws=False), **extra}
            m = pred.family.mean(xp, mu, p)
            m = m.expand_as(mu) if m.shape != mu.shape else m
            mean = m.mean(-1)
            outs = []
            if pred.want_mean:
                outs.append(mean)
            if pred.want_std:
                if self.within is not None:  # noise variance independent of mu: its sample mean is a constant
                    within = self.within
                else:
                    v = pred.family.variance(xp, mu, p)
                    within = (v.expand_as(mu) if v.shape != mu.shape else v).mean(-1)
                d = m - mean.unsqueeze(-1)
                # d * d, not torch.square: that exports as Pow, which onnxruntime runs ~3x slower than Mul
                outs.append(torch.sqrt(within + (d * d).mean(-1)))
            if pred.quantiles:
                if m.dim() == 3:  # per class: (rows·K, samples) → (rows, K, Q)
                    q = exact_quantiles(m.reshape(-1, s), self.q_plan, self.q_w)
                    outs.append(q.reshape(rows, m.shape[1], len(self.q_plan)))
                else:
                    outs.append(exact_quantiles(m, self.q_plan, self.q_w))
            if self.n_draws:
                mu_d = mu if self.same_draws else mu[..., self.draw_idx]
                tables = {k[2:]: v for k, v in self.named_buffers() if k.startswith("t_")}
                p_d = self._fp(inputs, draws=True)
                p_d.update({k: v if self.same_draws else v[:, self.draw_idx] for k, v in extra.items()})
                outs.append(families.draw(pred.family.name, mu_d, p_d, tables))
            return tuple(outs)

    return Predictive().eval()


def quantile_plan(quantiles, s: int) -> list[tuple[bool, int, bool, float]]:
    """How to get each quantile (numpy's 'linear' method: x[lo] + (x[hi] - x[lo]) * w with pos = q (s - 1),
    lo = floor(pos), hi = lo + 1) exactly without a sort: (lower, k, pair, w). `lower`: take the k = hi + 1
    smallest samples (then x[hi] is their max, x[lo] their second largest), else the k = s - lo largest (x[lo]
    their min, x[hi] their second smallest), whichever set is smaller. `pair` is False when only x[lo] is
    needed (w = 0, or lo is the last sample)."""
    plan = []
    for q in quantiles:
        pos = float(q) * (s - 1)
        lo = min(int(np.floor(pos)), s - 1)
        w = pos - lo
        pair = w > 0 and lo + 1 < s
        hi = lo + 1 if pair else lo
        lower = hi + 1 <= s - lo
        k = hi + 1 if lower else s - lo
        plan.append((lower, k, pair and k >= 2, float(w) if pair else 0.0))
    return plan


def exact_quantiles(m, plan, w):
    """Quantiles of m (rows, samples) over its last axis, per `quantile_plan`; w: the plan's weights as a
    float32 tensor. Exported, each quantile is two TopKs: the k samples on the quantile's smaller side
    (unsorted), then its two order statistics from that small set — exact, and far cheaper in onnxruntime than
    sorting up to the highest one needed."""
    import torch

    los, his = [], []
    for lower, k, pair, _ in plan:
        near = torch.topk(m, k, dim=-1, largest=not lower, sorted=False).values
        if not pair:
            v = near.amax(-1, keepdim=True) if lower else near.amin(-1, keepdim=True)
            los.append(v)
            his.append(v)
            continue
        two = torch.topk(near, 2, dim=-1, largest=lower, sorted=True).values
        first, second = two[:, 0:1], two[:, 1:2]  # lower side: (x[hi], x[lo]); upper side: (x[lo], x[hi])
        los.append(second if lower else first)
        his.append(first if lower else second)
    lo, hi = torch.cat(los, 1), torch.cat(his, 1)
    return lo + (hi - lo) * w


def _example_args(pred, rows: int = 3):
    import torch

    args = []
    for spec in pred.inputs:
        shape = [rows] + [d for d in (spec.shape or ["batch"])[1:]]
        if any(not isinstance(d, int) for d in shape[1:]):
            raise UserError(f"input '{spec.name}': only the first (batch) dim may be dynamic, got {spec.shape} — "
                            "give the other dims as numbers")
        if pred.takes_integers(spec):
            args.append(torch.zeros(shape, dtype=torch.int64))
        else:
            args.append(torch.zeros(shape, dtype=torch.float32))
    return tuple(args)


def export_onnx(pred, opset: int, seed: int | None):
    """torch.onnx.export (dynamo) of the module, then categorical encoders and seeded random nodes."""
    import io
    import logging

    import torch

    module = build_module(pred)
    args = _example_args(pred)
    batch = torch.export.Dim("batch")
    in_names = [f"{s.name}__code" if s.name in pred.categorical else s.name for s in pred.inputs]
    out_names = [pred.output_names[k] for k in ("mean", "std", "quantiles", "draws") if k in pred.output_names]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        buf = io.StringIO()
        from contextlib import redirect_stdout

        by_hand = not hasattr(pred.transform, "graphs")  # the user's code, which must run on torch tensors
        if by_hand:
            _try_eager(module, args)
        try:
            with redirect_stdout(buf):  # the exporter narrates its steps on stdout
                prog = torch.onnx.export(module, args, dynamo=True, input_names=in_names, output_names=out_names,
                                         dynamic_shapes=(tuple({0: batch} for _ in args),), opset_version=opset,
                                         external_data=False, verbose=False, optimize=False)
        except Exception as e:
            if not by_hand:
                raise  # a zero-code graph is our lowering: a failure there is ours to fix (exit 3)
            raise _not_exportable(e) from None
    # the exporter's own optimize pass costs seconds; onnxscript's optimizer on the proto does the same folding
    # (constants, shape arithmetic) in tens of milliseconds
    import onnxscript.optimizer

    from onnxforge.frontends._export import strip_provenance

    model = onnxscript.optimizer.optimize(prog.model_proto)
    from onnxforge.bayes.peephole import simplify

    simplify(model)
    strip_provenance(model)  # stack traces name this machine's paths
    add_encoders(model, pred)
    if seed is not None:
        from onnxforge.score.files import reseed

        reseed(model, seed)
    return model


def _try_eager(module, args) -> None:
    """One eager call of the module before export: a transform that fails on torch tensors says so with its own
    error, not torch.export's."""
    from onnxforge.errors import UserError

    try:
        module(*args)
    except UserError:
        raise
    except Exception as e:
        raise _not_exportable(e) from None


def _not_exportable(e: Exception):
    """A hand transform the export backend cannot run or trace — most often numpy called directly (np.tanh on a
    tensor runs eagerly through numpy, which torch.export cannot follow)."""
    import re

    from onnxforge.errors import UserError

    while e.__cause__ is not None:  # torch.onnx wraps torch.export's error, which names the construct
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the exporter colours its messages
    first = " ".join((text.splitlines() or [""])[0].split())[:160]
    return UserError(f"the transform cannot be exported to ONNX ({type(e).__name__}: {first}) — write its math "
                     "with xp (xp.tanh, xp.exp, xp.where, @ ...), not numpy's functions: the same code runs on numpy "
                     "for the reference and on torch for the export")


def add_encoders(model, pred) -> None:
    """Raw categorical input → LabelEncoder → code. Unseen levels map to len(levels): under `error` a Gather over
    arange(len(levels)) then fails at run time (the graph refuses, it never indexes silently); under
    `population` the code selects the appended population level."""
    import onnx
    from onnx import TensorProto, helper

    if not pred.categorical:
        return
    g = model.graph
    new_nodes, new_inputs = [], []
    for spec in pred.inputs:
        cat = pred.categorical.get(spec.name)
        if cat is None:
            continue
        code = f"{spec.name}__code"
        old = next(i for i in g.input if i.name == code)
        strings = isinstance(cat.levels[0], str)
        raw = helper.make_tensor_value_info(spec.name, TensorProto.STRING if strings else TensorProto.INT64,
                                            [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim])
        keys = {"keys_strings": [str(v) for v in cat.levels]} if strings else {
            "keys_int64s": [int(v) for v in cat.levels]}
        enc_out = code if cat.policy == "population" else f"{spec.name}__encoded"
        new_nodes.append(helper.make_node("LabelEncoder", [spec.name], [enc_out], name=f"encode_{spec.name}",
                                          domain="ai.onnx.ml", values_int64s=list(range(len(cat.levels))),
                                          default_int64=cat.unseen_code, **keys))
        if cat.policy == "error":
            rng = f"{spec.name}__known_codes"
            g.initializer.append(onnx.numpy_helper.from_array(np.arange(len(cat.levels), dtype=np.int64), rng))
            new_nodes.append(helper.make_node("Gather", [rng, enc_out], [code], axis=0,
                                              name=f"refuse_unseen_{spec.name}"))
        new_inputs.append((old, raw))
    for old, raw in new_inputs:
        idx = list(g.input).index(old)
        g.input.remove(old)
        g.input.insert(idx, raw)
    for n in reversed(new_nodes):
        g.node.insert(0, n)
    if not any(o.domain == "ai.onnx.ml" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))


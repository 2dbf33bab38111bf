"""The accuracy budget: score a reduced-precision model against its float input, rank nodes by sensitivity and
keep the most sensitive ones in float until the model fits the budget (or nothing is left to quantize)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.stages.quantize.int8 import FUSED_ACTIVATIONS, NodeInfo


def smallest_holding(at: Callable[[int], Any], n: int) -> int | None:
    """The smallest k in 1..n whose build holds the budget, by doubling then bisection (keeping more of the ranked
    weights in higher precision never holds worse). `at(k)` builds and checks once per k and returns a
    (path, result) pair with result["within"], or None where k leaves nothing to quantize: the search's cap then
    drops below k. None when no buildable k holds."""
    lo, hi, k, cap = 0, None, 1, n
    while lo < cap:
        k = min(k, cap)
        got = at(k)
        if got is None:  # past the last buildable k: look halfway back, not one step at a time
            cap = k - 1
            k = (lo + cap + 1) // 2
            continue
        if got[1]["within"]:
            hi = k
            break
        lo, k = k, k * 2
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = at(mid)
            if got is not None and got[1]["within"]:
                hi = mid
            else:
                lo = mid
    return hi


@dataclass
class Budget:
    max_accuracy_drop: float | None = None
    max_error: dict[str, float] = field(default_factory=dict)  # output → max abs error; "*" = every float output

    def limits(self, outputs: list[str]) -> dict[str, float]:
        out = {o: self.max_error["*"] for o in outputs} if "*" in self.max_error else {}
        out.update({k: v for k, v in self.max_error.items() if k != "*"})
        return out


class Assessor:
    """Runs the float model once on the evaluation rows; then scores any candidate against it."""

    def __init__(self, float_path: Path, feeds: dict[str, np.ndarray], labels: np.ndarray | None, budget: Budget):
        from onnxforge import metrics, runtime

        self.feeds, self.budget = feeds, budget
        self.ref = runtime.run(runtime.session(Path(float_path)), feeds)
        self.float_outputs = [k for k, v in self.ref.items() if np.asarray(v).dtype.kind == "f"]
        self.pred_output, ref_pred, kind = metrics.prediction(self.ref)
        # without ground truth, the float model's own predictions are the labels: the drop is then 1 - agreement
        self.against = "labels" if labels is not None else "float model predictions"
        self.labels = labels if labels is not None else ref_pred
        self.metric = "accuracy" if kind == "class" else "r2"
        self.accuracy_float = metrics.accuracy_like(self.ref, self.labels, self.pred_output)
        if labels is None and not math.isfinite(self.accuracy_float):
            # R² of the float model against itself is undefined (one row, a constant output: recurrent and
            # detector outputs on a handful of rows): the drop is then the relative L2 error vs the float model
            self.metric, self.accuracy_float = "relative L2 error", 0.0
        self.limits = budget.limits(self.float_outputs)
        pred = np.asarray(self.ref[self.pred_output])
        self._scale = (float(pred.astype(np.float64).std()) or 1.0) if pred.dtype.kind == "f" else 1.0

    def __call__(self, path: Path) -> dict[str, Any]:
        from onnxforge import metrics, runtime
        from onnxforge.compare import compare

        # the float model ran on these feeds already: a candidate that cannot is our bug, not the user's inputs
        got = runtime.run(runtime.session(Path(path)), self.feeds, user_inputs=False)
        acc = (-_rel_l2(got[self.pred_output], self.ref[self.pred_output]) if self.metric == "relative L2 error"
               else metrics.accuracy_like(got, self.labels, self.pred_output))
        drop = self.accuracy_float - acc
        errors = {}
        for name in self.float_outputs:
            c = compare(name, self.ref[name], got[name], 0.0, self.limits.get(name, 0.0))
            errors[name] = {k: c[k] for k in ("max_abs", "mean_abs", "p99_abs") if k in c}
        ratios = {}
        if self.budget.max_accuracy_drop is not None:
            ratios["accuracy_drop"] = _ratio(drop, self.budget.max_accuracy_drop)
        for name, lim in self.limits.items():
            ratios[f"max_error[{name}]"] = _ratio(errors[name].get("max_abs", math.inf), lim)
        worst = max(ratios.items(), key=lambda kv: kv[1]) if ratios else ("", 0.0)
        pred = np.asarray(got[self.pred_output], dtype=np.float64) if self.pred_output in self.float_outputs else None
        tiebreak = (float(np.abs(pred - np.asarray(self.ref[self.pred_output], dtype=np.float64)).mean())
                    / self._scale) if pred is not None else float(drop)
        return {"accuracy": acc, "accuracy_drop": drop, "errors": errors, "within": all(
            within(r) for r in ratios.values()), "score": worst[1], "worst": worst[0], "tiebreak": tiebreak}

    def describe(self, r: dict) -> str:
        parts = [f"relative L2 error {r['accuracy_drop'] * 100:.2f}%" if self.metric == "relative L2 error" else
                 f"{self.metric} drop {r['accuracy_drop'] * 100:.2f} pt"]
        for name in self.limits:
            parts.append(f"{name} max error {r['errors'][name]['max_abs']:.3g}")
        return ", ".join(parts)


def _rel_l2(got, ref) -> float:
    g, r = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-12))


# a value equal to its limit is within it: a drop of 2/200 rows computes as 1.0 - 0.99 = 0.010000000000000009, so
# every "at most" compares with this much relative slack for the rounding of the computation, not for real error
REL_SLACK = 1e-9


def within(ratio: float) -> bool:
    """A budget ratio (value / limit) holds: at most 1, up to floating-point rounding."""
    return ratio <= 1.0 + REL_SLACK


def _ratio(value: float, limit: float) -> float:
    if limit <= 0:
        return 0.0 if value <= 1e-12 else math.inf
    r = value / limit
    return min(r, 1.0) if within(r) and r > 1.0 else r  # rounding past the limit reads as exactly the limit


def brief(r: dict) -> dict:
    return {"accuracy": r["accuracy"], "accuracy_drop": r["accuracy_drop"], "within_budget": r["within"],
            "max_abs": {k: v.get("max_abs") for k, v in r["errors"].items()}}


def tensor_ranking(float_path: Path, quant_path: Path, feeds: dict[str, np.ndarray],
                   nodes: list[NodeInfo]) -> dict[str, float] | None:
    """Local sensitivity of each node from one run of both models with intermediate tensors exposed: the
    relative L2 error of the node's output minus the largest error among its inputs (error it adds, not error it
    inherits). None when the quantized graph no longer names the float tensors (QOperator), or when a node sits in
    an If/Loop/Scan body, whose tensors a session cannot return: such a node is never scored 0 unmeasured."""
    import onnx

    from onnxforge import runtime

    if any(n.scope for n in nodes):
        return None

    fm = onnx.load(str(float_path))
    qm = onnx.load(str(quant_path))
    q_produced = {o for n in qm.graph.node for o in n.output} | {i.name for i in qm.graph.input}
    consumers: dict[str, list] = {}
    for n in fm.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def alias(t: str) -> str | None:
        # a Conv whose Relu the quantizer fused now writes the Relu's output: follow such single consumers
        while t not in q_produced and len(consumers.get(t, [])) == 1 and \
                consumers[t][0].op_type in FUSED_ACTIVATIONS:
            t = consumers[t][0].output[0]
        return t if t in q_produced else None

    tensors = {t: alias(t) for n in nodes for t in (*n.inputs, *n.outputs) if t}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    outs = {t for n in nodes for t in n.outputs}
    if sum(1 for t in outs if t in tensors) < max(1, len(outs) // 2):
        return None
    names = sorted(set(tensors.values()))
    for m in (fm, qm):
        have = {o.name for o in m.graph.output}
        for t in names:
            if t not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
    try:
        fr = runtime.run(runtime.session(fm, level="disable"), feeds, names)
        qr = runtime.run(runtime.session(qm, level="disable"), feeds, names)
    except Exception:  # e.g. an exposed tensor without type information: fall back to probing
        return None

    def err(t: str) -> float:
        a, b = np.asarray(fr[tensors[t]]), np.asarray(qr[tensors[t]])
        if a.dtype.kind != "f" or a.shape != b.shape:
            return 0.0
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(np.linalg.norm(b - a) / (np.linalg.norm(a) + 1e-12))

    scores = {}
    for n in nodes:
        out_err = max((err(t) for t in n.outputs if t in tensors), default=0.0)
        in_err = max((err(t) for t in n.inputs if t in tensors), default=0.0)
        scores[n.name] = out_err - in_err
    return scores


class NoAssess:
    """No evaluation data: nothing to score, every model is 'within' (and the summary says it was not checked)."""

    feeds: dict = {}
    metric = against = None
    accuracy_float = float("nan")

    def __call__(self, path):
        # accuracy_drop None, not 0.0: nothing was measured, and no table may print a figure for it
        return {"accuracy": float("nan"), "accuracy_drop": None, "errors": {}, "within": True, "score": 0.0,
                "worst": "", "tiebreak": 0.0}

    def describe(self, r):
        return "not measured"



@dataclass
class Outcome:
    ok: bool
    path: Path | None
    result: dict
    float_nodes: list[dict]
    steps: list[dict]
    method: str | None
    message: str = ""


def fit_budget(build: Callable[[list[str]], Path], assess: Assessor, targets: list[NodeInfo],
               start: list[str], *, alive: Callable[[Path], bool], method: str = "auto", max_probes: int = 16,
               float_path: Path | None = None, bar=None) -> Outcome:
    """Build with `start` excluded; while over budget, keep the most sensitive remaining node(s) in float and
    rebuild. `probe` re-ranks every step by building each one-more-node-float variant (greedy, exact, O(n²)
    builds); `tensor` ranks by per-node output error from one run and keeps 1, 2, 4... more nodes float per step.
    Nodes inside If/Loop/Scan bodies are out of `tensor`'s sight (a session cannot return their tensors): they are
    probed each step, and a body node is kept float instead of the tensor-ranked group when its measured build
    scores better. A model in which `alive` finds nothing reduced any more is no result: the search stops before
    that."""
    excluded = list(start)
    path = build(excluded)
    res = assess(path)
    steps = [{"float_nodes": list(excluded), **brief(res)}]
    if res["within"]:
        return Outcome(True, path, res, [], steps, None)
    pool = [t for t in targets if t.name not in excluded]
    chosen = method if method != "auto" else ("probe" if len(pool) <= max_probes else "tensor")
    kept: list[dict] = []
    step = 1

    def probe(cands: list[NodeInfo]) -> tuple[NodeInfo, Path, dict] | None:
        """The candidate whose one-more-float build scores best (None: each leaves nothing reduced)."""
        if bar is not None:
            bar.grow(len(cands))
        best = None
        for t in cands:
            p = build([*excluded, t.name])
            r = assess(p) if alive(p) else None
            if bar is not None:
                bar()
            if r is not None and (best is None or (r["score"], r["tiebreak"]) < (best[2]["score"],
                                                                                 best[2]["tiebreak"])):
                if best is not None:
                    best[1].unlink(missing_ok=True)
                best = (t, p, r)
            else:
                p.unlink(missing_ok=True)
        return best

    def probed(t: NodeInfo, r: dict) -> str:
        where = f" (inside {t.scope})" if t.scope else ""
        return f"keeping it in float{where}: {assess.describe(res)} → {assess.describe(r)}"

    while pool:
        picks: list[tuple[NodeInfo, str]] = []
        nxt: tuple[Path, dict] | None = None
        ranked = None
        if chosen == "tensor":
            main = [t for t in pool if not t.scope]
            inner = [t for t in pool if t.scope]
            scores = tensor_ranking(float_path, path, assess.feeds, main) if float_path and main else None
            if scores is None:
                chosen = "probe"
            else:
                ranked = sorted(main, key=lambda t: -scores.get(t.name, 0.0))[:step]
                picks = [(t, f"largest added output error in the reduced model (relative L2 "
                             f"{scores.get(t.name, 0.0):.3g})") for t in ranked]
                grow = 2  # large models: a bounded number of rebuilds
                if inner:  # measured against the tensor-ranked group's own build: the better one is kept
                    p = build([*excluded, *(t.name for t in ranked)])
                    nxt = (p, assess(p)) if alive(p) else None
                    if nxt is None:
                        p.unlink(missing_ok=True)
                    best = probe(inner)
                    if best is not None and (nxt is None or (best[2]["score"], best[2]["tiebreak"]) < (
                            nxt[1]["score"], nxt[1]["tiebreak"])):
                        if nxt is not None:
                            nxt[0].unlink(missing_ok=True)
                        picks, nxt = [(best[0], probed(best[0], best[2]))], (best[1], best[2])
                        grow = 1  # the ranked group was not taken: offer the same number next step
                    elif best is not None:
                        best[1].unlink(missing_ok=True)
                    elif nxt is None:
                        break  # every choice left nothing reduced
                step *= grow
        if chosen == "probe":
            best = probe(pool)
            if best is None:
                break  # every remaining node is the last one reduced
            t, p, r = best
            picks = [(t, probed(t, r))]
            nxt = (p, r)
        excluded += [t.name for t, _ in picks]
        pool = [t for t in pool if t.name not in excluded]
        if nxt is None:
            p = build(excluded)
            if not alive(p):
                p.unlink(missing_ok=True)
                break
            nxt = (p, assess(p))
        path.unlink(missing_ok=True)
        path, res = nxt
        kept += [{"node": t.name, "op_type": t.op_type, "reason": why, "step": len(steps)} for t, why in picks]
        steps.append({"float_nodes": list(excluded), **brief(res)})
        if res["within"]:
            return Outcome(True, path, res, kept, steps, chosen)
    last = ("keeping one more would leave nothing reduced" if pool else
            "no other node of this configuration is left to keep in float")
    return Outcome(False, path, res, kept, steps, chosen,
                   f"still over budget ({assess.describe(res)}) with {len(kept) + len(start)} nodes kept in float; "
                   + last)

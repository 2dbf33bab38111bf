"""INT4 within the budget: which weights stay in 4 bits.

Why not budget.fit_budget's rankings: INT4 rounding moves every MatMul's weights by the same ~8 % (relative L2,
block 32), so `tensor` ranking (the error a node adds at its own output) sees 18 equal nodes on all-MiniLM-L6-v2
and ordered them by noise — the search kept 15 of 18 float and still missed (min cosine 0.979) because the one
MatMul that alone costs 0.025 of cosine (layer 5's FFN input) was among the 3 left in 4 bits; `probe` is exact
but O(n²) builds (> 10 min). What differs between the nodes is how far their error travels to the output.

Here each target is rounded alone, in memory: the float model with that one weight replaced by its 4-bit value
(the MatMulNBits blocks onnxruntime's quantizer wrote, decoded; the embedding table rounded the same way), scored
by the budget on the evaluation rows — one session per target (~1–2 s each on MiniLM). The k with the most loss
targets per weight are demoted (MatMuls to 8-bit MatMulNBits with `fallback: int8`, else float; the embedding table to
float), k found by doubling then bisection, each step one real build checked on the rows. Output-fidelity budgets
are searched at half the allowed loss, as INT8's search is (just meeting 0.99 on the search rows left held-out
sentences below it); the result is judged by the promised budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from onnxforge.stages.quantize import budget as qb

_NBITS = ("MatMul", "Attention")  # targets with an 8-bit MatMulNBits fallback (an Attention's QKV MatMul)


def ranking(builder, assess, float_path: Path, names: list[str], work: Path, bar=None,
            sizes: dict | None = None) -> dict[str, float]:
    """{target: budget shortfall ratio with only it in 4 bits} (higher: more sensitive); `sizes` (if given) is
    filled with each target's weight count."""
    import onnx
    from onnx import numpy_helper

    from onnxforge.artifact import save_model
    from onnxforge.stages.quantize import int4

    cfg = builder.cfg
    rounded = int4.dequantized_matmul_weights(builder.model([], ()))
    m = onnx.load(str(float_path))
    inits = {t.name: i for i, t in enumerate(m.graph.initializer)}
    nodes = {n.name: n for n in m.graph.node}
    out: dict[str, float] = {}
    if bar is not None:
        bar.grow(len(names))
    for name in names:
        n = nodes[name]
        if n.op_type == "MatMul":
            wname, value = n.input[1], rounded.get(name)
        elif n.op_type == "Attention":  # its QKV weight, as the unfused MatMul stores it
            wname, value = n.input[1], rounded.get(int4.qkv_matmul(name))
        else:  # the word-embedding table of a Gather or an EmbedLayerNormalization
            wname = n.input[2] if n.op_type == "EmbedLayerNormalization" else n.input[0]
            value = int4.fake_quant_rows(numpy_helper.to_array(m.graph.initializer[inits[wname]]), cfg.block_size,
                                         cfg.symmetric)
        if sizes is not None:
            sizes[name] = int(np.prod(m.graph.initializer[inits[wname]].dims))
        if value is None:  # the quantizer left it alone: nothing to lose
            out[name] = 0.0
            continue
        i = inits[wname]
        keep = onnx.TensorProto()
        keep.CopyFrom(m.graph.initializer[i])
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), wname))
        try:
            p = save_model(m, work / "int4-rank.onnx", run_check=False)
            r = assess(p)
        finally:
            m.graph.initializer[i].CopyFrom(keep)
        out[name] = float(r["score"]) + 1e-3 * float(r["tiebreak"])
        if bar is not None:
            bar()
    (work / "int4-rank.onnx").unlink(missing_ok=True)
    return out


def fit(builder, assess, float_path: Path, targets: list, start: list[str], *, alive, bar=None) -> qb.Outcome:
    """The INT4 model within the budget with the least weight demoted (see the module docstring). Outcome's
    float_nodes lists every demoted target with its precision (int8 or float) and its measured sensitivity."""
    from onnxforge.stages.quantize import fidelity

    t0 = time.perf_counter()
    check = assess
    if isinstance(assess, fidelity.FidelityCheck):
        b = assess.budget
        check = fidelity.FidelityCheck(float_path, assess.feeds,
                                       fidelity.FidelityBudget(1 - (1 - b.min_cosine) / 2, b.max_rel_error / 2),
                                       assess.provenance)
    int8_ok = builder.cfg.fallback == "int8"
    ops = {t.name: t.op_type for t in targets}
    pool = [t.name for t in targets if t.name not in start]

    def build(demoted: list[str]) -> Path:
        mm8 = [n for n in demoted if int8_ok and ops.get(n) in _NBITS]
        return builder.build([*start, *(n for n in demoted if n not in mm8)], mm8)

    steps: list[dict] = []

    def record(demoted, r) -> None:
        steps.append({"demoted": list(demoted), "within": r["within"],
                      **({"fidelity": r["fidelity"]} if r.get("fidelity") else qb.brief(r))})

    path = build([])
    res = check(path)
    record([], res)
    if res["within"]:
        final = assess(path)
        return qb.Outcome(final["within"], path, final, [], steps, "int4: all targets in 4 bits",
                          "" if final["within"] else f"over budget ({assess.describe(final)})")
    path.unlink(missing_ok=True)
    sizes: dict[str, int] = {}
    sens = ranking(builder, check, float_path, pool, builder.work, bar, sizes)
    # demoted first: the most loss per weight kept in 4 bits (losses add up closely: on MiniLM the sum of the
    # 19 alone-losses was within 10 % of the all-4-bit loss) — the 47 MB embedding table costs less than one
    # FFN MatMul, so it stays in 4 bits while the FFNs go to 8 bits
    order = sorted(pool, key=lambda n: (-sens[n] / max(sizes.get(n, 1), 1), n))
    steps.append({"ranking": {n: {"loss": round(sens[n], 4), "weights": sizes.get(n, 0)} for n in order},
                  "ranking_s": round(time.perf_counter() - t0, 1)})
    tried: dict[int, tuple[Path, dict] | None] = {}

    def at(k: int):
        if k not in tried:
            p = build(order[:k])
            if not alive(p):  # nothing left in 4 bits: no INT4 model
                p.unlink(missing_ok=True)
                tried[k] = None
            else:
                r = check(p)
                record(order[:k], r)
                tried[k] = (p, r)
            if bar is not None:
                bar.grow(1)
                bar()
        return tried[k]

    hi = qb.smallest_holding(at, len(order))
    keep = tried.get(hi) if hi is not None else None
    for kk, v in tried.items():
        if v is not None and kk != hi:
            v[0].unlink(missing_ok=True)
    method = f"int4: each target rounded alone, ranked ({len(pool)} sessions), {len(tried)} builds"
    if keep is None:
        last = max((kk for kk, v in tried.items() if v is not None), default=0)
        return qb.Outcome(False, None, res, _why(order[:last], sens, ops, int8_ok), steps, method,
                          f"still outside the budget with the {last} most sensitive of {len(order)} weights "
                          f"demoted{' to 8 bits or float' if int8_ok else ' to float'}; demoting more would leave "
                          "nothing in 4 bits")
    p, _ = keep
    final = assess(p)
    ok = final["within"]
    return qb.Outcome(ok, p, final, _why(order[:hi], sens, ops, int8_ok), steps, method,
                      "" if ok else f"within the search's stricter bar on its rows, but over budget ({assess.describe(final)})")


def _why(names: list[str], sens: dict[str, float], ops: dict[str, str], int8_ok: bool) -> list[dict]:
    out = []
    for n in names:
        prec = "int8" if int8_ok and ops.get(n) in _NBITS else "float"
        out.append({"node": n, "op_type": ops.get(n, "?"), "precision": prec, "sensitivity": round(sens.get(n, 0.0), 4),
                    "reason": f"among the {len(names)} with the most loss per weight in 4 bits (alone: budget "
                              f"ratio {sens.get(n, 0.0):.2f})"})
    return out

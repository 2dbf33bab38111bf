"""Where the quantize stage's rows come from: calibration (real data, or random only when allowed), evaluation
for the budget, and inputs for timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def calibration(ctx, src: Path, opts, warnings: list[str], required: bool):
    """(feeds, provenance) for calibration, or (None, reason) when there is none and it is not required."""
    from onnxforge import data
    from onnxforge.errors import UserError

    d = ctx.cfg.data
    feeds, prov = None, None
    if d.calibration or d.path:
        feeds, prov = ctx.feeds("calibration", src)
    elif d.synthetic and not opts.allow_synthetic_calibration:
        if required:
            raise UserError("static quantization on synthetic (random) data is refused — give calibration data "
                            "(data.calibration or --data FILE), or set allow_synthetic_calibration: true")
        return None, "synthetic calibration not allowed"
    elif opts.allow_synthetic_calibration:
        feeds, prov = data.synthesize(ctx.input_specs(src), max(opts.calibration_rows, 64), d.seed), "synthetic"
    if feeds is None:
        if required:
            raise UserError("static quantization needs calibration data — set data.calibration (or data.path), "
                            "or pass --data FILE (random data only with allow_synthetic_calibration: true)")
        return None, "no calibration data"
    if prov == "synthetic":
        warnings.append("calibrated on SYNTHETIC random inputs (allow_synthetic_calibration: true): activation "
                        "ranges may not match real data")
    n = data.n_rows(feeds)
    idx = np.random.default_rng(d.seed).permutation(n)[: opts.calibration_rows]
    return data.rows_slice(feeds, idx), prov


def evaluation(ctx, src: Path, opts, warnings: list[str]):
    """(feeds, provenance, labels) for the budget; feeds None when no data is configured."""
    from onnxforge import data
    from onnxforge.errors import UserError

    d = ctx.cfg.data
    if d.path is None:
        budget_set = bool({"max_accuracy_drop", "max_error"} & opts.model_fields_set) and (
            opts.max_accuracy_drop is not None or opts.max_error)
        if budget_set:
            raise UserError("quantize: an accuracy budget needs evaluation data — set data.path (or --data FILE)")
        warnings.append("accuracy NOT measured: no evaluation data (set data.path or --data FILE)")
        return None, None, None
    feeds, prov = ctx.feeds("eval", src)
    labels = ctx.labels()
    if opts.eval_rows:
        feeds = data.take(feeds, opts.eval_rows)
        labels = labels[: opts.eval_rows] if labels is not None else None
    # auto: said only once a static candidate is chosen (stage.py) — a dynamic one calibrates on nothing
    if opts.mode == "static" and calibrates_on_evaluation(d):
        warnings.append(OPTIMISTIC)
    return feeds, prov, labels


OPTIMISTIC = ("the budget is checked on the calibration data itself (optimistic): give held-out data in data.path "
              "and calibration rows in data.calibration")


def calibrates_on_evaluation(d) -> bool:
    """Whether static calibration reads the rows the budget is checked on (no data.calibration, or the same file)."""
    return d.path is not None and (d.calibration is None or Path(d.calibration).resolve() == Path(d.path).resolve())


def latency_feeds(ctx, src: Path, eval_feeds, calib_feeds):
    from onnxforge import data

    if eval_feeds is not None:
        return eval_feeds, "eval data"
    if calib_feeds is not None:
        return calib_feeds, "calibration data"
    # timing does not depend on the values: random inputs are fine here (never for calibration or accuracy)
    return data.synthesize(ctx.input_specs(src), 64, ctx.cfg.data.seed), "synthetic (timing only)"


def probe(sess, model, feeds) -> None:
    """Run the float model (the user's) once on the first rows: inputs that do not fit it (symbolic dims
    synthesized as 1, data of another shape) are one line, exit 2, here — not an INVALID_ARGUMENT inside
    onnxruntime's calibrator or a timing loop."""
    from onnxforge import data, runtime

    pinned = data.fixed_batch(model)
    n = data.n_rows(feeds)
    rows = pinned if pinned and pinned > 0 and n % pinned == 0 else min(n, 16)
    runtime.run(sess, data.take(feeds, rows))

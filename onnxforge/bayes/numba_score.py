"""`Predictor(model, engine="numba", source=CONFIG)`: score a PyMC artifact in-process with the numba engine
(onnxforge.bayes.numba_engine) instead of onnxruntime.

The engine is compiled from the posterior and the mean function the config names — an .onnx file does not hold
them — so the caller names the config the artifact was converted from (a path, or a parsed config). Loading it is
loading a config: its code runs under the same trust rule as `onnxforge run` (onnxforge.code_trust). Before the
Predictor is handed back, the engine is checked against the artifact: the artifact must be a PyMC one whose
recorded family, outputs, quantiles and posterior match the config's, and on probe rows built from the artifact's
inputs (numbers from a seeded normal, categorical inputs cycling through their levels) every deterministic output
must equal onnxruntime's within rtol 1e-4, atol 1e-5 (exit 1 otherwise: CheckFailed). Draws are numba's
(distributionally, not bit-wise, the artifact's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.errors import CheckFailed, UserError

ENGINES = ("onnxruntime", "numba")
PROBE_ROWS = 17
RTOL, ATOL = 1e-4, 1e-5


def _config(source: Any):
    from onnxforge.config import load_config

    if source is None:
        raise UserError("Predictor(engine='numba') compiles the PyMC posterior the artifact was converted from, "
                        "which the .onnx does not hold — pass source='pipeline.yaml' (the config that converted it)")
    if isinstance(source, str | Path):
        if not Path(source).is_file():
            raise UserError(f"Predictor(source={str(source)!r}): file not found — give the pipeline config (YAML) "
                            "the artifact was converted from")
        return load_config(source)
    if hasattr(source, "source") and hasattr(source, "inputs"):
        return source  # a parsed config (onnxforge.config.load_config / parse_config)
    raise UserError(f"Predictor(source=...) takes the config's path or a parsed config, not "
                    f"{type(source).__name__}")


def _recorded(session, where: str) -> tuple[dict, dict]:
    """(the artifact's `bayes` metadata, its {source file name: sha256})."""
    from onnxforge.artifact import meta_json

    meta = dict(session.get_modelmeta().custom_metadata_map)
    bayes = meta_json(meta, "bayes", where=where)
    if not bayes:
        raise UserError(f"{where}: engine='numba' scores PyMC artifacts only, and this one records no PyMC "
                        "predictive (no onnxforge.bayes metadata) — use engine='onnxruntime'")
    return bayes, meta_json(meta, "source.sha256", where=where, default={}, items=str)


def _match(bayes: dict, hashes: dict, cfg, pred, where: str) -> None:
    """The config must be the artifact's: same source files (sha256 as recorded at convert) and the same
    predictive (family, outputs, quantiles, draws, posterior file and samples)."""
    from onnxforge.artifact import sha256_file
    from onnxforge.registry import frontend

    for path in frontend("pymc").source_files(cfg):
        want = hashes.get(Path(path).name)
        if want is not None and Path(path).is_file() and sha256_file(path) != want:
            raise UserError(f"{where}: {Path(path).name} has changed since the artifact was converted (sha256 "
                            "differs from the one recorded) — re-convert, or pass the files it was converted from")
    post = pred.posterior.summary()
    rec_post = bayes.get("posterior") or {}
    mine = {"family": pred.family.name, "outputs": dict(pred.output_names), "quantiles": list(pred.quantiles),
            "draws": pred.n_draws, "posterior file": post["file"], "posterior samples": post["samples"]}
    theirs = {"family": bayes.get("family"), "outputs": bayes.get("outputs"), "quantiles": bayes.get("quantiles"),
              "draws": bayes.get("draws"), "posterior file": rec_post.get("file"),
              "posterior samples": rec_post.get("samples")}
    for key, want in theirs.items():
        if mine[key] != want:
            raise UserError(f"{where}: the source config is not the one this artifact was converted from ({key}: "
                            f"artifact {want!r}, config {mine[key]!r}) — pass that config as source=")


def probe_feeds(pred, rows: int = PROBE_ROWS) -> dict[str, np.ndarray]:
    """Rows the engine and the artifact are compared on: numbers ~ N(0, 1) (seed 0), categorical inputs cycling
    through their levels."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in pred.inputs:
        shape = [rows] + [d if isinstance(d, int) else 1 for d in (spec.shape or ["batch"])[1:]]
        cat = pred.categorical.get(spec.name)
        if cat is not None:
            feeds[spec.name] = np.asarray(cat.levels)[np.arange(int(np.prod(shape))) % len(cat.levels)
                                                      ].reshape(shape)
            if cat.levels and isinstance(cat.levels[0], str):
                feeds[spec.name] = feeds[spec.name].astype(object)
        elif pred.takes_integers(spec):
            feeds[spec.name] = np.zeros(shape, np.int64)  # an integer input may be an index: 0 is always one
        else:
            feeds[spec.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], skip: str | None = None) -> str | None:
    """The first output where got differs from want beyond rtol 1e-4 / atol 1e-5, as text; None if all equal."""
    for name, w in want.items():
        if name == skip:
            continue
        g = got.get(name)
        if g is None or np.shape(g) != np.shape(w):
            return f"{name}: shape {None if g is None else list(np.shape(g))} vs the artifact's {list(np.shape(w))}"
        w64, g64 = np.asarray(w, np.float64), np.asarray(g, np.float64)
        bad = ~np.isclose(g64, w64, rtol=RTOL, atol=ATOL, equal_nan=True)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), bad.shape)
            return f"{name}{list(i)}: {g64[i]:.7g} vs the artifact's {w64[i]:.7g}"
    return None


def numba_engine(session, source: Any, threads: int | None, where: str):
    """The checked NumbaPredictive for this artifact's session (see the module docstring)."""
    from onnxforge.bayes.numba_engine import NumbaPredictive, require_numba
    from onnxforge.registry import frontend

    require_numba()
    bayes, hashes = _recorded(session, where)
    cfg = _config(source)
    if cfg.source.framework != "pymc":
        raise UserError(f"Predictor(source=...): that config converts a {cfg.source.framework} model; "
                        "engine='numba' takes the PyMC config the artifact came from")
    pred = frontend("pymc").load(cfg)
    _match(bayes, hashes, cfg, pred, where)
    engine = NumbaPredictive(pred, threads=threads, seed=cfg.source.seed)
    feeds = probe_feeds(pred)
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(names, feeds), strict=True))
    got = engine(feeds)
    diff = compare(got, want, skip=pred.output_names.get("draws"))
    if diff is not None:
        raise CheckFailed(f"{where}: the numba engine disagrees with the artifact on probe rows ({diff}; rtol "
                          f"{RTOL:g}, atol {ATOL:g}) — if the artifact was quantized or cast after convert, pass convert's "
                          "model; otherwise use engine='onnxruntime' and report it")
    return engine

"""The numba engine (issue #16, onnxforge.bayes.numba_engine): mean, std and exact quantiles compiled by PyTensor's
numba backend from the same BayesPredictive, equal to the ONNX artifact's outputs — for a hand transform (linear)
and a zero-code model with a categorical input and unseen levels (hier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_bayes_reference import example_feeds, run_model
from test_bayes_zero_code import convert

ROOT = Path(__file__).resolve().parents[1]


def _pred(name: str, zero_code: bool):
    from onnxforge.config import parse_config, read_yaml
    from onnxforge.registry import frontend

    path = ROOT / "configs" / f"pymc_{name}.yaml"
    raw, lines = read_yaml(path)
    if zero_code:
        raw["source"] = {k: v for k, v in raw["source"].items() if k not in ("transform", "family", "params")}
    return frontend("pymc").load(parse_config(raw, path, lines))


@pytest.mark.slow  # numba compiles each function (~1 min here)
@pytest.mark.parametrize(("name", "zero_code"), [("linear", False), ("hier", True)])
def test_numba_engine_equals_the_artifact(tmp_path, name, zero_code):
    from onnxforge.bayes.numba_engine import NumbaPredictive

    engine = NumbaPredictive(_pred(name, zero_code))
    feeds = example_feeds(name)
    if name == "hier":  # an unseen species takes the population level in both
        feeds["group"] = feeds["group"].copy()
        feeds["group"][0] = "unheard-of"
    want = run_model(convert(name, tmp_path, zero_code=zero_code), feeds)
    got = engine(feeds)
    assert sorted(got) == ["mean", "quantiles", "std"]
    for key, g in got.items():
        np.testing.assert_allclose(g, want[key], rtol=1e-5, atol=1e-5, err_msg=f"{name}.{key}")
    one = engine({k: v[:1] for k, v in feeds.items()})
    np.testing.assert_allclose(one["mean"], want["mean"][:1], rtol=1e-5, atol=1e-5)

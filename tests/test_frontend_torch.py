"""PyTorch frontend: real exports of the digits CNN and MLP, checked with onnx.checker and onnxruntime against torch
itself (computed here), byte-identical reruns, the TorchScript / auto / .pt2 paths, and every bad input as exit 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CONFIGS, FIXTURES, ROOT, assert_one_line_error, example_runs, run_cli

if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on sys.path
    sys.path.insert(0, str(ROOT))
from fixtures.torch_models import digits_cnn, digits_mlp  # noqa: E402

TEST = FIXTURES / "data/digits_test.npz"
CASES = {  # config → (factory, weights, input name, data key)
    "torch_cnn": (digits_cnn, FIXTURES / "torch/digits_cnn.pt", "input", "input"),
    "torch_mlp": (digits_mlp, FIXTURES / "torch/digits_mlp.pt", "x", "x"),
}
CNN_ARGS = ["--framework", "torch", "--source-opt", f"factory={FIXTURES / 'torch_models.py'}:digits_cnn",
            "-i", "input:float32:batch,1,8,8"]


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def reference(factory, weights) -> torch.nn.Module:
    model = factory()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def assert_matches_torch(model_path: Path, module, x: np.ndarray, input_name: str, output: str = "logits"):
    """ORT on the exported file vs torch on the same rows: one row at a time (16 rows) and all rows at once."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    (got_all,) = sess.run([output], {input_name: x})
    np.testing.assert_allclose(got_all, want, rtol=1e-5, atol=1e-4)  # the torch frontend's default
    got_one = np.concatenate([sess.run([output], {input_name: x[i : i + 1]})[0] for i in range(16)])
    np.testing.assert_allclose(got_one, want[:16], rtol=1e-5, atol=1e-4)
    assert (got_all.argmax(1) == want.argmax(1)).all()


workdir, runs, ran = example_runs(CASES, "torch")


def test_run_converts_and_validates(ran):
    _, res, run, _ = ran
    assert res.code == 0, res.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["verdict"] == "pass"
    assert [(s["name"], s["verdict"]) for s in manifest["stages"]][:2] == [("convert", "pass"), ("validate", "pass")]
    v = json.loads((run / "02-validate/validation.json").read_text())
    assert v["verdict"] == "pass" and v["reference"] == "torch native predict" and v["rows"] == 450
    batches = {c["batch"] for c in v["comparisons"] if c["output"] == "logits" and c["pass"]}
    assert batches == {1, 450}
    assert all(c["rtol"] == 1e-5 and c["atol"] == 1e-4 for c in v["comparisons"])  # measured defaults
    assert v["metrics"]["candidate"]["accuracy"] > 0.9


def test_model_is_checked_named_and_matches_torch(ran):
    case, res, run, _ = ran
    assert res.code == 0, res.stderr
    factory, weights, input_name, key = CASES[case]
    path = run / "01-convert/model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [input_name]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not (run / "01-convert/model.onnx.data").exists()  # weights inline (external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxforge.source.framework"] == "torch"
    assert meta["onnxforge.torch.exporter"] == "dynamo"  # torch_mlp says `auto`: dynamo works, no fallback
    assert "onnxforge.torch.dynamo_failure" not in meta
    assert json.loads(meta["onnxforge.source.sha256"])[weights.name] == sha256(weights)
    assert not any("/" in p.value for n in model.graph.node for p in n.metadata_props
                   if p.key == "pkg.torch.onnx.stack_trace")
    with np.load(TEST) as d:
        x = d[key]
    assert_matches_torch(path, reference(factory, weights), x, input_name)


def test_rerun_with_force_is_byte_identical(runs, workdir):
    case, res, run, first = runs["torch_cnn"]
    assert res.code == 0, res.stderr
    # fresh: another hash seed than the zygote's first run, so set-order nondeterminism shows
    again = run_cli("run", CONFIGS / f"{case}.yaml", "--until", "validate", "--force", cwd=workdir, fresh=True)
    assert again.code == 0, again.stderr
    assert sha256(run / "01-convert/model.onnx") == first


def test_convert_command_torchscript_exporter(tmp_path):
    out = tmp_path / "cnn_ts.onnx"
    res = run_cli("convert", *CNN_ARGS, "-m", FIXTURES / "torch/digits_cnn.pt", "--source-opt",
                  "exporter=torchscript", "--opset", "17", "-o", out)
    assert res.code == 0, res.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxforge.torch.exporter"] == "torchscript" and meta["onnxforge.opset"] == "17"
    assert [o.name for o in model.graph.output] == ["output"]  # no `outputs:` given: the default name
    with np.load(TEST) as d:
        x = d["input"]
    assert_matches_torch(out, reference(digits_cnn, FIXTURES / "torch/digits_cnn.pt"), x, "input", "output")


DATA_DEPENDENT = '''
import torch

class Branchy(torch.nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, TorchScript tracing takes one branch."""
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)

def branchy():
    torch.manual_seed(0)
    return Branchy()
'''


def convert_here(tmp_path: Path, source: dict, inputs: list[dict]) -> Path:
    """The convert stage in this test process (torch is imported here already, so no second start-up)."""
    from onnxforge.config import parse_config
    from onnxforge.pipeline import run_pipeline

    cfg = parse_config({"name": "here", "source": source, "inputs": inputs, "run_dir": str(tmp_path / "runs"),
                        "stages": {"convert": {}}})
    run_pipeline(cfg, force=True)
    out = tmp_path / "runs/here/01-convert/model.onnx"
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out


def meta_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_auto_falls_back_to_torchscript_which_refuses_a_traced_value_branch(tmp_path):
    """dynamo cannot export `if x.sum() > 0:` and `auto` falls back to TorchScript with a warning; the trace would
    keep the branch the example inputs took (it matched torch on positive inputs only, exit 0), so it is refused,
    naming the line of the `if`."""
    from onnxforge.errors import UserError

    (tmp_path / "branchy.py").write_text(DATA_DEPENDENT)
    source = {"framework": "torch", "factory": f"{tmp_path / 'branchy.py'}:branchy", "exporter": "auto"}
    with pytest.warns(UserWarning, match="falling back to the TorchScript exporter"), pytest.raises(
            UserError, match=r"traced a Python branch on a tensor's value \(branchy.py:\d+\).*torch.where"):
        convert_here(tmp_path, source, [{"name": "x", "shape": ["batch", 4]}])
    assert not list((tmp_path / "runs").glob("here/*-convert/model.onnx"))


def test_dynamo_exporter_failure_is_exit_2(tmp_path):
    (tmp_path / "branchy.py").write_text(DATA_DEPENDENT)
    res = run_cli("convert", "--framework", "torch", "--source-opt", f"factory={tmp_path / 'branchy.py'}:branchy",
                  "-i", "x:float32:batch,4", "-o", tmp_path / "dynamo.onnx")
    line = assert_one_line_error(res)
    assert "dynamo exporter failed" in line and "data-dependent" in line and "exporter: torchscript" in line
    assert not (tmp_path / "dynamo.onnx").exists()


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    return reference(digits_cnn, FIXTURES / "torch/digits_cnn.pt")


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    with np.load(TEST) as d:
        return d["input"]


def test_torch_export_pt2_needs_trust(tmp_path, cnn, digits_images):
    ep = torch.export.export(cnn, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(ep, str(pt2))
    line = assert_one_line_error(run_cli("convert", "--framework", "torch", "-m", pt2, "-i",
                                         "input:float32:batch,1,8,8", "-o", tmp_path / "refused.onnx"))
    assert "torch.export program" in line and "trust_pickle: true" in line
    out = convert_here(tmp_path, {"framework": "torch", "path": str(pt2), "trust_pickle": True},
                       [{"name": "input", "shape": ["batch", 1, 8, 8]}])
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # not torch's 's31'
    assert_matches_torch(out, cnn, digits_images, "input", "output")


def test_full_pickle_needs_trust(tmp_path, cnn, digits_images):
    full = tmp_path / "cnn_full.pt"
    torch.save(cnn, full)  # pickles the module object itself, not just tensors
    line = assert_one_line_error(run_cli("convert", "--framework", "torch", "-m", full, "-i",
                                         "input:float32:batch,1,8,8", "-o", tmp_path / "no.onnx"))
    assert "full pickle" in line and "trust_pickle: true" in line
    assert not (tmp_path / "no.onnx").exists()
    out = convert_here(tmp_path, {"framework": "torch", "path": str(full), "trust_pickle": True},
                       [{"name": "input", "shape": ["batch", 1, 8, 8]}])
    assert_matches_torch(out, cnn, digits_images, "input", "output")


FIXED_BATCH = '''
import torch

def pairs():
    """Reshapes to a hard-coded batch of 2: runs on the spec's example batch, not on any other."""
    lin = torch.nn.Linear(16, 2)
    return torch.nn.Sequential(torch.nn.Unflatten(0, (1, 2)), torch.nn.Flatten(1), lin)
'''


@pytest.mark.parametrize("case", ["keras_file", "factory_module", "factory_file", "factory_function",
                                  "factory_syntax", "state_dict_misfit", "spec_channels", "spec_count",
                                  "spec_dynamic", "spec_missing"])
def test_bad_inputs_are_one_line_exit_2(case, tmp_path):
    cnn_pt, mlp_pt = FIXTURES / "torch/digits_cnn.pt", FIXTURES / "torch/digits_mlp.pt"
    models = FIXTURES / "torch_models.py"
    args, expect = {
        "keras_file": ([*CNN_ARGS, "-m", FIXTURES / "keras/digits_sequential.keras"], "framework: keras"),
        "factory_module": (["--framework", "torch", "-m", cnn_pt, "--source-opt", "factory=no_such_pkg.nets:cnn",
                            "-i", "input:float32:batch,1,8,8"], "cannot import 'no_such_pkg.nets'"),
        "factory_file": (["--framework", "torch", "-m", cnn_pt, "--source-opt", f"factory={tmp_path}/nope.py:cnn",
                          "-i", "input:float32:batch,1,8,8"], "not found"),
        "factory_function": (["--framework", "torch", "-m", cnn_pt, "--source-opt", f"factory={models}:resnet",
                              "-i", "input:float32:batch,1,8,8"], "no function 'resnet'"),
        "factory_syntax": (["--framework", "torch", "-m", cnn_pt, "--source-opt", f"factory={models}",
                            "-i", "input:float32:batch,1,8,8"], "file.py:function"),
        "state_dict_misfit": ([*CNN_ARGS, "-m", mlp_pt], "does not fit the model"),
        "spec_channels": (["--framework", "torch", "-m", cnn_pt, "--source-opt", f"factory={models}:digits_cnn",
                           "-i", "input:float32:batch,3,8,8"], "does not fit the model"),
        "spec_count": ([*CNN_ARGS, "-m", cnn_pt, "-i", "mask:float32:batch,8"], "does not fit the model"),
        "spec_dynamic": (["--framework", "torch", "--source-opt", f"factory={tmp_path}/pairs.py:pairs",
                          "-i", "x:float32:batch,8"], "marks dims dynamic that the model fixes"),
        "spec_missing": (["--framework", "torch", "-m", cnn_pt, "--source-opt", f"factory={models}:digits_cnn"],
                         "needs the input spec"),
    }[case]
    (tmp_path / "pairs.py").write_text(FIXED_BATCH)
    out = tmp_path / "out.onnx"
    line = assert_one_line_error(run_cli("convert", *args, "-o", out))
    assert expect in line, line
    assert " — " in line  # the problem, then the fix
    assert not out.exists() and not list(tmp_path.glob(".*onnx*"))


def test_run_config_with_misfit_weights_is_exit_2(tmp_path):
    """The same error through `onnxforge run`: a YAML whose factory path is relative to the YAML file."""
    cfg = tmp_path / "bad.yaml"
    shutil.copy(FIXTURES / "torch/digits_mlp.pt", tmp_path / "weights.pt")
    cfg.write_text(f"""name: bad
source: {{framework: torch, factory: {FIXTURES / 'torch_models.py'}:digits_cnn, path: weights.pt, trust_code: true}}
inputs: [{{name: input, shape: [batch, 1, 8, 8]}}]
data: {{path: {TEST}}}
stages: {{convert: {{}}, validate: {{}}}}
""")
    line = assert_one_line_error(run_cli("run", cfg, cwd=tmp_path))
    assert "weights.pt does not fit" in line and "missing" in line and "unexpected" in line
    assert not (tmp_path / "runs/bad/01-convert/model.onnx").exists()

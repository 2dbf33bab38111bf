"""The admission gate (issue #12 part 1): every model a command reads is parsed, fully checked, has initializers
whose data fits their dims, keeps its external data inside its own folder, and loads in onnxruntime — or the command
exits 2 with one line naming the file and the reason, writes nothing and leaves the input as it was.

Each broken model is crafted here from a valid tiny one (tests/onnx_models.linear), broken in one way."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_models import linear, save

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"


def _edit(fn: Callable[[onnx.ModelProto], None]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        m = linear()
        fn(m)
        return save(m, d / "m.onnx")
    return make


def _dangling(m):
    m.graph.node[0].input[0] = "nowhere"


def _unknown_op(m):
    m.graph.node[1].op_type = "FrobnicateX"


def _opset(m):
    m.opset_import[0].version = 999


def _ir(m):
    m.ir_version = 99


def _dup_outputs(m):
    m.graph.output[1].name = "y"


def _dup_node_outputs(m):  # ArgMax writes 'y' too: not single static assignment
    m.graph.node[2].output[0] = "y"
    m.graph.output.pop()


def _no_outputs(m):
    del m.graph.output[:]


def _short_raw(m):
    w = m.graph.initializer[0]
    w.raw_data = w.raw_data[:8]


def _long_raw(m):  # onnx.checker accepts too much data; onnxruntime does not
    w = m.graph.initializer[0]
    w.raw_data = w.raw_data + bytes(8)


def _dims_bigger(m):  # the reviewer's `cannot reshape array of size 12 into shape (16, 3)`
    m.graph.initializer[0].dims[:] = [16, 3]


def _short_typed(m):
    w = m.graph.initializer[0]
    vals = nh.to_array(w).ravel()[:5]
    w.ClearField("raw_data")
    w.float_data.extend(vals.tolist())


def _cycle(m):
    m.graph.node[0].input[0] = "y"  # MatMul reads Add's output, Add reads MatMul's


def _custom_domain(m):  # onnx.checker does not know the domain; onnxruntime has no kernel for it
    m.graph.node[1].domain = "com.example"
    m.opset_import.append(h.make_opsetid("com.example", 1))


def _garbage(d: Path) -> Path:
    p = d / "m.onnx"
    p.write_bytes(b"\x00not a model\xff" * 10)
    return p


def _external(location: str, setup: Callable[[Path], None] | None = None, length: int | None = None):
    """linear() with its weights in m.onnx.data, then the location (and length) rewritten."""
    def make(d: Path) -> Path:
        p = d / "m.onnx"
        onnx.save(linear(), str(p), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
        m = onnx.load(str(p), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
                elif e.key == "length" and length is not None:
                    e.value = str(length)
        if setup:
            setup(d)
        onnx.save(m, str(p))
        return p
    return make


def _outside(d: Path) -> Path:
    """A weights file outside the model's folder (a copy of its own)."""
    out = d.parent / "elsewhere"
    out.mkdir(exist_ok=True)
    shutil.copyfile(d / "m.onnx.data", out / "w.data")
    return out / "w.data"


def _symlink_out(d: Path) -> None:
    os.symlink(_outside(d), d / "link.data")


# case → (how to make it, words the one-line error must contain besides the file name)
CASES = {
    "not-protobuf": (_garbage, ["not a readable ONNX model"]),
    "dangling-input": (_edit(_dangling), ["nowhere"]),
    "unknown-op": (_edit(_unknown_op), ["FrobnicateX"]),
    "opset-999": (_edit(_opset), ["999"]),
    "ir-version-99": (_edit(_ir), ["99"]),
    "duplicate-output-names": (_edit(_dup_outputs), ["'y'"]),
    "duplicate-node-outputs": (_edit(_dup_node_outputs), ["'y'"]),
    "no-outputs": (_edit(_no_outputs), ["no outputs"]),
    "short-raw-data": (_edit(_short_raw), ["'W'", "8 bytes"]),
    "long-raw-data": (_edit(_long_raw), ["'W'", "56 bytes"]),
    "dims-bigger-than-data": (_edit(_dims_bigger), ["'W'", "[16, 3]"]),
    "short-typed-data": (_edit(_short_typed), ["'W'", "5 values"]),
    "cycle": (_edit(_cycle), ["topologically"]),
    "custom-domain-op": (_edit(_custom_domain), ["onnxruntime", "com.example"]),
    "external-missing": (_external("gone.data"), ["gone.data"]),
    "external-absolute": (_external("/etc/hostname"), ["absolute"]),
    "external-dotdot": (_external("../elsewhere/w.data", setup=_outside), ["outside"]),
    "external-symlink-out": (_external("link.data", setup=_symlink_out), ["link.data", "symbolic link"]),
    "external-length-past-end": (_external("m.onnx.data", length=10**6), ["'W'", "1000000"]),
}

ORT_ONLY = {"custom-domain-op"}  # refused by onnxruntime alone: valid ONNX, no kernel

COMMANDS = {
    "inspect": lambda m, out: ["inspect", m],
    "validate": lambda m, out: ["validate", m, "--synthetic"],
    "optimize": lambda m, out: ["optimize", m, "-o", out, "--synthetic"],
    "quantize": lambda m, out: ["quantize", m, "-o", out, "--mode", "dynamic"],
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_is_refused_with_one_line(tmp_path, case, command):
    make, words = CASES[case]
    d = tmp_path / "model"
    d.mkdir()
    model = make(d)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.onnx"
    before = _snapshot(tmp_path)
    res = run_cli(*COMMANDS[command](model, out), cwd=work, timeout=300)
    if command == "inspect" and case in ORT_ONLY:
        # inspect skips the gate's onnxruntime step (it imports no onnxruntime): a model valid ONNX but for
        # another runtime is described, not refused
        assert res.code == 0, res.stderr
        assert _snapshot(tmp_path) == before
        return
    line = assert_one_line_error(res, 2)
    assert "m.onnx" in line, line
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    assert " — " in line, line  # the fix follows the problem
    assert not out.exists()
    assert _snapshot(tmp_path) == before  # input byte-identical, nothing written anywhere


# ------------------------------------------------------------------ what must still be admitted


def test_valid_model_and_external_data_inside_the_folder_are_admitted(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    inline = save(linear(), d / "inline.onnx")
    onnx.save(linear(), str(d / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    for m in (inline, d / "ext.onnx"):
        assert run_cli("inspect", m, "--json").code == 0
        res = run_cli("validate", m, "--synthetic", cwd=tmp_path)
        assert res.code == 0, res.stderr
    out = tmp_path / "q.onnx"
    res = run_cli("quantize", d / "ext.onnx", "-o", out, "--mode", "dynamic", "--set", "allow_slower=true",
                  cwd=tmp_path)
    assert res.code == 0, res.stderr


@pytest.mark.skipif(not (LIGHT / "light_squeezenet.onnx").is_file(), reason="onnx wheel without backend test data")
def test_ir3_zoo_model_is_admitted(tmp_path):
    """A real third-party IR-3 / opset-9 model whose initializers are also graph inputs is valid ONNX."""
    src = LIGHT / "light_squeezenet.onnx"
    m = onnx.load(str(src), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    assert m.ir_version == 3 and inits & {i.name for i in m.graph.input}  # it really is the IR-3 shape
    model = shutil.copyfile(src, tmp_path / "squeezenet.onnx")
    res = run_cli("inspect", model, "--json")
    assert res.code == 0, res.stderr
    assert res.json()["result"]["ir_version"] == 3
    res = run_cli("validate", model, "--synthetic", "--set", "max_rows=2", cwd=tmp_path)
    assert res.code == 0, res.stderr


# ------------------------------------------------------------------ data and references that do not fit the model


def _int16_model() -> onnx.ModelProto:
    """x: int16 [batch, 4] → Cast → the linear model's MatMul/Add."""
    m = linear()
    m.graph.input[0].type.tensor_type.elem_type = T.INT16
    m.graph.node[0].input[0] = "xf"
    m.graph.node.insert(0, h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT))
    return m


@pytest.mark.parametrize("change, words", [
    ("name", ["'x'", "'z'"]),
    ("dtype", ["'x'", "float64"]),
    ("rank", ["'x'", "rank"]),
    ("dim", ["'x'", "5"]),
])
def test_validate_against_reference_with_other_inputs_exit_2(tmp_path, change, words):
    save(linear(), tmp_path / "a.onnx")
    ref = linear()
    x = ref.graph.input[0]
    if change == "name":
        x.name = "z"
        ref.graph.node[0].input[0] = "z"
    elif change == "dtype":
        x.type.tensor_type.elem_type = T.DOUBLE
        ref.graph.node[0].input[0] = "xf"
        ref.graph.node.insert(0, h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT))
    elif change == "rank":
        x.type.tensor_type.shape.dim.add().dim_value = 1
        ref.graph.node[0].input[0] = "x2"
        ref.graph.initializer.append(nh.from_array(np.array([-1, 4], dtype=np.int64), "shp"))
        ref.graph.node.insert(0, h.make_node("Reshape", ["x", "shp"], ["x2"]))
    else:
        x.type.tensor_type.shape.dim[1].dim_value = 5
        ref.graph.initializer[0].CopyFrom(nh.from_array(np.ones((5, 3), np.float32), "W"))
    save(ref, tmp_path / "b.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    line = assert_one_line_error(run_cli("validate", tmp_path / "a.onnx", "--against", tmp_path / "b.onnx",
                                         "--data", data, cwd=tmp_path))
    assert "b.onnx" in line, line
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_static_quantize_calibration_data_that_does_not_fit_exit_2(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "shape":
        model = save(linear(), tmp_path / "m.onnx")
        x = rng.normal(size=(40, 5)).astype(np.float32)
    else:
        model = save(_int16_model(), tmp_path / "m.onnx")
        x = rng.normal(size=(40, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "q.onnx"
    line = assert_one_line_error(run_cli("quantize", model, "-o", out, "--mode", "static", "--data",
                                         tmp_path / "calib.npz", cwd=tmp_path))
    assert "'x'" in line and ("5" in line if kind == "shape" else "int16" in line), line
    assert not out.exists()


def test_validate_data_that_does_not_fit_exit_2(tmp_path):
    model = save(linear(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((10, 5), np.float32))
    line = assert_one_line_error(run_cli("validate", model, "--data", tmp_path / "d.npz", cwd=tmp_path))
    assert "'x'" in line and "5" in line, line


def test_feeds_and_reference_checks_accept_what_fits():
    """In process: what fits is let through — rows on the batch axis, IR-3 initializer inputs left out (they are
    optional), dim_value 0 read as unknown, a reference that only adds optional inputs."""
    from onnxforge.admission import check_feeds, same_inputs

    m = linear()
    check_feeds({"x": np.ones((7, 4), np.float32)}, m, what="the data", model_name="m.onnx")
    ir3 = linear()
    ir3.graph.input.append(h.make_tensor_value_info("W", T.FLOAT, [4, 3]))  # initializer listed as an input
    ir3.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 0
    check_feeds({"x": np.ones((2, 9), np.float32)}, ir3, what="the data", model_name="m.onnx")
    same_inputs(m, ir3, model_name="m.onnx", ref_name="ir3.onnx")
    with pytest.raises(Exception, match="'x'.*int64"):
        check_feeds({"x": np.ones((7, 4), np.int64)}, m, what="the data", model_name="m.onnx")
    with pytest.raises(Exception, match="does not take"):
        check_feeds({"x": np.ones((7, 4), np.float32), "q": np.ones(7)}, m, what="the data", model_name="m.onnx")


def test_fixed_batch_model_runs_in_whole_batches(tmp_path):
    """A model whose inputs pin the batch dim ([3, 4]) is evaluated and calibrated 3 rows at a time; a row count
    that is no multiple of 3 is bad data (exit 2), never onnxruntime's INVALID_ARGUMENT (exit 3)."""
    m = linear()
    for v in (*m.graph.input, *m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 3
    model = save(m, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for rows in (42, 40):
        np.savez(tmp_path / "d.npz", x=rng.normal(size=(rows, 4)).astype(np.float32))
        res = run_cli("quantize", model, "-o", tmp_path / "q.onnx", "--mode", "static", "--data", tmp_path / "d.npz",
                      "--set", "allow_slower=true", cwd=tmp_path)
        if rows == 42:
            assert res.code == 0, res.stderr
        else:
            assert "multiple of 3" in assert_one_line_error(res)

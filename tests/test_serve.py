"""onnxforge.score.Predictor: the bound-buffer fast path returns what InferenceSession.run returns, across batch
sizes, dtypes, repeated shapes and outputs whose shape depends on the data; bad calls are one-line user errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_models import linear

from onnxforge.errors import UserError
from onnxforge.score.predictor import Predictor, _Bound


def _ref(model: onnx.ModelProto, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def test_bound_calls_equal_session_run_across_shapes(tmp_path):
    model = linear()
    path = tmp_path / "linear.onnx"
    onnx.save(model, str(path))
    pred = Predictor(path)
    rng = np.random.default_rng(0)
    for rows in (1, 5, 1, 5, 3, 1):  # first sight of a shape binds it, later calls reuse the buffers
        x = rng.normal(size=(rows, 4))  # float64 in: cast to the model's float32
        got, want = pred(x=x), _ref(model, {"x": x.astype(np.float32)})
        assert set(got) == {"y", "label"}
        np.testing.assert_array_equal(got["y"], want["y"])
        np.testing.assert_array_equal(got["label"], want["label"])
        assert got["y"].dtype == np.float32 and got["label"].dtype == np.int64
    assert len(pred._bound) == 3


def test_copy_false_reuses_buffers_and_copy_true_does_not(tmp_path):
    pred = Predictor(linear())
    x = np.ones((2, 4), np.float32)
    pred(x=x)
    a = pred(x=x, copy=False)["y"]
    b = pred(x=2 * x, copy=False)["y"]
    assert a is b  # the bound output buffer, overwritten by the second call
    np.testing.assert_array_equal(b, _ref(linear(), {"x": 2 * x})["y"])
    c = pred({"x": x})["y"]
    pred(x=3 * x)
    np.testing.assert_array_equal(c, _ref(linear(), {"x": x})["y"])  # a copy: later calls leave it alone


def test_data_dependent_output_shape_falls_back_to_run():
    g = h.make_graph([h.make_node("NonZero", ["x"], ["nz"])], "nz", [h.make_tensor_value_info("x", T.FLOAT, [4])],
                     [h.make_tensor_value_info("nz", T.INT64, [1, "n"])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    pred = Predictor(model)
    for x in ([0, 1, 0, 2], [1, 1, 1, 0], [0, 0, 0, 0], [3, 0, 0, 0]):
        x = np.asarray(x, np.float32)
        np.testing.assert_array_equal(pred(x=x)["nz"], _ref(model, {"x": x})["nz"])


def test_bad_calls_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Predictor(tmp_path / "missing.onnx")
    pred = Predictor(linear())
    with pytest.raises(UserError, match="missing \\['x'\\], unknown \\['X'\\]"):
        pred(X=np.ones((1, 4), np.float32))


def test_bound_call_writes_outputs_in_place():
    model = linear()
    pred = Predictor(model)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    call = pred.bind(x=np.zeros((3, 4), np.float32))
    y = call.outputs["y"]
    for scale in (1.0, -2.0, 0.5):
        call.inputs["x"][...] = scale * x
        call()
        assert call.outputs["y"] is y  # the same buffer, rewritten
        want = _ref(model, {"x": scale * x})
        np.testing.assert_array_equal(y, want["y"])
        np.testing.assert_array_equal(call.outputs["label"], want["label"])


def test_bound_call_refuses_strings_and_data_dependent_shapes():
    g = h.make_graph([h.make_node("Identity", ["s"], ["t"])], "s", [h.make_tensor_value_info("s", T.STRING, [1])],
                     [h.make_tensor_value_info("t", T.STRING, [1])])
    with pytest.raises(UserError, match="not numeric"):
        Predictor(h.make_model(g, opset_imports=[h.make_opsetid("", 17)])).bind(s=np.array(["a"]))
    g = h.make_graph([h.make_node("NonZero", ["x"], ["nz"])], "nz", [h.make_tensor_value_info("x", T.FLOAT, [4])],
                     [h.make_tensor_value_info("nz", T.INT64, [1, "n"])])
    call = Predictor(h.make_model(g, opset_imports=[h.make_opsetid("", 17)])).bind(x=np.ones(4, np.float32))
    call.inputs["x"][...] = [0, 1, 0, 0]
    with pytest.raises(UserError, match="shape depends on the data"):
        call()


def test_model_errors_are_user_errors_and_keep_the_binding():
    """An input the model itself refuses (index out of range) is a one-line UserError; the shape stays bound."""
    g = h.make_graph([h.make_node("Gather", ["table", "i"], ["y"], axis=0)], "g",
                     [h.make_tensor_value_info("i", T.INT64, ["n"])], [h.make_tensor_value_info("y", T.FLOAT, ["n"])],
                     [onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "table")])
    pred = Predictor(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    np.testing.assert_array_equal(pred(i=[0, 2])["y"], [0.0, 2.0])
    with pytest.raises(UserError, match="refused these inputs"):
        pred(i=[0, 7])
    assert isinstance(pred._bound[((2,),)], _Bound)  # still bound, not demoted to session.run
    np.testing.assert_array_equal(pred(i=[2, 1])["y"], [2.0, 1.0])

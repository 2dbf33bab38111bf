"""Security of onnxforge.score.Predictor (issue #20, part 6): concurrent calls never see each other's values; inputs
are validated strictly against the model's declared dtypes and shapes (no silent cross-kind or lossy casts); size
caps refuse oversized calls; errors are one line and never carry onnxruntime's text (node names, paths)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from onnxforge.errors import UserError
from onnxforge.score import Predictor


def _model(dtype=T.FLOAT, shape=("batch", 3)) -> onnx.ModelProto:
    """y = x * 2 + 1 (floats) or Identity (other dtypes)."""
    x = h.make_tensor_value_info("x", dtype, list(shape))
    y = h.make_tensor_value_info("y", dtype, list(shape))
    if dtype in (T.FLOAT, T.DOUBLE):
        two, one = (h.make_tensor(n, dtype, [], [v]) for n, v in (("two", 2.0), ("one", 1.0)))
        nodes = [h.make_node("Mul", ["x", "two"], ["x2"], name="secret_mul_node"),
                 h.make_node("Add", ["x2", "one"], ["y"], name="secret_add_node")]
        g = h.make_graph(nodes, "g", [x], [y], [two, one])
    else:
        g = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _hammer(call, threads: int, calls: int) -> int:
    """threads × calls requests, each with its own values; how many responses held another request's answer."""
    wrong = [0] * threads
    start = threading.Barrier(threads)

    def worker(t: int) -> None:
        start.wait()
        for i in range(calls):
            rows = 1 + (i % 2)  # two shapes, both bound: every thread shares them on the old code
            x = np.full((rows, 3), t * calls + i, np.float32) + np.arange(3, dtype=np.float32)
            y = call(x)
            if not np.array_equal(y, x * 2 + 1):
                wrong[t] += 1

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(wrong)


def test_concurrent_calls_each_get_their_own_answer():
    pred = Predictor(_model())
    assert _hammer(lambda x: pred(x=x)["y"], threads=4, calls=2000) == 0


def test_concurrent_copy_false_results_stay_per_thread():
    """copy=False hands back bound buffers; they are per thread, so another thread's call never overwrites them."""
    pred = Predictor(_model())
    assert _hammer(lambda x: pred(x=x, copy=False)["y"], threads=4, calls=1000) == 0


def test_bound_call_refuses_another_thread():
    pred = Predictor(_model())
    call = pred.bind(x=np.zeros((1, 3), np.float32))
    errors = []

    def other() -> None:
        try:
            call()
        except UserError as e:
            errors.append(str(e))

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert len(errors) == 1 and "thread" in errors[0] and "\n" not in errors[0]
    call.inputs["x"][...] = 1.0
    call()  # its own thread still works
    np.testing.assert_array_equal(call.outputs["y"], np.full((1, 3), 3.0, np.float32))


@pytest.mark.parametrize(("dtype", "value", "why"), [
    (T.BOOL, np.array(["false"]), "strings"),               # "false" was True
    (T.BOOL, ["false"], "strings"),
    (T.BOOL, np.array([1]), "bool"),                        # bool only from bools
    (T.BOOL, np.array([0.0]), "bool"),
    (T.INT64, np.array([1.9]), "fractional"),               # 1.9 was 1
    (T.INT64, [1.5, 2.0], "fractional"),
    (T.INT64, np.array([np.nan]), "finite"),
    (T.INT64, np.array([2.0**63]), "range"),
    (T.INT64, np.array([2**64 - 1], np.uint64), "range"),
    (T.INT64, np.array([True]), "bool"),
    (T.UINT8, np.array([300]), "range"),                    # 300 was 44
    (T.UINT8, np.array([-1]), "range"),
    (T.INT32, np.array([2**31]), "range"),
    (T.INT8, [128], "range"),
    (T.FLOAT, np.array([1e40]), "overflow"),                # 1e40 was inf
    (T.FLOAT, np.array([-1e39]), "overflow"),
    (T.FLOAT, np.array(["1e5"]), "strings"),                # the string "1e5" was 100000.0
    (T.FLOAT, "1e5", "strings"),
    (T.FLOAT, np.array([b"1"]), "strings"),
    (T.FLOAT, np.array([True]), "bool"),
    (T.FLOAT, np.array([1 + 2j]), "complex"),
    (T.FLOAT, np.array([object()], dtype=object), "objects"),
    (T.FLOAT, [1, "2"], "strings"),
    (T.FLOAT16, np.array([70000.0]), "overflow"),
    (T.FLOAT16, np.array([70000]), "overflow"),
    (T.INT16, [40000], "range"),                            # a dtype onnxforge.data does not read: onnx's table
    (T.STRING, np.array([1, 2]), "strings"),                # numbers never become category levels
    (T.STRING, np.array(["a", 1], dtype=object), "strings"),
    (T.STRING, np.array([b"a"]), "str"),
])
def test_coercions_are_refused(dtype, value, why):
    pred = Predictor(_model(dtype, ["n"]))
    with pytest.raises(UserError, match=why) as e:
        pred(x=value)
    msg = str(e.value)
    assert "'x'" in msg and " — " in msg and "\n" not in msg


@pytest.mark.parametrize(("dtype", "value", "want"), [
    (T.FLOAT, np.array([1, -7]), np.array([3.0, -13.0], np.float32)),                  # int → float
    (T.FLOAT, [0.5, 2], np.array([2.0, 5.0], np.float32)),                              # Python numbers
    (T.FLOAT, np.array([0.1, 1e38]), np.array([0.1, 1e38], np.float32) * 2 + 1),       # float64 → float32
    (T.FLOAT, np.array([np.nan, -np.inf]), np.array([np.nan, -np.inf], np.float32)),   # non-finite stays as given
    (T.FLOAT, np.full(6, 1.5e38), np.full(6, 1.5e38, np.float32) * 2 + 1),            # large, still in range
    (T.DOUBLE, np.array([0.25], np.float32), np.array([1.5])),                         # float32 → float64
    (T.INT16, [300, -2], np.array([300, -2], np.int16)),
    (T.INT32, np.array([2**31 - 1, -(2**31)], np.int64), np.array([2**31 - 1, -(2**31)], np.int32)),
    (T.INT64, np.array([3.0, -2.0]), np.array([3, -2], np.int64)),                     # integral floats
    (T.INT64, np.array([7], np.uint8), np.array([7], np.int64)),
    (T.UINT8, [0, 255], np.array([0, 255], np.uint8)),
    (T.BOOL, [True, False], np.array([True, False])),
    (T.STRING, ["a", "b"], np.array(["a", "b"], dtype=object)),
    (T.STRING, np.array(["a", "b"], dtype=object), np.array(["a", "b"], dtype=object)),
])
def test_safe_widening_still_works(dtype, value, want):
    got = Predictor(_model(dtype, ["n"]))(x=value)["y"]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_shapes_are_checked_against_the_declared_input():
    pred = Predictor(_model())  # x: [batch, 3]
    for bad in (np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros((1, 1, 3), np.float32)):
        with pytest.raises(UserError, match=r"'x'.*\[batch, 3\]"):
            pred(x=bad)
    with pytest.raises(UserError, match="ragged"):
        pred(x=[[1, 2, 3], [1, 2]])
    two = h.make_graph([h.make_node("Add", ["a", "b"], ["c"])], "g",
                       [h.make_tensor_value_info("a", T.FLOAT, ["batch", 2]),
                        h.make_tensor_value_info("b", T.FLOAT, ["batch", 2])],
                       [h.make_tensor_value_info("c", T.FLOAT, ["batch", 2])])
    pred = Predictor(h.make_model(two, opset_imports=[h.make_opsetid("", 17)]))
    with pytest.raises(UserError, match="batch"):  # one symbolic dim, two sizes
        pred(a=np.zeros((2, 2), np.float32), b=np.zeros((3, 2), np.float32))


def test_caps_refuse_oversized_calls():
    pred = Predictor(_model(), max_rows=10, max_bytes=1000)
    pred(x=np.zeros((10, 3), np.float32))
    with pytest.raises(UserError, match="max_rows"):
        pred(x=np.zeros((11, 3), np.float32))
    with pytest.raises(UserError, match="max_rows"):  # refused before a huge list is converted
        pred(x=[[0.0, 0.0, 0.0]] * 11)
    with pytest.raises(UserError, match="max_rows"):
        pred.bind(x=np.zeros((11, 3), np.float32))
    wide = Predictor(_model(shape=("batch", "k")), max_bytes=1000)
    with pytest.raises(UserError, match="max_bytes"):
        wide(x=np.zeros((1, 251), np.float32))
    strings = Predictor(_model(T.STRING, ["n"]), max_string_length=8)
    strings(x=["12345678"])
    for bad in (["123456789"], np.array(["a", "123456789"], dtype=object)):
        with pytest.raises(UserError, match="max_string_length"):
            strings(x=bad)
    with pytest.raises(UserError, match="max_bytes"):
        Predictor(_model(T.STRING, ["n"]), max_bytes=100)(x=["abcd"] * 30)
    Predictor(_model(), max_rows=0, max_bytes=None)(x=np.zeros((200_000, 3), np.float32))  # caps lifted
    for bad in ({"max_rows": -1}, {"max_bytes": 1.5}, {"max_shapes": 0}):
        with pytest.raises(UserError, match="positive int"):
            Predictor(_model(), **bad)


def test_model_errors_do_not_leak_internals(tmp_path):
    """onnxruntime's own error text names nodes and files; the caller sees one line without them."""
    g = h.make_graph([h.make_node("Gather", ["secret_table", "i"], ["y"], axis=0, name="secret_gather_node")], "g",
                     [h.make_tensor_value_info("i", T.INT64, ["n"])], [h.make_tensor_value_info("y", T.FLOAT, ["n"])],
                     [onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "secret_table")])
    path = tmp_path / "secret_dir" / "model.onnx"
    path.parent.mkdir()
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    pred = Predictor(path)
    np.testing.assert_array_equal(pred(i=[0, 2])["y"], [0.0, 2.0])
    for i in ([0, 7], [9]):  # a bound shape and a new one
        with pytest.raises(UserError) as e:
            pred(i=i)
        msg = str(e.value)
        assert "secret" not in msg and "Gather" not in msg and "\n" not in msg and " — " in msg
    call = pred.bind(i=[0, 1])
    call.inputs["i"][...] = [5, 1]
    with pytest.raises(UserError) as e:
        call()
    assert "secret" not in str(e.value) and "Gather" not in str(e.value)
    np.testing.assert_array_equal(pred(i=[2, 1])["y"], [2.0, 1.0])
    bad = tmp_path / "secret_dir" / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError) as e:
        Predictor(bad)
    assert "secret" not in str(e.value) and "inspect" in str(e.value)


def test_unknown_input_names_are_bounded_in_the_message():
    pred = Predictor(_model())
    with pytest.raises(UserError) as e:
        pred({f"k{i}\nline": 1 for i in range(1000)})
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    with pytest.raises(UserError, match="dict or keywords"):
        pred(np.zeros((1, 3), np.float32))


def test_check_runs_a_calls_validation_without_running():
    """Predictor.check: what a call would take (coerced arrays in input order) or the call's own one-line refusal —
    the public check serve applies to each request before batching."""
    pred = Predictor(_model(T.INT64), max_rows=4)
    (a,) = pred.check(x=[[1, 2, 3]])
    assert a.dtype == np.int64 and a.shape == (1, 3)
    for bad, words in (({"x": np.zeros((1, 4), np.int64)}, r"shape \[1, 4\]"), ({"x": [[1.5, 2, 3]]}, "'x'"),
                       ({"y": np.zeros((1, 3), np.int64)}, r"missing \['x'\]"),
                       ({"x": np.zeros((5, 3), np.int64)}, "max_rows=4")):
        with pytest.raises(UserError, match=words) as e:
            pred.check(bad)
        assert "\n" not in str(e.value)

"""Copies of corpus models with a feature no shipped model has; each transformation is one function."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper


def _save(model: onnx.ModelProto, dest: Path, external: bool = False) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dest.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(dest))
    onnx.checker.check_model(str(dest), full_check=True)
    return dest


def freeze(src: Path, testdata: Path, names: list[str], dest: Path) -> Path:
    """Graph inputs `names` become initializers holding test_data_set_0's values for them (the onnx node tests
    pass LSTM/GRU weights as inputs; a real model stores them). The remaining inputs' .pb files are renumbered so
    test_data_set_0 still matches the graph; the reference outputs are unchanged."""
    m = onnx.load(str(src))
    inputs = list(m.graph.input)
    files = sorted(testdata.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    keep = []
    for vi, f in zip(inputs, files, strict=True):
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        if vi.name in names:
            m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t), vi.name))
            f.unlink()
        else:
            keep.append((vi, f))
    del m.graph.input[:]
    for j, (vi, f) in enumerate(keep):
        m.graph.input.append(vi)
        f.rename(testdata / f"input_{j}.pb.tmp")
    for f in testdata.glob("input_*.pb.tmp"):
        f.rename(f.with_suffix(""))
    return _save(m, dest)


def fp16(src: Path, dest: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return _save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), dest)


def external_data(src: Path, dest: Path) -> Path:
    return _save(onnx.load(str(src)), dest, external=True)


def opset21(src: Path, dest: Path) -> Path:
    from onnx import version_converter

    m = version_converter.convert_version(onnx.load(str(src)), 21)
    m.ir_version = max(m.ir_version, 10)  # opset 21 came with IR 10; the converter leaves the IR as it was
    return _save(m, dest)


def apply(kind: str, src: Path, dest: Path, entry: dict, testdata: Path | None) -> Path:
    if kind == "freeze":
        return freeze(src, testdata, entry["freeze"], dest)
    return {"fp16": fp16, "external_data": external_data, "opset21": opset21}[kind](src, dest)

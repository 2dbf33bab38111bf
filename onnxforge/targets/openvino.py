"""OpenVINO IR (model.xml + model.bin) from the ONNX artifact with the `openvino` package: convert_model reads the
ONNX file, save_model writes the IR — weights as stored (FP32), compressed to FP16 (compress_to_fp16), or INT8
weight-only through NNCF's compress_weights (activations stay float, like our weight-only INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.targets import register_target


class OpenVINOOptions(StrictModel):
    weights: Literal["fp32", "fp16", "int8"] = Field("fp32", description="how the IR stores the weights: as the "
                                                     "ONNX model does, FP16 (half the file; OpenVINO's CPU plugin "
                                                     "computes in FP32 or its own inference precision), or INT8 "
                                                     "weight-only (NNCF compress_weights, needs onnxforge[openvino])")
    device: str = Field("CPU", description="OpenVINO device for the check and the timing (CPU, GPU, NPU, AUTO)")
    inference_precision: Literal["auto", "f32"] = Field(
        "f32", description="CPU plugin INFERENCE_PRECISION_HINT: f32 (compared with ORT's fp32 at the usual "
                           "tolerances) or auto (bf16/fp16 where the CPU has it: faster, looser)")


def _need():
    from onnxforge.errors import UserError

    try:
        import openvino
    except ImportError:
        raise UserError("the openvino target needs the openvino package — pip install 'onnxforge[openvino]'") from None
    return openvino


def load(out: Path, opts: OpenVINOOptions, threads: int | None = None):
    """A compiled OpenVINO model on `opts.device`; returns feeds → {output name: array}."""
    ov = _need()
    core = ov.Core()
    config = {}
    if opts.device == "CPU":
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if opts.inference_precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(str(Path(out) / "model.xml"), opts.device, config)
    names = [next(iter(o.get_names())) for o in compiled.outputs]
    req = compiled.create_infer_request()

    def run(feeds):
        res = req.infer(dict(feeds))
        return {n: res[o].copy() for n, o in zip(names, compiled.outputs, strict=True)}

    run.threads = compiled.get_property("INFERENCE_NUM_THREADS") if opts.device == "CPU" else None
    return run


@register_target("openvino", OpenVINOOptions, load=load, package="onnxforge[openvino]",
                 help="OpenVINO IR (xml + bin), FP32/FP16/INT8 weights")
def build(onnx_path: Path, out: Path, opts: OpenVINOOptions) -> dict:
    ov = _need()
    model = ov.convert_model(str(onnx_path))
    info = {"openvino": ov.__version__, "weights": opts.weights}
    if opts.weights == "int8":
        try:
            import nncf
        except ImportError:
            from onnxforge.errors import UserError

            raise UserError("openvino weights: int8 needs NNCF — pip install 'onnxforge[openvino]'") from None
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        info["nncf"] = nncf.__version__
    xml = Path(out) / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=opts.weights == "fp16")
    info["files"] = [xml, xml.with_suffix(".bin")]
    return info

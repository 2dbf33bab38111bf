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


def _unconverted(err: Exception, onnx_path: Path) -> list[str]:
    """The ops an OpConversionFailure names ('-- No conversion rule found for operations: a, b' and '-- Conversion
    is failed for: ...' lines); failing that, the model's ops outside the default domain (the usual cause)."""
    import re

    ops: list[str] = []
    for line in str(err).splitlines():
        m = re.match(r"\s*-- (?:No conversion rule found for operations|Conversion is failed for)\s*:?\s*(.*)", line)
        if m:
            ops += [o for o in re.split(r"[,\s]+", m.group(1)) if o and o not in ops]
    if not ops:
        import onnx

        g = onnx.load(str(onnx_path), load_external_data=False).graph
        ops = sorted({f"{n.domain}.{n.op_type}" for n in g.node if n.domain not in ("", "ai.onnx")})
    return ops


@register_target("openvino", OpenVINOOptions, load=load, package="onnxforge[openvino]",
                 help="OpenVINO IR (xml + bin), FP32/FP16/INT8 weights", files=("model.xml", "model.bin"))
def build(onnx_path: Path, out: Path, opts: OpenVINOOptions) -> dict:
    ov = _need()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:
        # an op OpenVINO has no conversion for (every ai.onnx.ml op: all scikit-learn artifacts) is a property of
        # the user's model, not a bug: name the ops and a target that runs them
        if type(e).__name__ != "OpConversionFailure":
            raise
        from onnxforge.errors import UserError

        ops = _unconverted(e, onnx_path)
        ml = ", or convert the model without ai.onnx.ml ops" if any(o.startswith("ai.onnx.ml.") for o in ops) else ""
        them = "it" if len(ops) == 1 else "them"
        what = ", ".join(ops[:5]) + (f" (+{len(ops) - 5} more)" if len(ops) > 5 else "") if ops else "some ops"
        raise UserError(f"openvino {ov.__version__.split('-')[0]} cannot convert {what} in {Path(onnx_path).name} "
                        f"— use target ort-mobile (onnxruntime runs {them}), keep the .onnx for onnxruntime"
                        f"{ml}") from None
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

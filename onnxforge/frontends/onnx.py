"""An existing .onnx file as a source: checked, shape-inferred, stamped, and used as its own reference."""

from __future__ import annotations

from typing import Literal

from onnxforge.config import SourceBase
from onnxforge.frontends.base import Frontend
from onnxforge.registry import register_frontend


class OnnxSource(SourceBase):
    framework: Literal["onnx"]


@register_frontend
class OnnxFrontend(Frontend):
    name = "onnx"
    Source = OnnxSource
    packages = ("onnx", "onnxruntime")
    wanted = "the .onnx file"
    # ORT's optimized kernels differ from the unoptimized reference by ~1e-6 on conv models (measured, bench/out/
    # tolerances.md: 5.7e-6 abs on the digits CNN's logits, 0 on the MLP)
    rtol = 1e-4
    atol = 1e-5

    def load(self, cfg):
        from onnxforge.admission import admit
        from onnxforge.errors import UserError

        if cfg.source.path is None:
            raise UserError("source.path is required for framework 'onnx' — point it at the .onnx file")
        return admit(cfg.source.path, what="source model").model

    def export(self, native, cfg, opset, workdir):
        import onnx

        from onnxforge.errors import UserError

        model = onnx.ModelProto()
        model.CopyFrom(native)
        if opset is not None:
            current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
            if current != opset:
                try:
                    model = onnx.version_converter.convert_version(model, opset)
                except Exception as e:
                    raise UserError(f"cannot convert the model from opset {current} to {opset} ({e}) — "
                                    "drop convert.opset or choose another") from None
        try:
            model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
        except Exception:
            pass  # shape inference is a help, not a requirement, for a model from anywhere
        return model

    def predict(self, native, feeds, cfg):
        from onnxforge import runtime

        # the reference is the user's own file, run without graph optimizations
        sess = runtime.session(native, level="disable")
        return runtime.run(sess, feeds)

"""ONNX Runtime mobile: the .ort (flatbuffer) model and the required-operators config a reduced onnxruntime build
takes (--include_ops_by_config), both written by onnxruntime's own convert_onnx_models_to_ort."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from onnxforge.config import StrictModel
from onnxforge.targets import register_target


class OrtMobileOptions(StrictModel):
    optimization_style: Literal["fixed", "runtime"] = Field(
        "fixed", description="onnxruntime's OptimizationStyle: fixed = optimizations applied at conversion (fastest "
                             "load, tied to this kind of CPU); runtime = basic ones applied, the rest saved to "
                             "replay on the device")
    enable_type_reduction: bool = Field(False, description="also record the input types each operator needs "
                                        "(a smaller reduced build)")


def load(out: Path, opts: OrtMobileOptions, threads: int | None = None):
    """The .ort file in an InferenceSession (how a reduced mobile build loads it); feeds → {output: array}."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.load_model_format", "ORT")
    sess = ort.InferenceSession(str(Path(out) / "model.ort"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return dict(zip(names, sess.run(names, dict(feeds)), strict=True))

    run.threads = sess.get_session_options().intra_op_num_threads
    run.session = sess
    return run


@register_target("ort-mobile", OrtMobileOptions, load=load, package="onnxruntime",
                 help=".ort model + required-operators config for a reduced onnxruntime build",
                 files=("model.ort", "required_operators.config"))
def build(onnx_path: Path, out: Path, opts: OrtMobileOptions) -> dict:
    import onnxruntime as ort
    from onnxruntime.tools import convert_onnx_models_to_ort as conv

    from onnxforge.runtime import quiet

    style = {"fixed": conv.OptimizationStyle.Fixed, "runtime": conv.OptimizationStyle.Runtime}
    out = Path(out)
    # the tool writes next to its input: give it a private copy in a scratch folder, then keep what we want
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, src)
        # the tool prints its progress to stdout and logs INFO through its own DEBUG-level loggers: the result
        # and the check are ours to report
        tool_logs = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("ort_format")]
        levels = [lg.level for lg in tool_logs]
        for lg in tool_logs:
            lg.setLevel(logging.ERROR)
        try:
            with quiet(), contextlib.redirect_stdout(io.StringIO()):
                conv.convert_onnx_models_to_ort(src, output_dir=Path(tmp),
                                                optimization_styles=[style[opts.optimization_style]],
                                                target_platform=None, save_optimized_onnx_model=False,
                                                allow_conversion_failures=False,
                                                enable_type_reduction=opts.enable_type_reduction)
        finally:
            for lg, lv in zip(tool_logs, levels, strict=True):
                lg.setLevel(lv)
        ort_file = next(Path(tmp).rglob("*.ort"))
        config = next(Path(tmp).rglob("*.config"))
        shutil.move(ort_file, out / "model.ort")
        # the tool's header names the model it wrote by a path of its own making (resolved from the working
        # directory, our scratch folder): a machine path in a shipped file, different in every folder — the
        # header lines name the file we ship instead, so the bytes depend on the model only
        lines = config.read_text().splitlines(keepends=True)
        text = "".join("# - model.ort\n" if ln.startswith("# - ") else ln for ln in lines)
        (out / "required_operators.config").write_text(text)
    ops = [ln for ln in (out / "required_operators.config").read_text().splitlines() if ln and not ln.startswith("#")]
    return {"onnxruntime": ort.__version__, "files": [out / "model.ort", out / "required_operators.config"],
            "required_operators": ops, "optimization_style": opts.optimization_style}

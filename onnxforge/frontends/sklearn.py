"""scikit-learn: fitted estimators and Pipelines (ColumnTransformer + OneHotEncoder included, so categorical and
string columns are encoded inside the graph), from skops files or, when trusted, pickle/joblib files."""

from __future__ import annotations

from typing import Literal

from onnxforge.frontends._tabular import SklearnAPIFrontend, TabularSource
from onnxforge.registry import register_frontend


class SklearnSource(TabularSource):
    framework: Literal["sklearn"]


@register_frontend
class SklearnFrontend(SklearnAPIFrontend):
    name = "sklearn"
    Source = SklearnSource
    packages = ("scikit-learn", "skl2onnx", "skops")

    def export(self, native, cfg, opset, workdir):
        from onnxforge.frontends import skl_compat

        # what skl2onnx cannot convert, or onnxforge's tabular inputs cannot feed, named before any input schema
        skl_compat.refuse_unsupported(native, self.what(native, cfg))
        return super().export(native, cfg, opset, workdir)

"""The report's options: one place both the pipeline stage and the builder import (neither imports the other)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from onnxforge.config import StrictModel

Positive = Annotated[int, Field(gt=0)]


class ReportOptions(StrictModel):
    formats: list[Literal["json", "md", "html"]] = Field(default_factory=lambda: ["json", "md", "html"],
                                                         min_length=1, description="files to write")
    bench: bool = Field(True, description="measure latency of every artifact (and of the native source)")
    batches: list[Positive] = Field(default_factory=lambda: [1, 64], min_length=1, description="batch sizes for latency")
    threads: list[Positive] = Field(default_factory=lambda: [1], min_length=1, description="intra-op thread counts for latency")
    runs: int = Field(50, gt=0, description="timed runs per setting")
    warmup: int = Field(5, ge=0, description="untimed runs before timing")
    max_seconds: float = Field(2.0, gt=0, description="time budget per setting (at least 5 runs are kept)")
    rounds: int = Field(3, gt=0, description="interleaved rounds: every model is timed in each, so drift hits all")
    max_rows: int | None = Field(1000, gt=0, description="rows of the data used for errors and accuracy")
    native: bool = Field(True, description="load the source model as the reference for the first artifact")

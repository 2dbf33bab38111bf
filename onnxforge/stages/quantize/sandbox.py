"""Keep onnxruntime's quantization tools inside our work folder: symbolic shape inference writes
`sym_shape_infer_temp.onnx` (+ a `<uuid>.data` file) to the current directory when inference is incomplete, and
the quantizers make temporary folders under TMPDIR. Inside `contained(work)` both point into `work`, which the
stage removes whatever happens."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def contained(work: Path) -> Iterator[Path]:
    """cwd and tempfile's folder inside a fresh folder under `work` for the duration (paths given to the tools
    must be absolute). Single-threaded use only: the cwd is per process."""
    scratch = Path(tempfile.mkdtemp(prefix="ort-", dir=Path(work).resolve()))
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(scratch)
    tempfile.tempdir = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = old_tmp
        os.chdir(old_cwd)

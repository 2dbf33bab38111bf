"""Crafted .skops files for the security tests: a schema that makes skops call `module.name(*args)` at load time
(ConstructorFromReduceNode), which is exactly what a trusted class name lets a hostile file do."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def _json(value) -> dict:
    return {"__class__": type(value).__name__, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True, "__id__": id(value)}


def _node(value) -> dict:
    if isinstance(value, list):
        return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                "content": [_node(v) for v in value], "__id__": 1}
    return _json(value)


def constructor_call(path: Path, dotted: str, *args) -> Path:
    """A .skops whose top object is `dotted(*args)`, e.g. 'numpy.distutils.fcompiler.gnu.Popen'."""
    module, _, cls = dotted.rpartition(".")
    schema = {"__class__": cls, "__module__": module, "__loader__": "ConstructorFromReduceNode",
              "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                          "content": [_node(a) for a in args], "__id__": 2},
              "__id__": 3, "protocol": 2, "_skops_version": "0.16.0"}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(schema))
    return path

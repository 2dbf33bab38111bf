"""What kind of model file is this? One content-first sniffer for every frontend, the table of what each kind is
and which framework reads it, and the one-line error for a file given to the wrong frontend.

Not a registered frontend (the leading underscore keeps the registry from importing it as one); stdlib only, so
recognizing a file never imports an ML framework.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from onnxforge.errors import UserError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def _use(framework: str) -> str:
    return f"use source.framework: {framework}"


# kind → (what it is, the fix: which framework to use, or what to do); a None fix means "give <wanted>"
KINDS: dict[str, tuple[str, str | None]] = {
    "torch-save": ("a PyTorch file", _use("torch")),
    "torch-export": ("a torch.export program", _use("torch")),
    "torchscript": ("a TorchScript archive", "save model.state_dict() (plus source.factory) or a torch.export .pt2"),
    "keras": ("a Keras model file", _use("keras")),
    "hdf5": ("an HDF5 file (legacy Keras .h5?)", "re-save it as .keras and use source.framework: keras"),
    "skops": ("a skops file", _use("sklearn")),
    "pickle": ("a pickle/joblib file", _use("sklearn")),
    "onnx": ("an ONNX model", _use("onnx")),
    "xgboost-json": ("an XGBoost JSON model", _use("xgboost")),
    "xgboost-ubj": ("an XGBoost UBJSON model", _use("xgboost")),
    "lightgbm": ("a LightGBM text model", _use("lightgbm")),
    "json": ("a JSON file that is not an XGBoost model", None),
    "zip": ("a zip archive in no model format onnxforge reads", None),
    "unknown": ("not a model file onnxforge recognizes", None),
}


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "unknown"
    if "config.json" in names and ("metadata.json" in names or "model.weights.h5" in names):
        return "keras"
    if "schema.json" in names:
        return "skops"
    if any(n.endswith("/models/model.json") or n.endswith("/archive_format") for n in names):
        return "torch-export"
    if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-save"
    return "zip"


def sniff(path: Path) -> str:
    """Identify a model file by its content (the suffix only breaks ties): torch-save | torch-export | torchscript |
    keras | skops | hdf5 | pickle | onnx | xgboost-json | xgboost-ubj | lightgbm | json | zip | unknown.
    Reads bytes only; never unpickles."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04") or zipfile.is_zipfile(path):
        return _sniff_zip(path)
    if head.startswith(b"\x89HDF"):
        return "hdf5"
    if head[:1] == b"\x80":
        return "pickle"  # a protocol-2+ pickle: torch.save (legacy format), joblib, plain pickle
    if head.startswith((b"tree\n", b"tree\r\n")):
        return "lightgbm"
    body = head.lstrip()
    if body.startswith(b"{") and b"learner" in body[:256]:
        # JSON: {"learner": ...; UBJSON: {L<int64 length>learner ...
        return "xgboost-json" if body[1:].lstrip()[:1] == b'"' else "xgboost-ubj"
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if body[:1] in (b"{", b"["):
        return "json"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"  # protocol 0/1 pickles have no header
    return "unknown"


def wrong_file(path: Path, kind: str, wanted: str, fix: str | None = None) -> UserError:
    """The one-line error for a file of another kind than the frontend reads: what it is, and what to do."""
    desc, default_fix = KINDS.get(kind, KINDS["unknown"])
    fix = fix or default_fix or f"give {wanted}"
    return UserError(f"{path.name} is {desc}, not {wanted} — {fix}")

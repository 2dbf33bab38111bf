"""ONNX load/save: full checker before every write, atomic rename, external data above 2 GB, metadata, sha256."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from onnxforge.errors import CheckFailed, UserError

_TWO_GB = 2**31 - 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(path: str | Path, *, what: str = "model", load_external: bool = True):
    """Load a user's .onnx file; anything unreadable is the user's problem (exit 2)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} — check the path")
    try:
        model = onnx.load(str(path), load_external_data=load_external)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}) — re-export it") from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path}: not a readable ONNX model (empty graph) — re-export it")
    return model


def check(model, *, ours: bool, where: str = "model") -> None:
    """onnx.checker full check; a failure in our own artifact is a failed check (1), in the user's input, exit 2."""
    import onnx

    try:
        if model.ByteSize() > _TWO_GB:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "m.onnx"
                onnx.save(model, str(p), save_as_external_data=True, location="m.onnx.data")
                onnx.checker.check_model(str(p), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        msg = f"{where}: onnx.checker failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        if ours:
            raise CheckFailed(msg) from None
        raise UserError(msg + " — fix or re-export the model") from None


def save_model(model, path: str | Path, *, run_check: bool = True) -> Path:
    """Check, then write to a temporary file in the destination folder and rename, so a failure never leaves a
    half-written model at `path`. Models over 2 GB get their weights in `path.data` beside them."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if run_check:
        check(model, ours=True, where=path.name)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        if model.ByteSize() > _TWO_GB:
            onnx.save(model, str(tmp), save_as_external_data=True, location=path.name + ".data")
            os.replace(tmpdir / (path.name + ".data"), path.parent / (path.name + ".data"))
        else:
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


@functools.cache
def file_mode() -> int:
    """The mode a plain open() would give a new file (0666 less the umask): mkstemp's 0600 would hide shared
    reports, a fixed 0644 would ignore a user's stricter umask. Read once: os.umask can only be read by setting it."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def stamp(model, **items: Any) -> None:
    """Set metadata_props (replacing same keys); values that are not strings are stored as JSON. Keys are kept
    sorted so the same inputs always give the same bytes."""
    props = {p.key: p.value for p in model.metadata_props}
    for k, v in items.items():
        if v is None:
            continue
        props[f"onnxforge.{k}" if not k.startswith("onnxforge.") else k] = (
            v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        )
    del model.metadata_props[:]
    for k in sorted(props):
        e = model.metadata_props.add()
        e.key, e.value = k, props[k]


def metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


_JSON_KIND = {dict: "a JSON object", list: "a JSON list"}
_JSON_ITEMS = {dict: "objects", list: "lists", str: "strings", int: "integers", float: "numbers", bool: "booleans"}
META_FIX = "re-convert the model with onnxforge, or remove the key from its metadata_props"


def meta_json(model_or_meta, key: str, expect: type = dict, default: Any = None, *, items: type | None = None,
              where: Any = None) -> Any:
    """The JSON value of metadata key `key` ('onnxforge.' is prefixed when missing) of a model or of its
    {key: value} dict, checked to be `expect` (dict or list) whose values/items are `items` when given. An absent
    or empty key gives `default`. Anything else is one line, exit 2, naming the model (`where`) and the key: every
    reader of onnxforge metadata goes through here, because a model file's metadata is user input like the rest of
    it (an edited or hand-made model can hold anything there)."""
    meta = model_or_meta if isinstance(model_or_meta, dict) else metadata(model_or_meta)
    key = key if key.startswith("onnxforge.") else f"onnxforge.{key}"
    raw = meta.get(key)
    if raw is None or not raw.strip():
        return default
    what = f"{where or 'the model'}: metadata {key}"
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deep"
        raise UserError(f"{what} is not valid JSON ({msg}: {raw[:40]!r}) — {META_FIX}") from None
    want = _JSON_KIND.get(expect, expect.__name__)
    if not isinstance(value, expect) or (expect is not bool and isinstance(value, bool)):
        raise UserError(f"{what} is not {want} (it holds {type(value).__name__} {raw[:40]!r}) — {META_FIX}")
    if items is not None:
        values = value.values() if isinstance(value, dict) else value
        bad = next((v for v in values if not isinstance(v, items) or (items is not bool and isinstance(v, bool))),
                   _OK)
        if bad is not _OK:
            raise UserError(f"{what} is not {want} of {_JSON_ITEMS.get(items, items.__name__)} (it holds "
                            f"{type(bad).__name__} {json.dumps(bad)[:40]}) — {META_FIX}")
    return value


_OK = object()


def file_size(path: str | Path) -> int:
    """Model file size including its external-data files."""
    path = Path(path)
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + ".data"):
        total += extra.stat().st_size
    return total

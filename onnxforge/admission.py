"""The admission gate: every model a command reads from the user passes here before anything else touches it.

`admit(path)` = `read` (protobuf parse; external data confined to the model's folder, then loaded) + `check`
(declared outputs, initializer data that fits its dims, known opsets, onnx.checker full check) + `open_session`
(onnxruntime loads it on the CPU provider). Each refusal is a UserError — one line naming the file, the reason and
the fix (exit 2) — or a CheckFailed (exit 1) when the caller says the model is one of ours. Downstream code
(onnxruntime's quantizer, onnxslim, numpy reshapes) never sees a model that did not pass, so its crashes cannot
surface as internal errors.

Also here: `check_feeds` (data that does not fit a model's inputs) and `same_inputs` (two models fed the same data),
both refused before onnxruntime would raise INVALID_ARGUMENT mid-run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from onnxforge.errors import CheckFailed, UserError, one_line

_FIX = "fix or re-export the model"
# element bits of the packed types (raw_data is bit-packed; int32_data holds 2 four-bit / 4 two-bit values each)
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}
_PER_INT32 = {4: 2, 2: 4}


@dataclass
class Admitted:
    path: Path
    model: Any  # onnx.ModelProto; external data loaded unless read(load_external=False)
    external: bool  # the model keeps tensors in external files
    session: Any = None  # onnxruntime.InferenceSession when admit() was asked for one
    rewritten: bool = False  # `model` differs from the file (opsets merged, normalized): save it before use
    notes: list = field(default_factory=list)  # what normalization changed (see normalize.py)


def admit(path: str | Path, *, what: str = "model", session: bool | dict = True, load_external: bool = True,
          ours: bool = False, normalize: bool = True) -> Admitted:
    """Read, check and (unless session=False) load a model in onnxruntime. `session` may be the keyword arguments
    of runtime.session for a session the caller then reuses (default: CPU, optimizations off, one thread); pass
    False where the caller builds its own session at once through `open_session`."""
    adm = read(path, what=what, load_external=load_external)
    check(adm, ours=ours)
    if normalize:  # after the checks: the file itself passed them as it is
        from onnxforge.normalize import normalize as _normalize

        adm.notes = _normalize(adm.model)
        adm.rewritten = adm.rewritten or bool(adm.notes)
    if session is not False:
        kw = session if isinstance(session, dict) else {"level": "disable", "threads": 1}
        adm.session = open_session(adm.path, ours=ours, **kw)
    return adm


# ------------------------------------------------------------------ read


def read(path: str | Path, *, what: str = "model", load_external: bool = True) -> Admitted:
    """Parse the protobuf and confine its external data; no onnx.load, so nothing is read from a file that has
    not been checked to lie inside the model's folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} — check the path")
    size = path.stat().st_size
    if size >= 2**31:  # protobuf's limit: read nothing that cannot be a model
        raise UserError(f"{path}: {size:,} bytes is over the 2 GB a protobuf .onnx can hold — not an ONNX model "
                        "(models that large keep their weights in external data files beside the .onnx)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__}: {one_line(e)[:160]}) — "
                        "re-export it, or check that the file is an .onnx model") from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path}: not a readable ONNX model (empty graph) — re-export it")
    external = [(where, t) for where, t in tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for where, t in external:
        _confine(path, where, t)
    if external and load_external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # confined above: what is left is an unreadable file
            raise UserError(f"{path}: its external data cannot be read ({one_line(e)[:200]}) — {_FIX}") from None
    return Admitted(path, model, bool(external))


def tensors(model):
    """(where, TensorProto) for every tensor stored in the model: initializers (sparse ones too) and tensor
    attributes, in the main graph, every subgraph and every local function."""
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(f.node)


def _graph_tensors(g):
    for t in g.initializer:
        yield f"initializer '{t.name}'", t
    for s in g.sparse_initializer:
        yield f"sparse initializer '{s.values.name}' (values)", s.values
        yield f"sparse initializer '{s.values.name}' (indices)", s.indices
    yield from _node_tensors(g.node)


def _node_tensors(nodes):
    for n in nodes:
        label = f"tensor '{n.output[0] if n.output else n.name}' of a {n.op_type} node"
        for a in n.attribute:
            if a.HasField("t"):
                yield label, a.t
            for t in a.tensors:
                yield label, t
            if a.HasField("sparse_tensor"):
                yield label + " (values)", a.sparse_tensor.values
                yield label + " (indices)", a.sparse_tensor.indices
            if a.HasField("g"):
                yield from _graph_tensors(a.g)
            for g in a.graphs:
                yield from _graph_tensors(g)


def _external_info(path: Path, where: str, t) -> tuple[str, int, int | None]:
    info = {e.key: e.value for e in t.external_data}
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise UserError(f"{path}: {where} has a non-numeric external data offset/length — {_FIX}") from None
    if offset < 0 or (length is not None and length < 0):
        raise UserError(f"{path}: {where} has a negative external data offset/length — {_FIX}")
    return info.get("location", ""), offset, length


def _confine(path: Path, where: str, t) -> None:
    """External data must be a regular file inside the model's folder, reached without symbolic links (onnx and
    onnxruntime refuse links too), with the tensor's bytes inside it."""
    loc, offset, length = _external_info(path, where, t)
    fix = f"keep the data file in {path.parent.name or '.'}/ beside the model and name it relatively"
    if not loc:
        raise UserError(f"{path}: {where} is stored externally but names no file — {_FIX}")
    if PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute() or PureWindowsPath(loc).drive:
        raise UserError(f"{path}: {where} reads its data from the absolute location '{loc}' — {fix}")
    if ".." in re.split(r"[\\/]", loc):
        raise UserError(f"{path}: {where} reads its data from '{loc}', outside the model's folder — {fix}")
    base = path.parent
    cur = base
    for part in PurePosixPath(loc.replace("\\", "/")).parts:
        cur = cur / part
        if cur.is_symlink():
            raise UserError(f"{path}: {where} reads its data through '{loc}', a symbolic link — copy the data file "
                            "into the model's folder instead of linking it")
    target = base / loc
    if base.resolve() not in target.resolve().parents:
        raise UserError(f"{path}: {where} reads its data from '{loc}', outside the model's folder — {fix}")
    if not target.is_file():
        raise UserError(f"{path}: {where} reads its data from '{loc}', which is not a file beside the model — copy "
                        f"the model's data file next to {path.name} (it travels with the model)")
    need = _nbytes(t)
    if length is not None and need is not None and length != need:
        raise UserError(f"{path}: {where} has external data of {length} bytes but its dims {list(t.dims)} of "
                        f"{_dtype(t)} need {need} — the data file belongs to another model or was written wrongly; "
                        "re-export the model")
    size = target.stat().st_size
    end = offset + (length if length is not None else need or 0)
    if end > size:
        raise UserError(f"{path}: {where} reads bytes {offset}–{end} of '{loc}', which holds {size} — the data file "
                        "is truncated or belongs to another model; re-export the model")


# ------------------------------------------------------------------ check


def check(adm: Admitted, *, ours: bool = False) -> None:
    """Declared IO, tensor data sizes, opsets, then onnx.checker's full check (which includes strict type and
    shape inference of every node)."""
    fail = CheckFailed if ours else UserError

    def refuse(msg: str, fix: str = _FIX):
        raise fail(f"{adm.path}: {msg}" + ("" if ours else f" — {fix}"))

    m = adm.model
    if not m.graph.output:
        refuse("the graph declares no outputs, so nothing can be computed", "re-export it with its outputs")
    for kind, vis in (("input", m.graph.input), ("output", m.graph.output)):
        seen: set[str] = set()
        for v in vis:
            if v.name in seen:
                refuse(f"the graph declares {kind} '{v.name}' more than once", f"give each {kind} its own name")
            seen.add(v.name)
    for where, t in tensors(m):
        if t.data_location != 1:  # external tensors were sized by read()
            problem = _size_problem(t)
            if problem:
                refuse(f"{where} {problem}", "the file is damaged or was written wrongly; re-export the model")
    adm.rewritten = _check_opsets(m, refuse) or adm.rewritten
    _checker(adm, ours)


def _checker(adm: Admitted, ours: bool) -> None:
    import onnx

    try:
        # by path: onnx resolves external data beside the model and handles models over 2 GB
        onnx.checker.check_model(str(adm.path) if adm.external else adm.model, full_check=True)
    except Exception as e:
        msg = f"{adm.path}: onnx.checker failed: {one_line(e)[:300] or type(e).__name__}"
        raise (CheckFailed(msg) if ours else UserError(f"{msg} — {_FIX}")) from None


def _check_opsets(m, refuse) -> bool:
    """A domain imported twice at two versions, or an opset newer than any released (onnxruntime refuses it with a
    page of C++). Returns True when it merged a domain listed twice at one version (skl2onnx writes both "" and
    "ai.onnx"): unambiguous, but onnxruntime's quantizer fails on it, so the admitted model keeps one entry."""
    import onnx

    # onnx.checker and onnxruntime accept a domain listed twice (even at two versions) and each picks one entry
    versions: dict[str, list[int]] = {}
    for o in m.opset_import:
        versions.setdefault("" if o.domain in ("", "ai.onnx") else o.domain, []).append(o.version)
    for domain, vs in versions.items():
        if len(set(vs)) > 1:
            refuse(f"opset_import lists domain {domain or 'ai.onnx'} {len(vs)} times (versions "
                   f"{', '.join(map(str, vs))}), so the opset its nodes follow is ambiguous", "keep one "
                   "opset_import entry per domain (re-export the model, or delete the extra entry with onnx.helper)")
    merged = len(versions) < len(m.opset_import)
    if merged:
        del m.opset_import[:]
        for domain, vs in versions.items():
            m.opset_import.add(domain=domain, version=vs[0])
    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version(),
              "ai.onnx.ml": onnx.defs.onnx_ml_opset_version()}
    for o in m.opset_import:
        top = newest.get(o.domain)
        if top is not None and o.version > top:
            refuse(f"opset {o.version} of {o.domain or 'ai.onnx'} is newer than any released opset ({top} is the "
                   f"newest onnx {onnx.__version__} knows)", f"export the model at opset {top} or lower")
    return merged


def _dtype(t) -> str:
    import onnx

    try:
        return "string" if t.data_type == 8 else str(_np(t.data_type))
    except Exception:
        return onnx.TensorProto.DataType.Name(t.data_type).lower() if t.data_type in \
            onnx.TensorProto.DataType.values() else f"type {t.data_type}"


def _count(t) -> int | None:
    if any(d < 0 for d in t.dims):
        return None
    return math.prod(t.dims)


def _nbytes(t) -> int | None:
    """Bytes of raw_data (or external data) that dims × type need; None for types that have no raw form."""
    from onnx import helper

    n = _count(t)
    if n is None or t.data_type == 8 or t.data_type == 0:  # string / undefined: no raw form
        return None
    if t.data_type in _PACKED_BITS:
        return -(-n * _PACKED_BITS[t.data_type] // 8)
    try:
        return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # a type this onnx does not know: onnx.checker speaks for it
        return None


def _size_problem(t) -> str | None:
    """What is wrong with the amount of data an inline tensor holds, or None when it fits its dims."""
    from onnx import helper

    if any(d < 0 for d in t.dims):
        return f"has negative dims {list(t.dims)}"
    n = _count(t)
    if t.HasField("raw_data") and t.raw_data:
        need = _nbytes(t)
        if need is not None and len(t.raw_data) != need:
            return f"holds {len(t.raw_data)} bytes of data but its dims {list(t.dims)} of {_dtype(t)} need {need}"
        return None
    try:
        field = helper.tensor_dtype_to_field(t.data_type)
    except Exception:
        return None
    got = len(getattr(t, field))
    bits = _PACKED_BITS.get(t.data_type)
    if t.data_type in (14, 15):  # complex: real and imaginary parts
        need = 2 * n
    elif bits in _PER_INT32:
        need = -(-n // _PER_INT32[bits])
    else:
        need = n
    if got != need:
        return f"holds {got} values but its dims {list(t.dims)} of {_dtype(t)} need {need}"
    return None


# ------------------------------------------------------------------ onnxruntime


def open_session(model: str | Path | Any, *, name: str | Path | None = None, ours: bool = False, **kw):
    """runtime.session(model, **kw), with onnxruntime's refusal turned into one line (exit 2, or 1 for ours).
    `model` is a path, or a ModelProto/bytes the caller changed after admit() (then `name` names the file)."""
    from onnxforge import runtime

    path = name if name is not None else model
    try:
        return runtime.session(Path(model) if isinstance(model, str) else model, **kw)
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise  # not onnxruntime's verdict on the model: a bug
        import onnxruntime as ort

        cls, reason = ort_reason(e)
        msg = f"{path}: onnxruntime {ort.__version__} cannot load it ({cls}: {reason})"
        raise (CheckFailed(msg) if ours else UserError(
            f"{msg} — {_FIX} so that onnxruntime's CPU provider loads it")) from None


_ORT_HEAD = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*(\w+)\s*:\s*")
_LOCATION = re.compile(r"(?:/\S*/)?[A-Za-z_][\w-]*\.(?:cc|h|cpp|hpp):\d+\s+")
_SIGNATURE = re.compile(r"(?:[\w:<>]+\s+)?\w+(?:::~?\w+)+\(")


def ort_reason(e: Exception) -> tuple[str, str]:
    """(status class, message) of an onnxruntime exception, without source locations and C++ signatures."""
    text = str(e)
    heads = _ORT_HEAD.findall(text)
    cls = heads[-1] if heads else type(e).__name__
    text = _ORT_HEAD.sub("", text)
    text = re.sub(r"Load model from .*? failed:\s*|Exception during initialization:\s*", "", text)
    out, pos = [], 0
    for m in _LOCATION.finditer(text):
        out.append(text[pos:m.start()] + " ")
        pos = m.end()
        sig = _SIGNATURE.match(text, pos)
        if sig:  # an ORT_ENFORCE: skip the function signature up to its closing parenthesis
            depth, i = 1, sig.end()
            while i < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            pos = i
        else:  # an ORT_THROW: "file:line Function message"
            word = re.match(r"\w+\s+", text[pos:])
            pos += word.end() if word else 0
    out.append(text[pos:])
    reason = one_line("".join(out)).strip(" .:")
    return cls, (reason[:280] + "…" if len(reason) > 280 else reason) or type(e).__name__


# ------------------------------------------------------------------ data and models that must fit each other


def _inputs(model) -> dict[str, tuple[int | None, list | None, bool]]:
    """name → (elem_type or None for non-tensors, dims or None when unranked, required)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        t = i.type
        if not t.HasField("tensor_type"):
            out[i.name] = (None, None, i.name not in inits)
            continue
        tt = t.tensor_type
        # dim_value 0 is what some exporters write for "unknown": only positive values pin a dim
        dims = ([d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in tt.shape.dim]
                if tt.HasField("shape") else None)
        out[i.name] = (tt.elem_type, dims, i.name not in inits)
    return out


def _type_name(elem: int | None) -> str:
    import onnx

    if elem is None:
        return "non-tensor"
    try:
        return _np_name(elem)
    except Exception:
        return onnx.TensorProto.DataType.Name(elem).lower() if elem in onnx.TensorProto.DataType.values() \
            else f"type {elem}"


def _np_name(elem: int) -> str:
    return "string" if elem == 8 else str(_np(elem))


def _np(elem: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem)


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_feeds(feeds: dict, model, *, what: str, model_name: str) -> None:
    """Refuse data whose arrays do not fit the model's declared inputs: missing or unknown names, dtype, rank,
    fixed dims beyond the row axis (callers batch rows themselves)."""
    import numpy as np

    ins = _inputs(model)
    unknown = [k for k in feeds if k not in ins]
    if unknown:
        raise UserError(f"{what} feeds {unknown}, which {model_name} does not take (its inputs: "
                        f"{[k for k, v in ins.items() if v[2]]}) — fix the data or the input names")
    for name, (elem, dims, required) in ins.items():
        if name not in feeds:
            if required:
                raise UserError(f"{what} has nothing for input '{name}' of {model_name} — add it to the data")
            continue
        arr = np.asarray(feeds[name])
        if elem is None:
            continue
        ok_type = arr.dtype.kind in "OUS" if elem == 8 else arr.dtype == _np(elem)
        shape_ok = dims is None or (arr.ndim == len(dims) and all(
            not isinstance(d, int) or d == s for d, s in list(zip(dims, arr.shape, strict=True))[1:]))
        if not (ok_type and shape_ok):
            want = f"{_np_name(elem)} {_fmt(dims) if dims is not None else '(any shape)'}"
            got = f"{'string' if arr.dtype.kind in 'OUS' else arr.dtype} {_fmt(list(arr.shape))}"
            raise UserError(f"input '{name}' of {model_name} is {want} but {what} gives {got} — fix the data (or "
                            "the inputs: section of the config) so that it fits the model")


def same_inputs(model, ref, *, model_name: str, ref_name: str) -> None:
    """Refuse a reference model that cannot be fed what the model under test is fed."""
    a, b = _inputs(model), _inputs(ref)
    mine = [k for k, v in a.items() if v[2]]
    lacks = [k for k in mine if k not in b]
    needs = [k for k, v in b.items() if v[2] and k not in a]
    if lacks or needs:
        parts = ([f"{model_name} takes {', '.join(repr(k) for k in lacks)}, which the reference lacks"]
                 if lacks else []) + ([f"the reference takes {', '.join(repr(k) for k in needs)}, which "
                                       f"{model_name} lacks"] if needs else [])
        raise UserError(f"{ref_name}: the reference's inputs differ from {model_name}'s: {'; '.join(parts)} — "
                        "compare against a model with the same inputs")
    for k in mine:
        (ea, da, _), (eb, db, _) = a[k], b[k]
        why = None
        if ea != eb:
            why = f"is {_type_name(ea)} in {model_name} but {_type_name(eb)} in the reference"
        elif da is not None and db is not None and len(da) != len(db):
            why = f"has rank {len(da)} in {model_name} but rank {len(db)} in the reference"
        elif da is not None and db is not None and any(
                isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(da, db, strict=True)):
            why = f"has shape {_fmt(da)} in {model_name} but {_fmt(db)} in the reference"
        if why:
            raise UserError(f"{ref_name}: input '{k}' {why} — compare against a model with the same inputs")

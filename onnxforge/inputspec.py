"""The input model: for every model input, the shape to feed, whether dim 0 is a batch axis, and the values an
integer input may hold — so that inputs fit models onnxforge did not make.

Read off the model first (declared shapes, its metadata, the table an integer input indexes); the config's
`inputs:` and `input_shapes:`/`input_values:` (--shape/--value) win over it. Symbolic dims nothing resolves are
probed: the smallest of a few sizes on which onnxruntime runs the model. Inputs without a batch axis (scalars,
state tensors whose first dim is fixed while the others' is symbolic) are fed whole to every run; a model whose
state pins one row per run (its symbolic batch accepts 1 row, not 2) is run a row at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from onnxforge.errors import UserError

PROBE_SIZES = (16, 64, 256, 1024, 4096, 16000)  # tried in order for a dim nothing else resolves
INT_HIGH = 8  # an integer input that indexes no table: small non-negative values
# ops an index passes through unchanged on its way to the table it indexes
_PASS = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}


class Specs(list):
    """TensorSpecs plus what the input model found: rows per run, and where each shape or range came from."""

    rows_per_run: int | None = None
    unresolved: str | None = None  # why no size fits the symbolic dims: raised when inputs must be synthesized
    notes: dict
    log: list  # what data.synthesize made from these specs (shown in summaries)

    def __init__(self, items=(), rows_per_run=None, notes=None, log=None):
        super().__init__(items)
        self.rows_per_run = rows_per_run
        self.notes = notes or {}
        self.log = log if log is not None else []


_CACHE: dict[tuple, Specs] = {}


def plan(model, path: Path | str | None = None, cfg=None, *, probe: bool = True) -> Specs:
    """Specs for the model's inputs. `model` is a ModelProto; `path` the file onnxruntime loads to probe dims."""
    from onnxforge.data import specs_from_model

    key = _key(path, cfg)
    if key is not None and key in _CACHE:
        hit = _CACHE[key]
        return _copy(hit)
    base = specs_from_model(model)
    given = list(getattr(cfg, "inputs", None) or [])
    names = {s.name for s in base}
    if given and not {s.name for s in given} <= names:
        # a spec for another graph (a frontend's names: PyMC's categorical `g` is the model's `g__code`): used as
        # the user wrote it, as before the input model
        return Specs(given)
    specs = _merge(base, given, cfg, names)
    notes: dict[str, str] = {}
    _batch_axes(specs)
    _from_metadata(model, specs, notes)
    _int_domains(model, specs, notes)
    out = Specs(specs, notes=notes)
    _state_batch(out)
    if probe and path is not None:
        _probe(Path(path), out)
    if key is not None:
        _CACHE[key] = out
    return _copy(out)


def _copy(specs: Specs) -> Specs:
    out = Specs([s.model_copy() for s in specs], specs.rows_per_run, dict(specs.notes))
    out.unresolved = specs.unresolved
    return out


def _key(path, cfg):
    if path is None or not Path(path).is_file():
        return None
    st = Path(path).stat()
    extra = None
    if cfg is not None:
        extra = json.dumps([[s.model_dump(mode="json") for s in cfg.inputs], cfg.input_shapes, cfg.input_values],
                           sort_keys=True, default=str)
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size, extra


# ------------------------------------------------------------------ what the user said


def _merge(base, given, cfg, names) -> list:
    """The model's specs, with the fields the user set in `inputs:` and the --shape/--value overrides."""
    unknown = []
    shapes = dict(getattr(cfg, "input_shapes", None) or {})
    values = dict(getattr(cfg, "input_values", None) or {})
    unknown += [f"{n} (--shape)" for n in shapes if n not in names]
    unknown += [f"{n} (--value)" for n in values if n not in names]
    if unknown:
        raise UserError(f"the model has no input {', '.join(repr(u) for u in unknown)} — its inputs are "
                        f"{', '.join(sorted(names))}")
    by_name = {s.name: s for s in given}
    out = []
    for spec in base:
        declared = list(spec.shape)
        user = by_name.get(spec.name)
        if user is not None:
            spec = spec.model_copy(update={k: getattr(user, k) for k in user.model_fields_set if k != "name"})
        if spec.name in shapes:
            spec = spec.model_copy(update={"shape": _user_shape(spec.name, declared, shapes[spec.name])})
        if spec.name in values:
            spec = spec.model_copy(update={"value": values[spec.name]})
        out.append(spec)
    return out


def _user_shape(name: str, declared: list, dims: list[int]) -> list:
    # a 0 is taken only where the model fixes that dim at 0 (an input with no values): nowhere else does it run
    if any(not isinstance(d, int) or d < 0 or (d == 0 and (i >= len(declared) or declared[i] != 0))
           for i, d in enumerate(dims)):
        raise UserError(f"--shape {name}={','.join(map(str, dims))}: give positive whole numbers, e.g. "
                        f"--shape {name}=1,3,224,224")
    if declared and len(dims) != len(declared):
        raise UserError(f"--shape {name}: {len(dims)} dims given but the model declares {len(declared)} "
                        f"({_fmt(declared)}) — give one number per dim")
    for i, (d, m) in enumerate(zip(dims, declared, strict=False)):
        if isinstance(m, int) and m != d:
            raise UserError(f"--shape {name}: dim {i} is {d} but the model fixes it at {m} ({_fmt(declared)}) — "
                            "give the model's value there")
    # a symbolic dim 0 stays the batch axis: the rows come from the data (or the synthetic row count)
    return [declared[0] if declared and not isinstance(declared[0], int) else dims[0], *dims[1:]]


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


# ------------------------------------------------------------------ read off the model


def _batch_axes(specs) -> None:
    """Dim 0 is a batch axis where it is symbolic; a fixed dim 0 is one only when every input shares it (a model
    exported at batch 1). Scalars and inputs fixed where the others are symbolic (state) are fed whole."""
    ranked = [s for s in specs if s.shape]
    symbolic = {s.name for s in ranked if not isinstance(s.shape[0], int)}
    fixed = {s.shape[0] for s in ranked if isinstance(s.shape[0], int)}
    for s in specs:
        if s.batched is not None:
            continue
        if not s.shape:
            s.batched = False
        elif symbolic:
            s.batched = s.name in symbolic
        else:
            s.batched = len(fixed) == 1


def _state_batch(specs: Specs) -> None:
    """A state fed whole that carries the batch dim elsewhere (silero's h: [2, batch, 64]) holds one stream: it
    is fed at batch 1, and the batched inputs one row per run."""
    names = {s.shape[0] for s in specs if s.batched and s.shape and isinstance(s.shape[0], str)}
    for s in specs:
        if s.batched or not s.shape:
            continue
        for axis, d in enumerate(s.shape):
            if isinstance(d, str) and d in names:
                _set_dim(s, axis, 1)
                specs.rows_per_run = 1
                specs.notes.setdefault(s.name, f"state: its '{d}' dim is the batch, fed at 1 (one row per run)")


def _resolved(spec) -> list:
    return list(spec._synth or spec.shape)


def _set_dim(spec, axis: int, value: int) -> None:
    """Resolved dims go to synthesis only: data files keep the model's symbolic dims (any size fits)."""
    dims = _resolved(spec)
    dims[axis] = value
    spec._synth = dims


def _open_dims(specs) -> list[tuple]:
    """(spec, axis, dim name) for every symbolic dim that is not a batch axis and no one resolved yet."""
    out = []
    for s in specs:
        dims = _resolved(s)
        for i, d in enumerate(dims):
            if isinstance(d, int) or (i == 0 and s.batched):
                continue
            out.append((s, i, d))
    return out


def _from_metadata(model, specs, notes) -> None:
    """Dims named in the model's metadata: a key equal to the dim's name, or Ultralytics' `imgsz` (H, W)."""
    props = {p.key: p.value for p in model.metadata_props}
    imgsz = _ints(props.get("imgsz"))
    for s, axis, name in _open_dims(specs):
        v = _ints(props.get(name)) if isinstance(name, str) else None
        if v and len(v) == 1:
            _set_dim(s, axis, v[0])
            notes[s.name] = f"{name}={v[0]} from the model's metadata"
        elif imgsz and len(s.shape) == 4 and axis in (2, 3):
            hw = imgsz if len(imgsz) == 2 else imgsz * 2
            _set_dim(s, axis, hw[axis - 2])
            notes[s.name] = f"height×width {hw[0]}×{hw[1]} from the model's metadata (imgsz)"


def _ints(text) -> list[int] | None:
    if not text:
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return None
    if isinstance(v, int) and v > 0:
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, int) and x > 0 for x in v):
        return v
    return None


def _int_domains(model, specs, notes) -> None:
    """An integer input that indexes a table (Gather, embedding lookups, OneHot) gets values below its size."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    sizes = _const_shapes(model)
    loop = _loop_controls(model)
    for s in specs:
        if s.name in loop and s.value is None and not ({"low", "high"} & s.model_fields_set):
            if loop[s.name] == "cond":
                s.value = 1
                notes.setdefault(s.name, "True: it is a Loop's starting condition")
            elif isinstance(loop[s.name], int):
                s.value = loop[s.name]
                notes.setdefault(s.name, f"{loop[s.name]}: the iterations the Loop's declared outputs hold")
            else:
                s.low, s.high = 1, INT_HIGH
                notes.setdefault(s.name, f"1…{INT_HIGH - 1}: it is a Loop's trip count")
            continue
        if not s.dtype.startswith(("int", "uint")) or s.value is not None or s.categories:
            continue
        if {"low", "high"} & s.model_fields_set:
            continue
        table = _indexed(s.name, consumers, sizes, model)
        if table:
            size, what = table
            s.low, s.high = 0, size
            notes.setdefault(s.name, f"indices 0…{size - 1}: the table it indexes, {what}, has {size}")
        elif is_mask(s):
            # a padding mask (attention_mask, input_mask): 0 or 1 — a 7 would be a weight, not a mask, and fused
            # Attention (mask_index) reads any non-zero as 1, so garbage masks make correct fusions look wrong
            s.low, s.high = 0, 2
            notes.setdefault(s.name, "0 or 1: a padding mask (its name)")
        else:
            s.low, s.high = 0, INT_HIGH
            notes.setdefault(s.name, f"values 0…{INT_HIGH - 1}: it indexes no table the model stores (give "
                                     f"--value {s.name}=V for a fixed value)")


def is_mask(spec) -> bool:
    """An integer/bool input named like a padding mask (attention_mask, input_mask, padding_mask, ...)."""
    return "mask" in spec.name.lower() and spec.dtype.startswith(("int", "uint", "bool"))


def _loop_controls(model) -> dict[str, str]:
    """Graph inputs that are a Loop's trip count (input 0) or starting condition (input 1)."""
    declared = {o.name: o.type.tensor_type.shape.dim for o in model.graph.output}
    out: dict[str, str | int] = {}
    for n in model.graph.node:
        if n.op_type != "Loop":
            continue
        if len(n.input) > 1 and n.input[1]:
            out[n.input[1]] = "cond"
        if n.input and n.input[0]:
            # scan outputs (after the loop-carried ones) stack one row per iteration: a fixed dim 0 is the count
            scans = list(n.output)[len(n.input) - 2:]
            counts = {d[0].dim_value for o in scans if o in declared and len(declared[o]) and
                      declared[o][0].dim_value > 0 for d in [declared[o]]}
            out[n.input[0]] = counts.pop() if len(counts) == 1 else "trip"
    return out


def _const_shapes(model) -> dict[str, tuple]:
    from onnx import numpy_helper

    out: dict = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for t in model.graph.initializer:
        if all(d == 1 for d in t.dims):  # one value (a OneHot depth): read for its value
            out[t.name + "#value"] = numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = tuple(a.t.dims)
                    if a.t.dims == [] or len(a.t.dims) <= 1:
                        try:
                            out[n.output[0] + "#value"] = numpy_helper.to_array(a.t)
                        except Exception:  # an odd constant: its shape is all we need
                            pass
    return out


def _indexed(name: str, consumers, sizes, model, depth: int = 0):
    """(size, what) of the first table `name` indexes, following ops that pass an index through unchanged."""

    if depth > 8:
        return None
    for node, pos in consumers.get(name, []):
        if node.op_type in ("Gather", "GatherElements") and pos == 1 and node.input[0] in sizes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = sizes[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                return int(dims[axis]), f"'{node.input[0]}' ({node.op_type})"
        if node.op_type == "EmbedLayerNormalization" and pos in (0, 1):
            # com.microsoft's fused BERT embeddings: ids index input 2 (words), segment ids input 4 (segments)
            table = node.input[2 if pos == 0 else 4] if len(node.input) > (2 if pos == 0 else 4) else ""
            if table in sizes and sizes[table]:
                return int(sizes[table][0]), f"'{table}' (EmbedLayerNormalization)"
        if node.op_type == "OneHot" and pos == 0 and len(node.input) > 1:
            arr = sizes.get(node.input[1] + "#value")
            if arr is not None and np.size(arr) == 1 and int(np.ravel(arr)[0]) > 0:
                return int(np.ravel(arr)[0]), "a OneHot depth"
        if node.op_type in _PASS and pos == 0:
            for out in node.output:
                found = _indexed(out, consumers, sizes, model, depth + 1)
                if found:
                    return found
    return None


# ------------------------------------------------------------------ probe onnxruntime


def _probe(path: Path, specs: Specs) -> None:
    """Resolve the dims left open by trying sizes on one row; then check whether two rows run at once."""
    from onnxforge import data, runtime

    opened = _open_dims(specs)
    if not opened and not any(s.batched and not isinstance(s.shape[0], int) for s in specs if s.shape):
        return
    if any(s.dtype == "string" and not s.categories and s.value is None for s in specs):
        return  # nothing to synthesize text from: the data file decides (or synthesis says what is missing)
    try:
        sess = runtime.session(path, level="disable", threads=1)
    except Exception:
        return  # admission speaks for a model onnxruntime cannot load
    if opened:
        # an unnamed dim (no dim_param, or -1) is named by its place, never as Python's None
        names = sorted({d if isinstance(d, str) else f"{s.name}[{axis}]" for s, axis, d in opened})
        ok = None
        for size in PROBE_SIZES:
            for s, axis, _ in opened:
                _set_dim(s, axis, size)
            try:
                feeds = data.synthesize(specs, 1)
            except UserError:  # over the synthetic-input cap: larger sizes would be too
                break
            if _runs(sess, feeds):
                ok = size
                break
        if ok is None:  # refused only if inputs must be synthesized: a data file may still fit
            which = sorted({s.name for s, _, _ in opened})
            specs.unresolved = (f"input {', '.join(repr(w) for w in which)}: the model leaves dim"
                                f"{'s' if len(names) > 1 else ''} {', '.join(names)} symbolic and onnxruntime "
                                f"runs it at none of {', '.join(map(str, PROBE_SIZES))} — give the real shape "
                                f"with --shape {which[0]}=d0,d1,... (or input_shapes: in the config)")
            return
        for s, _, _ in opened:
            specs.notes.setdefault(s.name, f"{', '.join(names)}={ok}: the smallest of "
                                           f"{', '.join(map(str, PROBE_SIZES))} on which the model runs (give "
                                           f"--shape {s.name}=… for the real size)")
    if any(s.batched and s.shape and not isinstance(s.shape[0], int) for s in specs):
        try:
            one, two = data.synthesize(specs, 1), data.synthesize(specs, 2)
        except UserError:  # e.g. over the synthetic-input cap: leave rows per run to the model's declaration
            return
        if _runs(sess, one) and not _runs(sess, two):
            specs.rows_per_run = 1
            for s in specs:
                if s.batched:
                    specs.notes.setdefault(s.name, "one row per run: the model's fixed-size inputs (state) "
                                                   "take a batch of 1")


def _runs(sess, feeds) -> bool:
    try:
        sess.run(None, dict(feeds))
    except Exception:
        return False
    return True


# ------------------------------------------------------------------ what was fed (summaries and reports)


def describe(feeds, specs=None) -> list[dict]:
    """One entry per synthesized input: name, dtype, shape fed, batch axis, range or value, where it came from."""
    from onnxforge.data import whole

    by_name = {s.name: s for s in specs or []}
    notes = getattr(specs, "notes", {}) or {}
    out = []
    for k, v in feeds.items():
        a = np.asarray(v)
        s = by_name.get(k)
        d = {"name": k, "dtype": str(a.dtype), "shape": list(a.shape), "batch_axis": k not in whole(feeds)}
        if s is not None and s.value is not None:
            d["value"] = s.value
        elif s is not None and s.categories:
            d["categories"] = list(s.categories)
        elif a.dtype.kind in "iub":
            d["range"] = [int(a.min()), int(a.max())] if a.size else []
        elif s is not None:
            d["range"] = [s.low, s.high]
        if k in notes:
            d["from"] = notes[k]
        out.append(d)
    return out


def line(desc: list[dict]) -> str:
    """`x float32[64, 3] U[0, 1); sr int64[] = 16000 (…)` for the terminal."""
    parts = []
    for d in desc:
        text = f"{d['name']} {d['dtype']}{d['shape']}"
        if "value" in d:
            text += f" = {d['value']:g}"
        elif "range" in d and d["range"]:
            text += f" in [{d['range'][0]:g}, {d['range'][1]:g}{']' if d['dtype'][0] in 'iub' else ')'}"
        if not d["batch_axis"]:
            text += " (whole, no batch axis)"
        if d.get("from"):
            text += f" ({d['from']})"
        parts.append(text)
    return "; ".join(parts)

"""Keras 3 source: a .keras file (Sequential or Functional), exported with `model.export(format="onnx")` — not
`tf2onnx.convert.from_keras`, which fails on Sequential models — then renamed to the config's input/output names.
Where that export leaves a layer's constants as graph inputs (adapted Normalization, lookup layers) or TF ops
unconverted (Discretization, IntegerLookup), the model is frozen first and that is converted (_keras_freeze.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from onnxforge.config import SourceBase
from onnxforge.errors import UserError
from onnxforge.frontends._export import first_line, name_dims, quiet
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends._keras_freeze import (
    canonical_name,
    canonical_order,
    canonical_subgraphs,
    dict_keys,
    model_inputs,
    model_outputs,
    stable_merge,
)
from onnxforge.frontends._keras_freeze import export_checked as _export_frozen
from onnxforge.frontends._keras_freeze import flaws as _flaws
from onnxforge.frontends.base import Frontend, ThreadLimit, require, torch_threads
from onnxforge.registry import register_frontend

DEFAULT_OPSET = 18
MAX_OPSET = 18  # tf2onnx 1.17 knows opsets up to 18


class KerasSource(SourceBase):
    framework: Literal["keras"]


def _keras():
    # TF reads these when its C++ core loads; its import also prints absl/oneDNN lines straight to fd 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with quiet():
        keras = require("keras", "keras")
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
    return keras


def _tf_threads(n: int) -> tuple[int, int]:
    """Ask TensorFlow for n intra-op and 1 inter-op threads; it refuses once started. Returns what it holds
    (0 = its default: every core)."""
    import tensorflow as tf

    th = tf.config.threading
    for setter, v in ((th.set_intra_op_parallelism_threads, n), (th.set_inter_op_parallelism_threads, 1)):
        try:
            setter(v)
        except RuntimeError:  # "cannot be modified after initialization"
            pass
    return th.get_intra_op_parallelism_threads(), th.get_inter_op_parallelism_threads()


def _check_file(path: Path | None) -> Path:
    if path is None:
        raise UserError("source.path is required for framework keras — point it at the .keras file")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"source.path: {path} not found — check the path (relative to the YAML file)")
    kind = sniff(path)
    if kind == "keras":
        return path
    if kind == "hdf5":
        raise UserError(f"{path.name} is a legacy HDF5 Keras file — load it with Keras and re-save it with "
                        "model.save('model.keras')")
    resave = "save the model with model.save('model.keras')" if kind in ("pickle", "unknown") else None
    raise wrong_file(path, kind, "a .keras model", resave)


_UNKNOWN = re.compile(r"Could not (?:locate|deserialize) (class|function) '([^']+)'"
                      r"(?: because its parent module ([\w.]+) cannot be imported)?")
_EXPORT_IT = ("export the model yourself where that code is defined (model.export('model.onnx', format='onnx')) "
              "and convert the ONNX file with source.framework: onnx")


def _unknown_object(e: BaseException) -> tuple[str, str, str | None] | None:
    """(kind, name, the module it names or None) of the custom class or function Keras could not find. Keras wraps
    that error in generic 'could not be deserialized properly' ones (a nested layer's only as __context__)."""
    for _ in range(20):
        if e is None:
            break
        if m := _UNKNOWN.search(str(e)):
            return m.group(1), m.group(2), m.group(3)
        e = e.__cause__ or e.__context__
    return None


def _config(path: Path) -> dict:
    """The model's config.json, read from the .keras zip without Keras (best effort: {} if unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            cfg = json.loads(z.read("config.json"))
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}


def _in_layers(node, name: str) -> bool:
    """Whether a config object of class `name` is an entry of some `layers` list (a layer, not e.g. an
    initializer)."""
    if isinstance(node, dict):
        return any((k == "layers" and isinstance(v, list)
                    and any(isinstance(x, dict) and x.get("class_name") == name for x in v))
                   or _in_layers(v, name) for k, v in node.items())
    return isinstance(node, list) and any(_in_layers(x, name) for x in node)


def _custom_error(path: Path, kind: str, name: str, module: str | None) -> UserError:
    """The .keras file names Python code it does not hold; the keras source has no way to supply that code
    (no factory), so registering the class is no fix: rebuild from built-ins, or export it where the code is."""
    if module:  # a class of a package Keras imports itself (keras_hub, keras_nlp, keras_cv) that is missing
        package = module.split(".")[0]
        return UserError(f"{path.name}: the model uses {kind} '{name}' from {package}, which is not installed — "
                         f"install it (pip install {package.replace('_', '-')})")
    cfg = _config(path)
    if kind == "class" and cfg.get("class_name") == name:
        return UserError(f"{path.name} holds a subclassed model (class '{name}'): Keras can rebuild it only by "
                         "running that class's Python code, which the file does not contain, and onnxforge's keras "
                         "source takes Sequential and Functional models only — rebuild it from built-in layers "
                         f"as a Functional or Sequential model, or {_EXPORT_IT}")
    short = name.rpartition(">")[2]  # registered names are 'package>name'
    what = {"function": "function", "class": "layer" if _in_layers(cfg, name) else "class"}[kind]
    kinds = "layers" if what == "layer" else "objects"
    return UserError(f"{path.name}: the model uses a custom {what} '{short}' whose Python code the file does not "
                     "contain, so Keras cannot rebuild it, and onnxforge's keras source loads only Keras's built-in "
                     f"{kinds} — replace it with built-in ones, or {_EXPORT_IT}")


def _out_names(model, cfg) -> list[str]:
    n = len(model.outputs)
    if cfg.outputs:
        if len(cfg.outputs) != n:
            raise UserError(f"outputs: the config names {len(cfg.outputs)} outputs {cfg.outputs} but the model has "
                            f"{n} — list {n} names")
        return list(cfg.outputs)
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and len(struct) == n:  # a dict of outputs: its keys, in model.outputs order
        return dict_keys(struct)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != n:  # a Sequential model: name its output after its last layer
        names = [model.layers[-1].name] if n == 1 and model.layers else [f"output_{i}" for i in range(n)]
    return names


def _specs(model, cfg):
    """The config's input spec, checked against the model's inputs; or one read off the model."""
    from onnxforge.config import TensorSpec

    ins = model.inputs
    if not cfg.inputs:
        return [TensorSpec(name=t.name, dtype=str(t.dtype),
                           shape=[("batch" if i == 0 else f"{t.name}_dim{i}") if d is None else int(d)
                                  for i, d in enumerate(t.shape)]) for t in ins]
    if len(cfg.inputs) != len(ins):
        raise UserError(f"the input spec lists {len(cfg.inputs)} inputs but the model takes {len(ins)} "
                        f"({', '.join(t.name for t in ins)}) — fix `inputs:`")
    for s, t in zip(cfg.inputs, ins, strict=True):
        want = list(t.shape)
        ok = len(s.shape) == len(want) and all(
            m is None or (isinstance(d, int) and d == m) for d, m in zip(s.shape, want, strict=True))
        if not ok or s.dtype != str(t.dtype):
            model_shape = ["None" if m is None else m for m in want]
            raise UserError(f"input '{s.name}': the spec says {s.dtype} {list(s.shape)} but the model's input "
                            f"'{t.name}' is {t.dtype} {model_shape} — fix `inputs:`")
    return list(cfg.inputs)


def _rename(model, mapping: dict[str, str]) -> None:
    """Rename graph values (inputs, outputs, and every node reference to them)."""
    def sub(name: str) -> str:
        return mapping.get(name, name)

    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        vi.name = sub(vi.name)
    for node in model.graph.node:
        node.input[:] = [sub(x) for x in node.input]
        node.output[:] = [sub(x) for x in node.output]


def _canonical(model) -> None:
    """Make tf2onnx's output byte-stable. Its counters (node names, values) are numbered in set-iteration order, and
    its constant de-duplication keeps an arbitrary one of equal constants ('const_starts__25' one run,
    'const_axes__11' the next). Renumber every generated name by first use in node order, call generated constants
    'const__N', and order the initializers by first use."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    ids: dict[str, str] = {}
    mapping: dict[str, str] = {}

    def visit(name: str) -> None:
        if name not in mapping and (new := canonical_name(name, inits, ids)) is not None:
            mapping[name] = new

    order: dict[str, int] = {}
    for node in g.node:
        for x in node.input:
            order.setdefault(x, len(order))
            visit(x)
        for x in node.output:
            visit(x)
        visit(node.name)
    for t in sorted(g.initializer, key=lambda t: order.get(t.name, len(order))):
        visit(t.name)
    _rename(model, mapping)
    for node in g.node:
        node.name = mapping.get(node.name, node.name)
    ordered = sorted(g.initializer, key=lambda t: (order.get(t.name, len(order)), mapping.get(t.name, t.name)))
    copies = [type(t)() for t in ordered]
    for c, t in zip(copies, ordered, strict=True):
        c.CopyFrom(t)
        c.name = mapping.get(t.name, t.name)
    del g.initializer[:]
    g.initializer.extend(copies)
    canonical_subgraphs(g, mapping, ids)  # Loop/If bodies: their own counters, and references to renamed values
    dims: dict[str, str] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param.startswith("unk__"):
                d.dim_param = dims.setdefault(d.dim_param, f"unk_{len(dims) + 1}")


@register_frontend
class KerasFrontend(Frontend):
    name = "keras"
    Source = KerasSource
    # measured against Keras (bench/out/tolerances.md): at most 5e-6 abs on logits up to 13, 2.4e-7 on
    # probabilities (Sequential, Functional, Normalization, sequence, preprocessing): rtol 1e-5 / atol 1e-4 leaves
    # ≥ 26× (the former 1e-3 let a 1000× loss through)
    rtol = 1e-5
    atol = 1e-4
    packages = ("keras", "tensorflow-cpu", "tensorflow", "tf2onnx")

    def preflight(self, cfg) -> None:
        _check_file(cfg.source.path)

    def load(self, cfg):
        path = _check_file(cfg.source.path)
        keras = _keras()
        try:
            with quiet():
                # safe_mode refuses Lambda layers (arbitrary code); trust_pickle lifts it, as for pickles
                return keras.saving.load_model(str(path), compile=False, safe_mode=not cfg.source.trust_pickle)
        except Exception as e:
            msg = first_line(e)
            if "safe_mode" not in msg and (unknown := _unknown_object(e)):
                raise _custom_error(path, *unknown) from None
            fix = ("set source.trust_pickle: true if you trust its Lambda layers" if "safe_mode" in msg
                   else f"re-save it with model.save('model.keras') under Keras {keras.__version__}")
            raise UserError(f"{path.name}: Keras cannot load it ({msg}) — {fix}") from None

    def export(self, native, cfg, opset, workdir):
        import onnx
        import tensorflow as tf

        opset = opset or DEFAULT_OPSET
        if opset > MAX_OPSET:
            raise UserError(f"Keras export (tf2onnx) supports opset ≤ {MAX_OPSET} — lower convert.opset")
        specs = _specs(native, cfg)
        names = _out_names(native, cfg)
        sig = [tf.TensorSpec([d if isinstance(d, int) else None for d in s.shape], s.dtype, name=s.name)
               for s in specs]
        tmp = Path(tempfile.mkdtemp(prefix=".keras-export-", dir=workdir))
        model, failed = None, None
        try:
            with quiet(), stable_merge():
                native.export(str(tmp / "model.onnx"), format="onnx", verbose=False, opset_version=opset,
                              input_signature=sig if len(sig) == 1 else [model_inputs(native, sig)])
            model = onnx.load(str(tmp / "model.onnx"))
        except Exception as e:
            failed = first_line(e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        flaws = _flaws(model, native, len(specs)) if model is not None else None
        if model is None or flaws:  # constants left as inputs, TF ops left unconverted: freeze first, convert that
            model = _export_frozen(native, sig, opset, failed, flaws)
        else:
            canonical_order(model.graph)  # tf2onnx's node order follows its set-ordered counters
        got_in = [i.name for i in model.graph.input]
        got_out = [o.name for o in model.graph.output]
        if len(got_out) != len(names) or len(got_in) != len(specs):
            raise UserError(f"the exported graph has inputs {got_in} and outputs {got_out}, expected "
                            f"{len(specs)} and {len(names)} — check `inputs:`/`outputs:`")
        _rename(model, dict(zip(got_in, [s.name for s in specs], strict=True))
                | dict(zip(got_out, names, strict=True)))
        name_dims(model, specs, batch_major_outputs=True)  # Keras outputs are batch-major by construction
        _canonical(model)
        model.doc_string = ""
        return model

    def predict(self, native, feeds, cfg):
        keras = _keras()
        specs = _specs(native, cfg)
        args = [np.ascontiguousarray(feeds[s.name]) for s in specs]
        with quiet():
            out = model_outputs(native(args[0] if len(args) == 1 else model_inputs(native, args), training=False))
        outs = list(out) if isinstance(out, list | tuple) else [out]
        return {n: np.asarray(keras.ops.convert_to_numpy(t)) for n, t in
                zip(_out_names(native, cfg), outs, strict=True)}

    def preset_threads(self, n: int) -> None:
        if _keras().backend.backend() == "tensorflow":
            _tf_threads(n)

    @contextlib.contextmanager
    def threads(self, native, n: int):
        """TensorFlow: its intra-op pool at n (inter-op 1), which holds only if set before TF started (see
        preset_threads); read back from tf.config.threading. The torch backend: torch.set_num_threads."""
        backend = _keras().backend.backend()
        if backend == "torch":
            with torch_threads(n) as got:
                yield got
            return
        if backend != "tensorflow":
            yield ThreadLimit(False, f"Keras backend {backend}: onnxforge has no thread control for it")
            return
        intra, inter = _tf_threads(n)
        yield ThreadLimit(intra == n and inter == 1, f"TensorFlow intra-op {intra}, inter-op {inter} threads" + (
            "" if intra == n else " (default = all cores): TensorFlow fixes its pools when it starts, before this "
            "model was timed — `onnxforge bench --config` sets them before loading"))

    def metadata(self, native, cfg):
        return {"keras.model": native.name, "keras.class": type(native).__name__,
                "keras.backend": _keras().backend.backend()}

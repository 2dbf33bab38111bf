"""PyTorch source: a factory plus a state_dict (loaded weights-only), or a torch.export .pt2 file; exported with the
dynamo exporter (default) or TorchScript, with the config's input/output names and dynamic dims."""

from __future__ import annotations

import importlib
import importlib.util
import io
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from onnxforge.code_trust import is_file_ref
from onnxforge.config import SourceBase, resolve_path
from onnxforge.errors import UserError
from onnxforge.frontends._export import first_line, name_dims, quiet, strip_provenance
from onnxforge.frontends._files import sniff, wrong_file
from onnxforge.frontends.base import Frontend, require, torch_threads
from onnxforge.registry import register_frontend

DYNAMO_OPSET = 18
TORCHSCRIPT_MAX_OPSET = 20


class TorchSource(SourceBase):
    framework: Literal["torch"]
    factory: str | None = Field(None, description="'path/to/file.py:fn' (relative to the YAML) or 'package.module:fn'"
                                                   " returning the nn.Module; its weights come from `path`")
    factory_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    exporter: Literal["dynamo", "torchscript", "auto"] = Field(
        "dynamo", description="auto = dynamo, falling back to TorchScript with a warning")

    @field_validator("factory")
    @classmethod
    def _resolve_factory(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        target, sep, fn = v.rpartition(":")
        if not sep or not target or not fn.isidentifier():
            raise ValueError("expected 'path/to/file.py:function' or 'package.module:function'")
        if is_file_ref(target):
            target = str(resolve_path(target, (info.context or {}).get("base_dir")))
        return f"{target}:{fn}"


# ------------------------------------------------------------------ loading


@dataclass
class TorchModel:
    """What `load` returns: the module (or exported program) plus how the export went, for the metadata."""

    module: Any
    kind: str  # "module" | "exported"
    origin: str
    exporter: str | None = None
    fallback: str | None = None

    def __call__(self, *args):
        if self.kind == "exported":  # an ExportedProgram runs through its unlifted module
            if not hasattr(self, "_runner"):
                self._runner = self.module.module()
            return self._runner(*args)
        return self.module(*args)


def _import_factory(spec: str, cfg):
    return import_callable(spec, cfg, "source.factory", "onnxforge_factory")


def import_callable(ref: str, cfg, key: str, prefix: str, base: Path | None = None):
    """The function `ref` ('file.py:function' or 'package.module:function') names, imported; every failure is one
    line naming `key`, the config key to fix. A relative file is looked up under `base` when given."""
    import inspect

    target, _, fn = ref.rpartition(":")
    try:
        if is_file_ref(target):
            path = Path(target)
            if base is not None and not path.is_absolute():
                path = base / path
            if not path.is_file():
                where = f" (looked for {path})" if str(path) != target else ""
                raise UserError(f"{key}: {target} not found{where} — fix the path (relative to the YAML file)")
            name = f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            with _import_path(cfg):
                module = importlib.import_module(target)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{key}: cannot import '{target}' ({first_line(e)}) — check the module or file "
                        "path and that its imports are installed") from None
    found = getattr(module, fn, None)
    if not callable(found):
        there = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_"))
        has = f" (it defines {', '.join(there[:8])})" if there else ""
        raise UserError(f"{key}: '{target}' has no function '{fn}'{has} — fix the name after the colon")
    return found


def _build(cfg):
    torch = require("torch", "torch")
    src = cfg.source
    factory = _import_factory(src.factory, cfg)
    try:
        model = factory(**src.factory_args)
    except Exception as e:
        raise UserError(f"source.factory {_short(src.factory)} raised {first_line(e)} — fix the factory or "
                        "source.factory_args") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"source.factory {_short(src.factory)} returned {type(model).__name__}, not a "
                        "torch.nn.Module — return the model from the factory")
    return model


def _short(factory: str | None) -> str:
    if not factory:
        return ""
    target, _, fn = factory.rpartition(":")
    return f"{Path(target).name}:{fn}" if is_file_ref(target) else factory


def _state_dict(obj) -> dict | None:
    """A state_dict, also when wrapped in a training checkpoint ({"state_dict": ...}, {"model_state_dict": ...})."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _state_dict(obj[key])
    return None


# Wrappers whose state_dict prefixes every key: DataParallel/DistributedDataParallel, and torch.compile's
# OptimizedModule; nested in either order (`_orig_mod.module.`, `module._orig_mod.`)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap(sd: dict, own) -> dict:
    """sd without the wrapper prefixes that all its keys carry and the model's own keys do not."""
    while sd:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)
                       and not any(k.startswith(p) for k in own)), None)
        if prefix is None:
            break
        sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


def _fit(model, sd: dict, path: Path, factory: str) -> None:
    own = model.state_dict()
    sd = _unwrap(sd, own)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)}≠{list(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise UserError(f"{path.name} does not fit the model from {_short(factory)} ({type(model).__name__}): "
                        f"{'; '.join(parts)} — point source.path at this model's weights or fix source.factory")
    model.load_state_dict(sd, strict=True)


@contextmanager
def _import_path(cfg):
    """User packages may live beside the config: its folder goes at the END of sys.path, so it never shadows an
    installed or standard-library module (the working directory is never added)."""
    extra = str(cfg.config_path.parent) if cfg.config_path else None
    added = extra is not None and extra not in sys.path
    if added:
        sys.path.append(extra)
    try:
        yield
    finally:
        if added and extra in sys.path:
            sys.path.remove(extra)


def _unpickle(torch, path: Path, cfg):
    try:
        with _import_path(cfg), quiet():  # the classes a full pickle names must be importable
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path.name}: cannot unpickle it ({first_line(e)}) — the classes it names must be "
                        "importable; or save model.state_dict() and set source.factory") from None


def _check_source(src) -> str | None:
    """The source's file kind, after the checks that need no torch (shared by preflight and load)."""
    path = Path(src.path) if src.path else None
    if path is None:
        if not src.factory:
            raise UserError("source: framework torch needs source.factory (and usually source.path with the "
                            "state_dict) or source.path to a torch.export .pt2 file")
        return None
    if not path.is_file():
        raise UserError(f"source.path: {path} not found — check the path (relative to the YAML file)")
    kind = sniff(path)
    if kind not in ("torch-save", "torch-export", "pickle", "unknown"):
        raise wrong_file(path, kind, "a PyTorch state_dict or .pt2")
    if kind == "unknown":
        raise UserError(f"{path.name} is not a PyTorch file (no torch.save or torch.export archive) — point "
                        "source.path at a state_dict saved with torch.save(model.state_dict(), ...)")
    if kind == "torch-export" and not src.trust_pickle:
        # torch.export.load falls back to full unpickling for some members, so a .pt2 is as trusted as a pickle
        raise UserError(f"{path.name} is a torch.export program, and torch.export.load may unpickle parts of "
                        "it (which runs code) — set source.trust_pickle: true if you trust it")
    return kind


def load_torch(cfg) -> TorchModel:
    src = cfg.source
    kind = _check_source(src)
    if kind is None:
        return TorchModel(_build(cfg).eval(), "module", _short(src.factory))
    path = Path(src.path)
    torch = require("torch", "torch")
    if kind == "torch-export":
        try:
            with quiet():
                ep = torch.export.load(str(path))
        except Exception as e:
            raise UserError(f"{path.name}: cannot load the torch.export program ({first_line(e)}) — re-export it "
                            "with this torch version") from None
        if training := _training_ops(ep):
            raise UserError(f"{path.name} was exported in training mode ({', '.join(training)} with train=True: "
                            "dropout drops at random and batch norm normalizes by each batch's statistics) — call "
                            "model.eval() before torch.export.export and save the program again")
        return TorchModel(ep, "exported", path.name)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if not isinstance(e, __import__("pickle").UnpicklingError):
            raise UserError(f"{path.name}: cannot read it with torch.load ({first_line(e)}) — re-save it with "
                            "torch.save(model.state_dict(), ...)") from None
        if not src.trust_pickle:
            raise UserError(f"{path.name} is a full pickle (it holds Python objects, not just tensors), which runs "
                            "code when loaded — save model.state_dict() instead, or set source.trust_pickle: true "
                            "if you trust it") from None
        obj = _unpickle(torch, path, cfg)
    if isinstance(obj, torch.nn.Module):
        return TorchModel(obj.eval(), "module", path.name)
    sd = _state_dict(obj)
    if sd is None:
        raise UserError(f"{path.name} holds a {type(obj).__name__}, not a state_dict of tensors — save "
                        "model.state_dict()")
    if not src.factory:
        raise UserError(f"{path.name} is a state_dict: set source.factory ('file.py:fn' or 'module:fn') to build "
                        "the model it belongs to")
    model = _build(cfg)
    _fit(model, sd, path, src.factory)
    return TorchModel(model.eval(), "module", f"{_short(src.factory)} + {path.name}")


def _training_ops(ep) -> list[str]:
    """The ops of an ExportedProgram that run in training mode (a `train`/`training` argument that is True): a model
    exported without .eval() keeps dropout and batch-statistics batch norm in its graph, and an ExportedProgram
    cannot be switched to eval afterwards."""
    found: list[str] = []
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        values = {a.name: node.kwargs.get(a.name, node.args[i] if i < len(node.args) else None)
                  for i, a in enumerate(schema.arguments)}
        if "running_mean" in values and values["running_mean"] is None:  # track_running_stats=False: batch stats
            continue  # in eval too
        if True in (values.get("train"), values.get("training")) and schema.name not in found:
            found.append(schema.name)
    return found


# ------------------------------------------------------------------ export


def _specs(cfg):
    if not cfg.inputs:
        raise UserError("framework torch needs the input spec — add `inputs: [{name, dtype, shape}]` to the config "
                        "(or --input name:dtype:dims)")
    bad = [s.name for s in cfg.inputs if s.dtype == "string"]
    if bad:
        raise UserError(f"inputs {bad}: torch models take tensors, not strings — fix the input dtype")
    return cfg.inputs


def _example(specs, base: int = 2):
    """Deterministic example inputs for tracing. Each dynamic dim name gets its own size, base, base+1, ... in order
    of first appearance (sizes 0 and 1 are specialized): with batch == seq the dynamo exporter can confuse the two
    (an RNN's initial state sized batch*seq). One name keeps one size, so dims that must agree still do."""
    import torch

    from onnxforge.data import NP_DTYPES

    sizes: dict[str, int] = {}
    for d in _dims(specs):
        for n in d.values():
            sizes.setdefault(n, base + len(sizes))
    rng = np.random.default_rng(0)
    out = []
    for s, d in zip(specs, _dims(specs), strict=True):
        shape = [sizes[d[i]] if i in d else n for i, n in enumerate(s.shape)]
        if s.dtype.startswith(("int", "uint")):
            arr = rng.integers(int(s.low), max(int(s.high), int(s.low) + 1), size=shape)
        elif s.dtype == "bool":
            arr = rng.random(shape) < 0.5
        else:
            arr = rng.uniform(s.low, s.high, size=shape)
        out.append(torch.from_numpy(np.ascontiguousarray(arr, dtype=NP_DTYPES[s.dtype])))
    return tuple(out)


def _flatten(out) -> tuple[list, list[str] | None]:
    """Model outputs as a flat list of tensors, plus their names when the model returns a dict."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out], None
    if isinstance(out, dict):
        return list(out.values()), [str(k) for k in out]
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)], None


def _output_names(cfg, n: int, keys: list[str] | None) -> list[str]:
    if cfg.outputs:
        if len(cfg.outputs) != n:
            raise UserError(f"outputs: the config names {len(cfg.outputs)} outputs {cfg.outputs} but the model "
                            f"returns {n} — list {n} names")
        return list(cfg.outputs)
    return keys or (["output"] if n == 1 else [f"output_{i}" for i in range(n)])


def _dims(specs):
    """Per input {axis: name} for its dynamic dims; unnamed (null) dims get '<input>_dim<axis>'."""
    out = []
    for s in specs:
        out.append({i: re.sub(r"\W", "_", d if isinstance(d, str) else f"{s.name}_dim{i}")
                    for i, d in enumerate(s.shape) if not isinstance(d, int)})
    return out


def _dynamo(native: TorchModel, example, specs, names, opset):
    import torch

    dims = _dims(specs)
    kwargs: dict[str, Any] = {}
    if native.kind == "module" and any(dims):
        cache: dict[str, Any] = {}  # one Dim object per name: inputs sharing `batch` share the symbol
        kwargs["dynamic_shapes"] = tuple(
            {i: cache.setdefault(n, torch.export.Dim(n)) for i, n in d.items()} or None for d in dims)
    with quiet():
        # output names are set afterwards: torch renames the output value to the given name even when a value
        # inside the graph already has it (an output called "embedding" beside aten.embedding's "embedding"),
        # which writes a graph onnx.checker refuses (not SSA)
        program = torch.onnx.export(native.module, example, dynamo=True, verbose=False, external_data=False,
                                    input_names=[s.name for s in specs], opset_version=opset, **kwargs)
        model = program.model_proto
    _name_outputs(model, names)
    return model


def _rename_value(graph, old: str, new: str) -> None:
    """Every use of value `old` in `graph` (and in subgraphs that read it) becomes `new`."""
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _rename_value(sub, old, new)
    for coll in (graph.value_info, graph.output):
        for vi in coll:
            if vi.name == old:
                vi.name = new


def _name_outputs(model, names: list[str]) -> None:
    """Graph outputs named `names`, in order; a value inside the graph that already holds a wanted name is renamed
    out of the way first, and an output that is a graph input, an initializer or a repeated value gets an
    Identity so it can carry its own name."""
    import onnx

    g = model.graph
    taken = {v for n in g.node for v in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
    outputs = list(g.output)
    for vi, want in zip(outputs, names, strict=False):
        cur = vi.name
        if cur == want:
            continue
        if want in taken and want not in {i.name for i in g.input}:
            k = 1
            while f"{want}_{k}" in taken:
                k += 1
            _rename_value(g, want, f"{want}_{k}")
            taken.add(f"{want}_{k}")
        fixed = cur in {i.name for i in g.input} or cur in {t.name for t in g.initializer} or \
            sum(o.name == cur for o in g.output) > 1
        if fixed:
            g.node.append(onnx.helper.make_node("Identity", [cur], [want], name=f"{want}_identity"))
            vi.name = want
        else:
            _rename_value(g, cur, want)
        taken.add(want)


def _torchscript(native: TorchModel, example, specs, names, opset):
    import onnx
    import torch

    dims = _dims(specs)
    axes = {s.name: d for s, d in zip(specs, dims, strict=True) if d}
    if dims and 0 in dims[0]:  # outputs are batch-major like the first input
        axes.update({n: {0: dims[0][0]} for n in names})
    buf = io.BytesIO()
    with quiet(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        torch.onnx.export(native.module, example, buf, dynamo=False, input_names=[s.name for s in specs],
                          output_names=names, opset_version=opset, dynamic_axes=axes or None)
    own = Path(torch.__file__).resolve().parent  # torch's own modules (an RNN's input checks) trace correctly
    branch = next((w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                   and "Python boolean" in str(w.message) and not Path(w.filename).resolve().is_relative_to(own)),
                  None)
    if branch is not None:  # `if x.mean() > 0:` in forward(): the trace keeps the branch the example inputs took
        where = f" ({Path(branch.filename).name}:{branch.lineno})" if branch.filename else ""
        raise _Traced(f"the TorchScript exporter traced a Python branch on a tensor's value{where}, so the ONNX "
                      "graph would follow the branch the example inputs took, whatever the input — replace the "
                      "`if` on tensor values in forward() with torch.where, or make dynamo export it (torch.cond)")
    return onnx.load_from_string(buf.getvalue())


class _Traced(Exception):
    """A TorchScript trace that would be wrong for other inputs: exit 2 with this message as it stands."""


def _dynamo_opset(model, opset: int | None, native: TorchModel):
    """A problem when the dynamo graph is not at the asked opset: torch exports at 18 and converts down, and where
    the converter cannot (a TransformerEncoder's attention) it keeps 18 and only warns."""
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if not opset or got == opset:
        return None
    fix = f"set convert.opset: {got}"
    if native.kind == "module":
        fix += " or source.exporter: torchscript"
    return (f"it wrote opset {got}, not {opset}",
            f"the dynamo exporter cannot write opset {opset} for this model (it wrote {got})", fix)


def _dynamo_dims(model, second, native: TorchModel, specs=None):
    """A problem when the dynamo graph cannot run once the dynamic dims change size: torch.export may bake a traced
    size into the graph (an LSTM's sequence length) without a constraint error, and the data would get the blame."""
    if second is None:
        return None
    import onnxruntime as ort

    inputs, shapes = second
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4  # ort logs a failing node to stderr, which carries only the one-line error
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # cannot load at all (too big to serialize, an op ort lacks): convert's own check reports it
        return None
    try:
        got = [tuple(o.shape) for o in sess.run(None, {i.name: t.numpy() for i, t in
                                                        zip(sess.get_inputs(), inputs, strict=True)})]
        if got != shapes:
            raise ValueError(f"outputs {got} where torch gives {shapes}")
    except Exception as e:
        reason = f"its graph fails when the dynamic dims change size ({first_line(e)})"
        return (reason, f"the dynamo exporter's graph fails when the dynamic dims change size ({first_line(e)})",
                ("set source.exporter: torchscript (or auto), or " if native.kind == "module" else "")
                + "give the dims that must not change a number in `inputs:`")
    if specs is not None:
        _declare_dims(model, specs, got)
    return None


def _declare_dims(model, specs, got: list[tuple]) -> None:
    """Output dims the dynamo graph declares fixed but that change with the dynamic dims (it computes a GRU's
    [batch, seq, h] output right yet declares [batch, 3, h], the traced seq): declared dynamic again, named after
    the input dim whose size they follow (sizes 2, 3, ... at the first trace, one more at the second), else
    '<output>_dim<axis>'. A runtime that trusts the declared shape would misread them."""
    sizes: dict[str, int] = {}
    for d in _dims(specs):
        for n in d.values():
            sizes.setdefault(n, 2 + len(sizes))
    patched = False
    for out, shape in zip(model.graph.output, got, strict=False):
        dims = out.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        for i, (d, n) in enumerate(zip(dims, shape, strict=True)):
            if d.HasField("dim_value") and d.dim_value != n:
                follows = [k for k, v in sizes.items() if v == d.dim_value and v + 1 == n]
                d.dim_param = follows[0] if len(follows) == 1 else f"{out.name}_dim{i}"
                patched = True
    if patched:  # the traced size is in the intermediate shapes too, which onnxruntime reports: it re-infers them
        del model.graph.value_info[:]


@register_frontend
class TorchFrontend(Frontend):
    name = "torch"
    Source = TorchSource
    # measured against torch (bench/out/tolerances.md): at most 1.1e-5 abs on digits logits up to 21 (MLP, CNN),
    # float32 both sides: rtol 1e-5 / atol 1e-4 leaves ≥ 22× (the former 1e-3 let a 1000× loss through)
    rtol = 1e-5
    atol = 1e-4
    packages = ("torch", "onnxscript")

    def preflight(self, cfg) -> None:
        _check_source(cfg.source)

    def load(self, cfg) -> TorchModel:
        return load_torch(cfg)

    def export(self, native: TorchModel, cfg, opset, workdir):
        torch = require("torch", "torch")
        specs = _specs(cfg)
        example = _example(specs)
        shapes = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)
        try:  # the model must run on the spec's shapes before an exporter gets to fail on them less clearly
            with torch.no_grad():
                tensors, keys = _flatten(native(*example))
        except Exception as e:
            raise UserError(f"the input spec ({shapes}) does not fit the model: {first_line(e)} — fix `inputs:` "
                            "(count, order, dtype, shape)") from None
        second = None  # (inputs, output shapes) at other sizes, to run the dynamo graph on
        if any(_dims(specs)):  # a dim the spec calls dynamic must really be free: try a second size
            try:
                with torch.no_grad():
                    other = _example(specs, base=3)  # every dynamic dim one larger
                    second = (other, [tuple(t.shape) for t in _flatten(native(*other))[0]])
            except Exception as e:
                raise UserError(f"the input spec ({shapes}) marks dims dynamic that the model fixes: it fails when "
                                f"they change size ({first_line(e)}) — give those dims a number in `inputs:`") from None
        names = _output_names(cfg, len(tensors), keys)
        exporter = cfg.source.exporter
        if native.kind == "exported" and exporter == "torchscript":
            raise UserError("a torch.export .pt2 program can only be exported with the dynamo exporter — set "
                            "source.exporter: dynamo")
        if exporter == "torchscript":
            model = self._torchscript(native, example, specs, names, opset)
        else:
            # (reason, what went wrong, fix) when the dynamo export failed or wrote a graph that cannot be shipped
            problem = None
            try:
                model = _dynamo(native, example, specs, names, opset or DYNAMO_OPSET)
            except Exception as e:
                reason = first_line(e)
                if "Constraints violated" in str(e) or "specializ" in str(e):
                    raise UserError(f"the input spec marks a dim dynamic that the model fixes ({reason}) — give "
                                    "that dim a number in `inputs:`") from None
                problem = (reason, f"the dynamo exporter failed ({reason})", "try source.exporter: torchscript "
                           "(or auto)")
            else:
                problem = _dynamo_opset(model, opset, native) or _dynamo_dims(model, second, native, specs)
            if problem is None:
                native.exporter = "dynamo"
            elif exporter == "dynamo" or native.kind == "exported":
                raise UserError(f"{problem[1]} — {problem[2]}")
            else:
                warnings.warn(f"dynamo export failed ({problem[0]}); falling back to the TorchScript exporter",
                              stacklevel=2)
                native.fallback = problem[0]
                model = self._torchscript(native, example, specs, names, opset)
        name_dims(model, specs)
        strip_provenance(model)
        return model

    @staticmethod
    def _torchscript(native, example, specs, names, opset):
        opset = opset or min(DYNAMO_OPSET, TORCHSCRIPT_MAX_OPSET)
        if opset > TORCHSCRIPT_MAX_OPSET:
            raise UserError(f"the TorchScript exporter supports opset ≤ {TORCHSCRIPT_MAX_OPSET} — lower "
                            "convert.opset or use source.exporter: dynamo")
        try:
            model = _torchscript(native, example, specs, names, opset)
        except _Traced as e:
            raise UserError(str(e)) from None
        except Exception as e:
            raise UserError(f"the TorchScript exporter failed ({first_line(e)}) — try source.exporter: "
                            "dynamo") from None
        native.exporter = "torchscript"
        return model

    def predict(self, native: TorchModel, feeds, cfg):
        import torch

        specs = _specs(cfg)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in specs]
        with torch.no_grad():
            tensors, keys = _flatten(native(*args))
        names = _output_names(cfg, len(tensors), keys)
        return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}

    def threads(self, native: TorchModel, n: int):
        return torch_threads(n)

    def metadata(self, native: TorchModel, cfg):
        meta = {"torch.model": native.origin, "torch.exporter": native.exporter}
        if native.fallback:
            meta["torch.dynamo_failure"] = native.fallback
        return meta

    def code(self, cfg) -> dict[str, str]:
        return {"source.factory": cfg.source.factory} if cfg.source.factory else {}

    def source_files(self, cfg) -> list[Path]:
        files = [Path(cfg.source.path)] if cfg.source.path else []
        target = (cfg.source.factory or "").rpartition(":")[0]
        if target and is_file_ref(target):
            files.append(Path(target))
        return files

"""Pydantic models of the pipeline YAML. The JSON Schema is derived from them, and from every registered
frontend's source model and stage's options model, so adding a plugin needs no edit here."""

from __future__ import annotations

import difflib
import functools
import re
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from onnxforge.code_trust import check_code_trust, inside
from onnxforge.errors import UserError, one_line
from onnxforge.registry import FRONTENDS, STAGES, load_plugins


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def sane_path(value: str | Path) -> Path:
    """A path the OS can look up: a name over its limits makes Path.is_file() raise instead of answering no."""
    value = Path(value).expanduser()
    if "\x00" in str(value):
        raise ValueError("a path cannot hold a NUL character")
    if len(str(value)) > 4000 or any(len(part.encode()) > 255 for part in value.parts):
        raise ValueError("the path is longer than the file system allows")
    return value


def resolve_path(value: str | Path, base: str | Path | None) -> Path:
    # Paths in a YAML file are relative to that file, not to the shell's working directory.
    value = sane_path(value)
    return value if value.is_absolute() or base is None else sane_path(Path(base) / value)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    return None if value is None else resolve_path(value, (info.context or {}).get("base_dir"))


RelPath = Annotated[Path, AfterValidator(_resolve)]
DType = Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "string"]


class TensorSpec(StrictModel):
    """One model input: name, dtype, shape (ints, or names for dynamic dims) and where its data comes from."""

    name: str = Field(description="the input's name in the ONNX graph (convert names the exported input so); also "
                      "the data-file key/column read for it unless `column`/`columns` say otherwise")
    dtype: DType = Field("float32", description="element type of the input tensor; string inputs need "
                         "`categories` to be synthesized")
    shape: list[int | str | None] = Field(default_factory=lambda: ["batch"], description="dims: an int is fixed, a "
                                          "name (or null) is symbolic; the first dim is the rows (batch) axis of a "
                                          "batched input. Default: [batch]")
    column: str | None = Field(None, description="data-file key/column for this input (default: the input name)")
    columns: list[str] | None = Field(None, description="table columns stacked into a [rows, k] input")
    categories: list[str | int] | None = Field(None, description="allowed levels, used for synthetic inputs")
    low: float = Field(0.0, description="synthetic inputs: lowest value drawn (float: uniform in [low, high); "
                       "integer: uniform integers in [low, high))")
    high: float = Field(1.0, description="synthetic inputs: upper bound of the values drawn (exclusive)")
    batched: bool | None = Field(None, description="dim 0 is the batch axis (rows); false for state tensors and "
                                 "scalars, fed whole to every run; null = read off the model")
    value: float | None = Field(None, description="feed this value in every element when synthesizing (e.g. a "
                                "sample rate)")
    _synth: list[int] | None = PrivateAttr(None)  # dims the input model resolved, for synthesis only

    @property
    def keys(self) -> list[str]:
        """The table columns (record keys) this input reads: its `columns`, else `column`, else its name."""
        return list(self.columns) if self.columns else [self.column or self.name]


def _describe_framework(schema: dict[str, Any], cls: type) -> None:
    """Every frontend's `framework: Literal[...]` tag gets its description here, plugins' included."""
    prop = schema.get("properties", {}).get("framework")
    if isinstance(prop, dict) and not prop.get("description"):
        name = prop.get("const") or (prop.get("enum") or ["the frontend's name"])[0]
        prop["description"] = (f"'{name}': the frontend that loads this source and exports it to ONNX; it "
                               "decides which other source keys are allowed")


class SourceBase(StrictModel):
    """Fields every frontend accepts; frontends subclass this with `framework: Literal[...]`."""

    model_config = ConfigDict(json_schema_extra=_describe_framework)

    framework: str
    path: RelPath | None = Field(None, description="the model file")
    trust_pickle: bool = Field(False, description="allow pickle/joblib files (they run code when loaded)")
    trust_code: bool = Field(False, description="allow code the config names (factory, transform, model) from an "
                             "installed module or a file outside the config's folder")


class DataConfig(StrictModel):
    path: RelPath | None = Field(None, description="evaluation data: .npy .npz .csv .parquet")
    labels: str | None = Field(None, description="key/column holding ground-truth labels or targets")
    calibration: RelPath | None = Field(None, description="calibration data for static quantization")
    rows: int | None = Field(None, gt=0, description="use at most this many rows")
    synthetic: bool = Field(False, description="allow inputs synthesized from the input spec")
    synthetic_rows: int = Field(64, gt=0, description="rows synthesized when `synthetic` inputs are used "
                                "(validate and report; quantize and optimize size their own)")
    seed: int = Field(0, description="seed for synthesized inputs and for sampling calibration rows: the same seed "
                      "gives the same rows")


class RuntimeConfig(StrictModel):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime "
                                 "execution providers in order of preference (CPUExecutionProvider is always added "
                                 "last). One not installed, or one that does not start, is exit 2 naming what is "
                                 "installed and the package that brings it, unless allow_fallback is true")
    allow_fallback: bool = Field(False, description="run on the next available provider (with a warning) when one "
                                 "asked for is missing; the report and manifest record the provider that ran")
    provider_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict, description="per-provider onnxruntime options, e.g. {CUDAExecutionProvider: "
        "{device_id: 1}}, over onnxforge's defaults (TensorRT: fp16 engines; CUDA: heuristic conv search)")
    cache_dir: RelPath | None = Field(None, description="folder for the TensorRT engine and timing caches "
                                      "(off when null)")
    threads: int | None = Field(None, gt=0, description="intra-op threads (default: onnxruntime's choice)")

    @model_validator(mode="after")
    def _carry(self):
        # sessions built from `cfg.runtime.providers` see the fallback policy and options through the list itself
        from onnxforge.runtime import Providers

        object.__setattr__(self, "providers", Providers(self.providers, self.allow_fallback,
                                                        self.provider_options or None, self.cache_dir))
        return self


class StagesBase(StrictModel):
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler):
        # `validate:` with no body means "run with defaults"; the YAML key order is the run order.
        if isinstance(data, dict):
            data = {k: ({} if v is None else v) for k, v in data.items()}
        model = handler(data)
        if isinstance(data, dict):
            model._order = list(data.keys())
        return model

    @property
    def order(self) -> list[str]:
        return list(self._order) or [k for k in type(self).model_fields if getattr(self, k) is not None]


class PipelineBase(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name; artifacts go to run_dir/name")
    inputs: list[TensorSpec] = Field(default_factory=list, description="the model inputs: names, dtypes, shapes "
                                     "and where their data comes from (default: read off the ONNX model; "
                                     "frontends without an input signature, e.g. torch, need them for convert)")
    outputs: list[str] | None = Field(None, description="names for the model outputs")
    input_shapes: dict[str, list[int]] = Field(default_factory=dict, description="shapes for model inputs whose "
                                               "dims the model leaves symbolic (--shape NAME=d0,d1,...)")
    input_values: dict[str, float] = Field(default_factory=dict, description="a fixed value for an input when "
                                           "synthesizing, e.g. a sample rate (--value NAME=16000)")
    data: DataConfig = Field(default_factory=DataConfig, description="evaluation, calibration and synthetic data "
                             "for validate, quantize, optimize and report")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="onnxruntime settings used by every "
                                   "stage: execution providers and intra-op threads")
    run_dir: RelPath = Field(Path("runs"), description="parent folder of run folders (default: ./runs in the "
                           "working directory; a value given here is relative to this file)")
    _path: Path | None = PrivateAttr(None)

    @property
    def config_path(self) -> Path | None:
        return self._path

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) / self.name


@functools.cache
def pipeline_model() -> type[PipelineBase]:
    load_plugins()
    stage_fields: dict[str, Any] = {n: (s.options | None, Field(None, description=s.help)) for n, s in STAGES.items()}
    with warnings.catch_warnings():  # a stage named `validate` shadows BaseModel.validate; harmless here
        warnings.simplefilter("ignore")
        stages = create_model("Stages", __base__=StagesBase, **stage_fields)
    sources = tuple(f.Source for f in FRONTENDS.values())
    source_t = Annotated[Union[sources], Field(discriminator="framework")]  # noqa: UP007
    return create_model(
        "Pipeline",
        __base__=PipelineBase,
        source=(source_t, Field(description="the model to start from; `framework` picks the frontend "
                                "(torch, keras, sklearn, xgboost, lightgbm, pymc, onnx) and its keys")),
        stages=(stages, Field(default_factory=stages, description="the stages to run, in the order written; a stage "
                              "key with no body runs with its defaults")),
    )


# ---------------------------------------------------------------- YAML with line numbers


def _line_map(text: str) -> dict[tuple, int]:
    """Map each key path in the YAML to its 1-based line, so errors can point at it."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, k.value)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    try:
        walk(yaml.compose(text, Loader=_NoAliasLoader), ())
    except yaml.YAMLError:
        pass
    return lines


MAX_CONFIG_BYTES = 1 << 20  # a pipeline config is a page of YAML; anything larger is refused before parsing


MAX_CONFIG_DEPTH = 64  # nesting; a pipeline config needs about 6, Python's recursion limit is reached near 1,000


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: nested `*refs` (a "billion laughs" bomb) expand a few hundred bytes into
    gigabytes, in the loader and again in anything that walks the result. Nesting is capped too: the composer
    recurses once per level."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases are not allowed (*{event.anchor})",
                                              event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_CONFIG_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        # YAML keeps the last of two equal keys without a word: a second `validate:` (or `name:`) would silently
        # drop the first one's options
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}, also on line {seen[key]}", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def safe_yaml(text: str) -> Any:
    """YAML → Python with no tags that construct objects and no aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 — a SafeLoader subclass


def read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} — check the path")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {size:,} bytes is not a pipeline config (the limit is {MAX_CONFIG_BYTES:,}) — "
                        "point at the YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8) — point at the pipeline YAML") from None
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        fix = ("write the values out instead of *aliases" if "aliases" in str(e) else
               "flatten it: a pipeline config needs a few levels" if "nested deeper" in str(e) else
               "keep one of them: YAML would silently use only the last" if "duplicate key" in str(e) else
               "fix the syntax")
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or one_line(e)}) — {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a YAML mapping — write it as key: value lines (name:, source:, "
                        "stages: ...)")
    return data, _line_map(text)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Allowed keys of the model found by following `loc` (field names, list indices, union tags)."""
    cur: Any = model
    for part in loc:
        cur = _unwrap(cur, part)
        if cur is None:
            return []
    cur = _unwrap(cur, None)
    return list(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _unwrap(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0], part)
    if origin in (Union, getattr(__import__("types"), "UnionType", None)):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        for m in members:  # discriminated-union tag, e.g. ("source", "torch", ...)
            fw = getattr(m, "model_fields", {}).get("framework")
            if fw is not None and part in (typing.get_args(fw.annotation) or ()):
                return m
        return _unwrap(members[0], part) if len(members) == 1 else (members[0] if part is None else None)
    if origin is list:
        return typing.get_args(tp)[0] if isinstance(part, int) else tp
    if part is None:
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(part)
        return f.annotation if f is not None else None
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel], path: Path | None, lines) -> str:
    errors = err.errors()
    # a typo'd key is also a missing one (`sourec:` → source missing): the typo, with its did-you-mean, is the news
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(e["loc"])
    # pydantic inserts union tags into loc; the YAML path has no such element
    yaml_loc = tuple(p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "source" and p in FRONTENDS))
    dotted = ".".join(str(p) for p in yaml_loc) or "(top level)"
    line = None
    for n in range(len(yaml_loc), 0, -1):
        line = lines.get(yaml_loc[:n])
        if line:
            break
    where = f"{path}:{line}" if path and line else (str(path) if path else "config")
    kind = e["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(model, loc[:-1])
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        fix = f"did you mean '{hint[0]}'?" if hint else f"allowed keys: {', '.join(allowed)}"
        parent = ".".join(str(p) for p in yaml_loc[:-1]) or "the top level"
        return f"{where}: unknown key '{key}' in {parent} — {fix}"
    if kind == "union_tag_invalid":
        tag = str((e.get("ctx") or {}).get("tag", ""))
        hint = difflib.get_close_matches(tag, list(FRONTENDS), n=1, cutoff=0.5)
        fix = f"did you mean '{hint[0]}'?" if hint else f"choose one of: {', '.join(sorted(FRONTENDS))}"
        return f"{where}: unknown framework '{tag}' — {fix}"
    if kind == "missing":
        return f"{where}: missing required key '{dotted}' — add it"
    msg = str(e["msg"])
    if kind == "value_error" and " — " in msg:  # our own validator's line already names the problem and the fix
        return f"{where}: {dotted}: {msg.removeprefix('Value error, ')}"
    got = repr(e.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."  # the value may be a 5,000-character path
    return f"{where}: {dotted}: {msg} (got {got}) — fix this value"


def _confine_run_dir(cfg: PipelineBase, data: dict) -> None:
    """A config (say, from a pull request) must not make a CI job write elsewhere on the machine: a run_dir it
    sets resolves inside its own folder or the working directory; anything else only from the command line."""
    if cfg.config_path is None or "run_dir" not in data:
        return
    target = Path(cfg.run_dir)
    if not (inside(target, cfg.config_path.parent) or inside(target, Path.cwd())):
        raise UserError(f"{cfg.config_path.name}: run_dir {data['run_dir']} resolves to {target.resolve()}, outside "
                        "the config's folder and the working directory — give --run-dir on the command line to "
                        "write there")


def parse_config(data: dict, path: Path | None = None, lines: dict | None = None,
                 run_dir: Path | None = None) -> PipelineBase:
    """`run_dir` (from the command line) overrides the config's and may point anywhere."""
    model = pipeline_model()
    base = Path(path).resolve().parent if path else Path.cwd()
    try:
        cfg = model.model_validate(data, context={"base_dir": base})
    except ValidationError as err:
        raise UserError(format_validation_error(err, model, path, lines or {})) from None
    cfg._path = Path(path).resolve() if path else None
    if run_dir is not None:
        cfg.run_dir = Path(run_dir).expanduser().resolve()
    else:
        _confine_run_dir(cfg, data)
    for name in cfg.stages.order:
        if name not in STAGES:  # unreachable with extra=forbid, kept as a guard for plugins
            raise UserError(f"unknown stage '{name}'")
    check_code_trust(cfg)
    return cfg


def load_config(path: str | Path, run_dir: Path | None = None) -> PipelineBase:
    data, lines = read_yaml(Path(path))
    return parse_config(data, Path(path), lines, run_dir)


SCHEMA_ID = "https://onnxforge.dev/schemas/pipeline.schema.json"


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the pipeline YAML, from the models here, every registered frontend's
    Source model and every stage's options model."""
    body = pipeline_model().model_json_schema()
    head = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "onnxforge pipeline",
            "description": "A pipeline config for `onnxforge run` (and --config of the stage commands): the source "
                           "model, its inputs, data, runtime and the stages to run, in the order written. Relative "
                           "paths are relative to the YAML file."}
    return head | {k: v for k, v in body.items() if k not in head}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"

"""Decisions are data. A stage that chooses from measurements (quantize: which INT8 candidate, is it slower than
float; optimize: a pass kept or rejected for speed, is the result slower) writes the choice and its figures to
`<config file>.lock` beside the config. A rerun whose inputs hash the same reuses the entry without timing
again, so the artifacts are byte-identical; `remeasure` times again and rewrites the entry; `locked` refuses to
measure (the `cargo --locked` pattern, for CI).

The file (YAML, sorted keys, no timestamps: meant to be committed):

    format: 1
    decisions:
      quantize:                        # one entry per stage of the config
        key: <sha256 of stage, input, options, data, onnxforge>
        inputs: {stage: quantize, input: <sha256 of the stage's input model>, options: <sha256>,
                 data: <sha256>, onnxforge: 0.1.0, upstream: <sha256>}
        decision: {...}                # what the stage chose, with its figures

`upstream` (what the input model is made from: the source files, the config's model description and the
options of the model-producing stages before this one) is not part of the key: it lets `locked` refuse before
anything runs, instead of after the earlier stages rebuilt the input model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxforge import __version__
from onnxforge.errors import CheckFailed, UserError

MODES = ("use", "remeasure", "locked")
FORMAT = 1
MAX_LOCK_BYTES = 16 << 20
# options that only judge the recorded figures (never change what is measured or chosen): toggling them (the CLI's
# --require-faster) must not invalidate a lock
JUDGING_OPTIONS = frozenset({"require_faster"})
FIX = "rerun with --remeasure and commit the lock"


def _h(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def lock_path(cfg) -> Path | None:
    p = cfg.config_path
    return None if p is None else Path(p).with_name(Path(p).name + ".lock")


def decides(opts) -> bool:
    """Whether a stage's options declare decisions made from measurements (`timed_decisions` on the class)."""
    return bool(getattr(type(opts), "timed_decisions", False))


@dataclass(frozen=True)
class Key:
    stage: str
    input: str | None  # sha256 of the stage's input model
    options: str
    data: str
    onnxforge: str
    upstream: str

    @property
    def digest(self) -> str:
        return _h([self.stage, self.input, self.options, self.data, self.onnxforge])

    def as_dict(self) -> dict:
        return asdict(self)


def options_hash(opts) -> str:
    return _h({k: v for k, v in opts.model_dump(mode="json").items() if k not in JUDGING_OPTIONS})


def data_hash(cfg) -> str:
    """The data a decision is measured on: file contents (never their paths: keys are the same on every machine),
    the data settings, and the inputs description that shapes the feeds."""
    from onnxforge.artifact import sha256_file

    d = cfg.data
    files = {k: sha256_file(p) if p is not None and Path(p).is_file() else None
             for k, p in (("path", d.path), ("calibration", d.calibration))}
    settings = d.model_dump(mode="json", exclude={"path", "calibration"})
    model = cfg.model_dump(mode="json", include={"inputs", "outputs", "input_shapes", "input_values"})
    return _h({"files": files, "settings": settings, "model": model})


def _no_dirs(v: Any) -> Any:
    """A source setting without this machine's folders ('/home/me/x/model.py:fn' → 'model.py:fn')."""
    if isinstance(v, dict):
        return {k: _no_dirs(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_dirs(x) for x in v]
    if isinstance(v, str) and ("/" in v or "\\" in v):
        head, sep, tail = v.rpartition(":") if not Path(v).exists() else (v, "", "")
        if head and Path(head).is_absolute():
            return Path(head).name + sep + tail
    return v


def upstream_hash(cfg, stage: str, order: list[str]) -> str:
    """What the stage's input model is made from, known before anything runs."""
    from onnxforge.artifact import sha256_file
    from onnxforge.registry import STAGES, frontend

    files = sorted(sha256_file(p) for p in frontend(cfg.source.framework).source_files(cfg) if p and Path(p).is_file())
    before = [(n, getattr(cfg.stages, n).model_dump(mode="json")) for n in order[: order.index(stage)]
              if STAGES[n].produces_model]
    model = cfg.model_dump(mode="json", include={"inputs", "outputs", "input_shapes", "input_values"})
    return _h({"source": _no_dirs(cfg.source.model_dump(mode="json")), "files": files, "before": before,
               "model": model})


class Lock:
    """The lock of one config for one command: entries read once, this command's decisions collected, written
    once at the end (atomically, only when something changed; never in `locked` mode, never without a config)."""

    def __init__(self, path: Path | None, mode: str = "use"):
        if mode not in MODES:
            raise UserError(f"lock mode {mode!r}: use one of {', '.join(MODES)}")
        self.path, self.mode = (Path(path) if path else None), mode
        self.entries: dict[str, dict] = self._read() if self.path is not None and mode != "remeasure" else {}
        self.now: dict[str, dict] = {}  # stage → the entry this command used or recorded
        self.settled: set[str] = set()  # stages this command ran (an entry they did not use or record is stale)

    @classmethod
    def for_config(cls, cfg, mode: str = "use") -> Lock:
        path = lock_path(cfg)
        if path is None and mode == "locked":
            raise UserError("--locked needs --config (the lock sits beside the config)")
        return cls(path, mode)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _read(self) -> dict[str, dict]:
        from onnxforge.config import safe_yaml

        p = self.path
        if p is None or not p.is_file():
            return {}
        bad = f"{p.name}: not a lock file onnxforge wrote"
        if p.stat().st_size > MAX_LOCK_BYTES:
            raise UserError(f"{bad} (over {MAX_LOCK_BYTES >> 20} MiB) — delete it, or {FIX}")
        try:
            raw = safe_yaml(p.read_bytes().decode("utf-8"))
        except Exception as e:  # invalid YAML, not UTF-8, aliases
            raise UserError(f"{bad} ({type(e).__name__}) — delete it, or {FIX}") from None
        decisions = raw.get("decisions") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(decisions, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("inputs"), dict)
                and isinstance(e.get("decision"), dict) for e in decisions.values()):
            raise UserError(f"{bad} (format {FORMAT} with decisions: per stage) — delete it, or {FIX}")
        return decisions

    # ---- keys
    def key(self, cfg, stage: str, opts, model_sha: str | None, upstream: str) -> Key:
        return Key(stage, model_sha, options_hash(opts), data_hash(cfg), __version__, upstream)

    def why(self, key: Key, entry: dict | None, *, upfront: bool = False) -> str:
        """Why `entry` does not serve `key`, in words."""
        if self.path is None:
            return "no config, so no lock"
        if not self.path.is_file():
            return f"there is no lock file ({self.path.name})"
        if entry is None:
            return f"{self.path.name} holds no decision for this stage"
        was = entry.get("inputs") or {}
        if was.get("onnxforge") != key.onnxforge:
            return f"the lock was written by onnxforge {was.get('onnxforge')}, this is {key.onnxforge}"
        if was.get("options") != key.options:
            return "the stage's options changed since the lock was written"
        if was.get("data") != key.data:
            return "the data (files or data/inputs settings) changed since the lock was written"
        if upfront and was.get("upstream") != key.upstream:
            return ("the input model changed since the lock was written (the source or an earlier stage's options "
                    "differ)")
        if not upfront and was.get("input") != key.input:
            return "the input model changed since the lock was written"
        return "the lock entry does not match"

    def precheck(self, keys: list[Key]) -> None:
        """`locked`: refuse before anything runs when a deciding stage has no entry for what it will be given."""
        if self.mode != "locked":
            return
        bad = []
        for k in keys:
            e = self.entries.get(k.stage)
            was = (e or {}).get("inputs") or {}
            if not e or any(was.get(f) != getattr(k, f) for f in ("options", "data", "onnxforge", "upstream")):
                bad.append(f"{k.stage}: {self.why(k, e, upfront=True)}")
        if bad:
            raise CheckFailed(f"{'; '.join(bad)} — {FIX}")

    # ---- what stages call (through Decisions)
    def lookup(self, key: Key) -> dict | None:
        """The recorded decision for `key`, or None when it must be measured; `locked` raises CheckFailed instead."""
        if self.mode == "remeasure" or self.path is None:
            return None
        e = self.entries.get(key.stage)
        if e is not None and e.get("key") == key.digest:
            self.now[key.stage] = self._entry(key, e["decision"])  # the upstream recorded may be refreshed
            return e["decision"]
        if self.mode == "locked":
            raise CheckFailed(f"{key.stage}: {self.why(key, e)} — {FIX}")
        return None

    def record(self, key: Key, decision: dict) -> None:
        if self.mode == "locked":
            raise CheckFailed(f"{key.stage}: would have to measure with --locked — {FIX}")
        self.now[key.stage] = self._entry(key, decision)

    def matching(self, key: Key) -> dict | None:
        """The entry for `key` if the lock holds one (no side effects)."""
        e = self.entries.get(key.stage)
        return e if self.mode != "remeasure" and e is not None and e.get("key") == key.digest else None

    def keep(self, key: Key, entry: dict) -> None:
        """A stage taken from the run cache: its entry stays in use (restored from the manifest if the lock lacks it)."""
        self.now[key.stage] = self._entry(key, entry["decision"])

    @staticmethod
    def _entry(key: Key, decision: dict) -> dict:
        # plain JSON values only (tuples → lists, paths → str): what YAML and the manifest both write and read back
        return {"key": key.digest, "inputs": key.as_dict(), "decision": json.loads(json.dumps(decision, default=str))}

    def save(self, order: list[str]) -> Path | None:
        """Write this command's entries plus those of the config's stages it did not reach; entries of stages no
        longer in the config, or that ran without deciding, are dropped. Only when the content changes."""
        if self.path is None or self.mode == "locked":
            return None
        new = {}
        for st in order:
            if st in self.now:
                new[st] = self.now[st]
            elif st not in self.settled and st in self.entries:
                new[st] = self.entries[st]
        old = self.entries
        if self.mode == "remeasure":  # never read at the start: a broken lock must not stop a remeasure
            try:
                old = self._read()
            except UserError:
                old = {}
        if new == old and (self.path.is_file() or not new):
            return None
        from onnxforge.artifact import atomic_write_text

        return atomic_write_text(self.path, render(new, self.path.name[: -len(".lock")]))


def render(decisions: dict, config_name: str) -> str:
    import yaml

    head = (f"# onnxforge lock for {config_name}: decisions made from measurements, with their figures.\n"
            f"# Commit it: reruns with the same inputs reuse these decisions (byte-identical artifacts).\n"
            f"# `onnxforge run {config_name} --remeasure` measures again; `--locked` refuses to (CI).\n")
    class Dumper(yaml.SafeDumper):
        pass

    def seq(dumper, data):  # [0.91, 1.12] on one line; lists of mappings as blocks
        flow = all(not isinstance(x, (dict, list)) for x in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, seq)
    body = yaml.dump({"format": FORMAT, "decisions": decisions}, Dumper=Dumper, sort_keys=True,
                     default_flow_style=False, allow_unicode=True, width=120)
    return head + body


class Decisions:
    """The lock as one stage sees it: `recorded()` (reuse) or `record()` (after measuring). Without a lock (a loose
    model and no config) both are no-ops and everything is measured."""

    def __init__(self, lock: Lock | None = None, key: Key | None = None):
        self.lock, self.key = lock, key

    @property
    def enabled(self) -> bool:
        return self.lock is not None and self.lock.enabled and self.key is not None

    def recorded(self) -> dict | None:
        return self.lock.lookup(self.key) if self.enabled else None

    def record(self, decision: dict) -> None:
        if self.enabled:
            self.lock.record(self.key, decision)

    def invalid(self, why: str) -> UserError:
        """A matching entry the stage cannot use (edited by hand?)."""
        name = self.lock.path.name if self.enabled else "the lock"
        return UserError(f"{self.key.stage if self.key else 'stage'}: the entry in {name} is not one this onnxforge "
                         f"wrote ({why}) — {FIX}")

    def source(self, reused: bool) -> dict:
        d: dict[str, Any] = {"source": "lock" if reused else "measured"}
        if self.enabled:
            d["lock"] = self.lock.path.name
        return d

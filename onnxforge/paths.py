"""Paths in files that leave the machine (manifest.json, validation.json, report.*) and paths read back from them.

Written: relative to a folder the reader knows (the run folder, the config's folder, the working directory), else
the bare file name, so a report posted from CI names no user, home or machine layout.
Read: a run folder is untrusted input (it may come from a CI artifact), so a path it names must stay inside it."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

from onnxforge.errors import UserError

# an absolute POSIX or Windows path with at least one folder (so "rows/s" or "1/2" never match)
_ABS = re.compile(r"(?<![\w.~:/\\-])(?:/|[A-Za-z]:[\\/])(?:[^\s/\\'\"`<>|,;()\[\]]+[/\\])+[^\s/\\'\"`<>|,;()\[\]]*")


def _forms(base: Path | str) -> list[str]:
    """The spellings a folder can have in a message: as given, normalized, and with symlinks resolved."""
    out = []
    for f in (os.path.abspath(base), os.path.realpath(base)):
        f = f.rstrip("/\\")
        if f and f not in out and len(Path(f).parts) > 1:  # never the filesystem root
            out.append(f)
    return out


def shown(path: Path | str, *bases: Path | str | None) -> str:
    """`path` relative to the first base it lies inside (no '..'), else its file name."""
    for p in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        for b in bases:
            if b is None:
                continue
            for f in _forms(b):
                try:
                    rel = Path(p).relative_to(f)
                except ValueError:
                    continue
                return rel.as_posix() if rel.parts else "."
    return Path(path).name or str(path)


def scrub(obj: Any, *bases: Path | str | None) -> Any:
    """A copy of a JSON-able object whose strings hold no absolute path: each base folder's prefix is cut (so
    paths inside it stay readable), any other absolute path becomes its file name."""
    forms = sorted({f for b in bases if b is not None for f in _forms(b)}, key=len, reverse=True)

    def text(s: str) -> str:
        if "/" not in s and "\\" not in s:
            return s
        for f in forms:
            if s == f:
                return "."
            s = s.replace(f + os.sep, "").replace(f + "/", "")
        return _ABS.sub(lambda m: shown(m.group(0), *bases), s)

    def walk(v: Any) -> Any:
        if isinstance(v, str | PurePath):
            return text(str(v))
        if isinstance(v, dict):
            return {walk(k) if isinstance(k, str) else k: walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(obj)


def quoted(value: Any, limit: int = 80) -> str:
    """An untrusted value for a one-line message: control characters escaped, length capped."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest parent that exists (a dangling link counts): where an output path meets the disk, so
    a file there (`--output afile/x.csv`) is refused by name before a mkdir fails on it."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return p
    return path


def inside(folder: Path, rel: Any, what: str) -> Path:
    """folder/rel for a path read from the run folder's manifest; anything that is not a relative path staying
    inside the folder (absolute, '..', a symlink out) is refused before it is opened."""
    bad = not isinstance(rel, str) or not rel or "\0" in rel
    if not bad:
        bad = Path(rel).is_absolute() or bool(PureWindowsPath(rel).drive) or rel.startswith(("/", "\\"))
    if not bad:
        path = folder / rel
        try:
            path.resolve().relative_to(folder.resolve())  # resolve(): a symlink out of the folder is outside
        except (ValueError, OSError, RuntimeError):
            bad = True
    if bad:
        raise UserError(f"{folder / 'manifest.json'}: {what} {quoted(rel)} is not a path inside the run folder — "
                        "a tampered or foreign run folder; rerun `onnxforge run` to regenerate it")
    return path

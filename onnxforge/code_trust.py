"""A config that names code (a torch `factory`, a PyMC `transform` or `model`) runs that code. Running it is
opt-in: a file inside the config's own folder belongs to the config; anything else — an installed module such as
`subprocess:run`, a file elsewhere on the machine — runs only with `source.trust_code: true`. Code named on the
command line (no config file: `convert --source-opt factory=...`) is what the user typed, and runs.

Checked when the config is parsed, so `config check`, `run` and every stage refuse before anything is imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnxforge.errors import UserError


@dataclass(frozen=True)
class CodeRef:
    field: str  # e.g. "source.factory"
    ref: str  # 'file.py:fn' (resolved) or 'package.module:fn'
    file: Path | None  # the .py file, or None for an importable module
    trusted_by: str | None  # "beside the config" | "the command line" | "source.trust_code" | None (refused)

    def as_dict(self) -> dict:
        return {"field": self.field, "ref": self.ref, "file": str(self.file) if self.file else None,
                "trusted_by": self.trusted_by}


def is_file_ref(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def inside(path: Path, folder: Path) -> bool:
    """`path` lies in `folder` once both are resolved (a symlink out of the folder is outside)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def code_refs(cfg) -> list[CodeRef]:
    """What code loading this config's source would run."""
    from onnxforge.registry import frontend

    out = []
    for field, ref in frontend(cfg.source.framework).code(cfg).items():
        target = str(ref).rpartition(":")[0]
        file = Path(target) if is_file_ref(target) else None
        if cfg.config_path is None:
            by = "the command line"
        elif file is not None and inside(file, cfg.config_path.parent):
            by = "beside the config"
        else:
            by = "source.trust_code" if cfg.source.trust_code else None
        out.append(CodeRef(field, str(ref), file, by))
    return out


def check_code_trust(cfg) -> list[CodeRef]:
    refs = code_refs(cfg)
    for r in refs:
        if r.trusted_by:
            continue
        where = f"the config's folder {cfg.config_path.parent}"
        what = f"{r.file.resolve()} (outside {where})" if r.file else f"'{r.ref}' from an installed module"
        raise UserError(f"{r.field} runs code: {what} — onnxforge runs code named by a config only from a file "
                        "beside it, or with source.trust_code: true if you trust this config")
    return refs

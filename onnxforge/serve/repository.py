"""What the server serves: an .onnx file (one model, version "1") or a run folder (its final artifact by default,
every stage's artifact as a version "1", "2", ... in stage order), each version with its model and its runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxforge.errors import UserError


@dataclass
class Entry:
    version: str
    stage: str | None
    path: Path


@dataclass
class Plan:
    """Versions of one model found on disk, before anything is loaded."""

    name: str
    entries: list[Entry]
    default: str
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def plan(target: Path, name: str | None = None) -> Plan:
    from onnxforge.config import slug

    target = Path(target)
    if target.is_dir():
        from onnxforge.paths import inside
        from onnxforge.stages.report.collect import read_manifest

        manifest = read_manifest(target)
        entries, seen = [], set()
        for s in manifest["stages"]:
            rel = s.get("model")
            if not rel or rel in seen:
                continue
            seen.add(rel)
            path = inside(target, rel, f"stage {str(s.get('name'))[:40]!r} names model")
            if path.is_file():
                entries.append(Entry(str(len(entries) + 1), str(s.get("name")), path))
        if not entries:
            raise UserError(f"{target}: the run has no model artifact yet — run its convert stage first")
        final = manifest.get("final_model")
        default = next((e.version for e in entries if final and e.path == target / final), entries[-1].version)
        return Plan(name or slug(str(manifest.get("name") or target.name)), entries, default, target)
    if not target.is_file():
        raise UserError(f"{target}: no such file or run folder — give an .onnx file or a run folder (runs/NAME)")
    return Plan(name or slug(target.stem), [Entry("1", None, target)], "1")

"""The output of a partitioned predict: a folder of parquet parts plus a manifest, resumable.

`part-00000.parquet` … one per input part, each written under a hidden temporary name and renamed into place
when complete, so a part file that exists is whole. `_onnxforge_predict.json` records what the parts were made
from (model, input files, chunk size, options): a rerun with the same ones skips the finished parts; anything
else is refused unless `--overwrite`. pyarrow and pandas read the folder as one dataset (they skip names starting
with `.` or `_`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from onnxforge.errors import UserError

MANIFEST = "_onnxforge_predict.json"


def part_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _ours(p: Path) -> bool:
    name = p.name
    return (name.startswith("part-") and name.endswith(".parquet")) or name.startswith(".part-") or name == MANIFEST


def prepare(out_dir: Path, key: dict, *, overwrite: bool) -> tuple[set[int], bool]:
    """(indexes of finished parts to skip, whether this call created the folder). Writes the manifest."""
    created = not out_dir.exists()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output {out_dir} is a file — give a folder for partitioned output (or a .parquet/.csv/"
                        ".npz file name for one file)")
    manifest = out_dir / MANIFEST
    done: set[int] = set()
    if out_dir.is_dir():
        entries = list(out_dir.iterdir())
        foreign = [p.name for p in entries if not _ours(p)]
        if foreign:
            raise UserError(f"--output {out_dir} holds other files ({', '.join(sorted(foreign)[:3])}) — give an "
                            "empty or new folder (predict never deletes what it did not write)")
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError):
                old = None
            same = isinstance(old, dict) and old.get("key") == key
            if not same and not overwrite:
                raise UserError(f"--output {out_dir} holds predictions made from another model, input or options — "
                                "pass --overwrite to redo them, or choose another folder")
            if same and not overwrite:
                done = {int(p.name[5:10]) for p in entries if p.name.startswith("part-") and p.name[5:10].isdigit()}
        elif any(p.name.startswith("part-") for p in entries) and not overwrite:
            raise UserError(f"--output {out_dir} holds parts without a manifest — pass --overwrite to redo them, or "
                            "choose another folder")
        for p in entries:  # temporaries of a stopped run always go; parts unless they are resumed
            if p.name.startswith(".part-") or (p.name != MANIFEST and (overwrite or not done)):
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    from onnxforge.artifact import atomic_write_json

    atomic_write_json(manifest, {"key": key, "complete": False})
    return done, created


def finish(out_dir: Path, key: dict, summary: dict) -> None:
    from onnxforge.artifact import atomic_write_json

    atomic_write_json(out_dir / MANIFEST, {"key": key, "complete": True, **summary})


def remove_new(out_dir: Path, written: set[int], created: bool) -> None:
    """After a refusal: the parts this call wrote and its temporary files go; resumed parts stay; a folder this
    call created goes entirely (nothing is left behind)."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.name.startswith(".part-") or (created and _ours(p)):
            p.unlink(missing_ok=True)
        elif p.name.startswith("part-") and p.name[5:10].isdigit() and int(p.name[5:10]) in written:
            p.unlink(missing_ok=True)
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def discard(pq, tmp: Path) -> None:
    """Drop a half-written output: close its parquet writer (errors ignored: it is being thrown away), unlink it."""
    if pq is not None:
        try:
            pq.close()
        except Exception:
            pass
    tmp.unlink(missing_ok=True)


class PartWriter:
    """One part's chunks → its parquet file, under a hidden temporary name until close()."""

    def __init__(self, out_dir: Path, index: int):
        self.path = part_path(out_dir, index)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=out_dir)
        os.close(fd)
        self.tmp = Path(tmp)
        self._pq = None
        self.rows = 0

    def write(self, cols: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(cols)
        if self._pq is None:
            self._pq = pq.ParquetWriter(str(self.tmp), table.schema)
        self._pq.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        from onnxforge.artifact import file_mode

        if self._pq is None:
            raise UserError(f"{self.path.name}: no rows were scored for this part")
        self._pq.close()
        os.chmod(self.tmp, file_mode())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        discard(self._pq, self.tmp)

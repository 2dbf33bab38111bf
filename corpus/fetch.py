"""Pinned wheels: `pip download` once into the cache, sha256 verified; members extracted and verified."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


class CorpusError(Exception):
    """A download or a digest that does not match the manifest: the message says what and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(spec: dict, wheels: Path, log=print) -> Path:
    """The pinned wheel in `wheels/`, downloaded with the venv's pip when absent (or when a cached copy is
    damaged); a download whose name or sha256 differs from the pin is refused."""
    dest = wheels / spec["file"]
    if dest.is_file():
        if sha256(dest) == spec["sha256"]:
            return dest
        log(f"corpus: cached {dest.name} does not match its pinned sha256; downloading it again")
        dest.unlink()
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.11", "--disable-pip-version-check", "-q", "-d", tmp, f"{spec['name']}=={spec['version']}"]
        if spec.get("platform", "any") != "any":
            cmd[4:4] = ["--platform", spec["platform"]]
        log(f"corpus: downloading {spec['file']}")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise CorpusError(f"pip download {spec['name']}=={spec['version']} failed: "
                              f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
        got = [f for f in Path(tmp).iterdir() if f.suffix == ".whl"]
        if [f.name for f in got] != [spec["file"]]:
            raise CorpusError(f"pip download {spec['name']}=={spec['version']} gave {[f.name for f in got]}, the "
                              f"manifest pins {spec['file']} — refusing it (fix corpus/manifest.toml)")
        digest = sha256(got[0])
        if digest != spec["sha256"]:
            raise CorpusError(f"{spec['file']}: sha256 {digest} does not match the pinned {spec['sha256']} — "
                              "refusing it (the wheel on the index changed, or the download is corrupt)")
        shutil.move(str(got[0]), dest)
    return dest


def extract(whl: Path, member: str, dest: Path, want_sha: str | None = None) -> Path:
    """One file of the wheel at `dest`; its sha256 must equal the manifest's."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if want_sha and digest != want_sha:
        raise CorpusError(f"{whl.name}:{member}: sha256 {digest} does not match the pinned {want_sha} — refusing it")
    dest.write_bytes(data)
    return dest


def extract_dir(whl: Path, prefix: str, dest: Path) -> Path:
    """Every file under `prefix/` in the wheel, flat into `dest` (a test_data_set_N folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        names = [n for n in z.namelist() if n.startswith(prefix.rstrip("/") + "/") and not n.endswith("/")]
        if not names:
            raise CorpusError(f"{whl.name} has no files under {prefix}")
        for n in names:
            (dest / Path(n).name).write_bytes(z.read(n))
    return dest

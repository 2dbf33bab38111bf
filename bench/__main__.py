"""`python -m bench [NAME ...] [--quick]`: run every bench/bench_*.py (or the NAMEs), write bench/results.json and
bench/results.md, and each suite's own bench/out/<suite>.json and .md.

Each module exposes `run() -> list[dict]`, each dict a table: {"title": str, "columns": [str], "rows": [[...]],
"notes": str (optional), "data": any JSON (optional)}. Ratios are computed inside one run, never across runs. A run of
some suites replaces their tables in results.* and keeps the others', each suite with the date it was measured.
`--quick` runs the suites whose run() takes `quick` in a seconds-long mode (tiny sizes, few rounds), into a temporary
folder unless --out is given: its figures are for checking the machinery, not for the README.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import platform
import sys
import tempfile
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


def _header(meta: dict, suites: dict) -> str:
    dates = sorted({v["date"] for v in suites.values()}) or [meta["date"]]
    when = dates[0] if len(dates) == 1 else "; ".join(f"{k} {v['date']}" for k, v in suites.items())
    return (f"_Measured {when} on {meta['cpus']} CPUs ({meta['machine']}), Python {meta['python']}, "
            f"onnxruntime {meta['onnxruntime']}; every ratio compares numbers taken in the same run._\n\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--out", default=None, help="folder for results.json/.md (default: bench/; --quick: a "
                    "temporary folder)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few rounds, for checking the benches "
                    "themselves (suites without a quick mode are skipped)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else HERE
    mods = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    tables: list[dict] = []
    failed, ran = [], {}
    import onnxruntime

    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
            "onnxruntime": onnxruntime.__version__, "quick": args.quick}
    for name in mods:
        short = name.removeprefix("bench_")
        if args.names and short not in args.names:
            continue
        t0 = time.perf_counter()
        print(f"bench: {short} ...", flush=True)
        suite_tables = []
        try:
            mod = importlib.import_module(f"bench.{name}")
            quick_ok = "quick" in inspect.signature(mod.run).parameters
            if args.quick and not quick_ok:
                print(f"bench: {short} has no quick mode: skipped", flush=True)
                continue
            for t in (mod.run(quick=True) if args.quick else mod.run()):
                t.setdefault("suite", short)
                suite_tables.append(t)
        except Exception:
            traceback.print_exc()
            failed.append(short)
        wall = time.perf_counter() - t0
        print(f"bench: {short} done in {wall:.1f}s", flush=True)
        ran[short] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "wall_s": round(wall, 1),
                      "failed": short in failed}
        tables += suite_tables
        if suite_tables and not args.quick:  # each suite's own files, beside the sklearn matrix's
            own = {"meta": meta | {"date": ran[short]["date"], "suite": short}, "tables": suite_tables}
            (HERE / "out").mkdir(exist_ok=True)
            (HERE / "out" / f"{short}.json").write_text(json.dumps(own, indent=2, default=str) + "\n")
            (HERE / "out" / f"{short}.md").write_text(_header(meta, {short: ran[short]}) + to_markdown(suite_tables))
    out.mkdir(parents=True, exist_ok=True)
    suites = dict(ran)
    prev = out / "results.json"
    if args.names and prev.is_file():  # a partial run: the other suites' tables stay, with their own dates
        old = json.loads(prev.read_text())
        old_suites = old.get("meta", {}).get("suites") or {}
        kept = [t for t in old.get("tables", []) if t.get("suite") not in ran]
        for t in kept:
            suites.setdefault(t.get("suite"), old_suites.get(t.get("suite")) or {"date": old["meta"]["date"]})
        order = {s: i for i, s in enumerate(m.removeprefix("bench_") for m in mods)}
        tables = sorted(kept + tables, key=lambda t: order.get(t.get("suite"), len(order)))
        suites = {k: suites[k] for k in sorted(suites, key=lambda s: order.get(s, len(order)))}
    meta |= {"failed": failed, "suites": suites}
    prev.write_text(json.dumps({"meta": meta, "tables": tables}, indent=2, default=str) + "\n")
    (out / "results.md").write_text(_header(meta, suites) + to_markdown(tables))
    print(f"bench: wrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`make fuzz`: run N seeded fuzz cases (default 10,000) on parallel workers, print a summary table and write it
to runs/fuzz/summary.{json,md} (every case's outcome to runs/fuzz/cases.jsonl; failing cases keep their folder
under runs/fuzz/cases/ to rerun by hand).

    .venv/bin/python tests/fuzz/run_fuzz.py -n 10000 -j 2          # the sweep
    .venv/bin/python tests/fuzz/run_fuzz.py --case 17-validate-model.dims --keep   # one case, in full
    .venv/bin/python tests/fuzz/run_fuzz.py -n 300 --start 5000     # another slice of the same sequence
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXIT_COLS = ("0", "1", "2", "3", "other")


def _norm(text: str) -> str:
    """A message with its case-specific parts (paths, numbers, quoted names) blanked, to group failures."""
    text = re.sub(r"(/[^\s:'\"(),]+)+", "<path>", text)
    text = re.sub(r"<case>[^\s:'\"(),]*", "<path>", text)
    text = re.sub(r"'[^']{0,80}'", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:160]


def _signature(res: dict, f: dict) -> str:
    where = res.get("where")
    if f["kind"] in ("exit3", "uncaught") and where:
        exc = re.match(r"(?:internal error: )?(\w+)", f["message"])
        return f"{f['kind']} @ {re.sub(r':[0-9]+$', '', where)} · {exc[1] if exc else ''}"
    if f["kind"] == "gate-bypass":
        return f"{f['kind']} · {res['command']}"
    if f["kind"] in ("residue", "tmp-leak", "input-modified", "missing-output"):
        return f"{f['kind']} · {res['command']} · {_norm(f['message'])[:110]}"
    return f"{f['kind']} · {_norm(f['message'])}"


def summarize(results: list[dict], wall: float, workers: int) -> dict:
    per_cmd: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    kinds: collections.Counter = collections.Counter()
    distinct: dict[str, dict] = {}
    no_hint: dict[str, dict] = {}
    noisy: dict[str, dict] = {}
    for r in results:
        code = r.get("exit")
        col = str(code) if code in (0, 1, 2, 3) else "other"
        per_cmd[r["command"]][col] += 1
        per_cmd[r["command"]]["cases"] += 1
        for f in r.get("failures", []):
            kinds[f["kind"]] += 1
            sig = _signature(r, f)
            d = distinct.setdefault(sig, {"kind": f["kind"], "count": 0, "reproducer": r["id"], "message": f["message"],
                                          "where": r.get("where"), "command": r["command"], "detail": r.get("detail"),
                                          "argv": " ".join(r.get("argv", []))})
            d["count"] += 1
        if r.get("noise") and not r.get("failures"):
            sig = _norm(r.get("noise_sample", ""))
            noisy.setdefault(sig, {"count": 0, "reproducer": r["id"], "exit": r.get("exit"),
                                   "message": r.get("noise_sample", "")})["count"] += 1
        if r.get("hint") is False:
            sig = _norm(r.get("message", ""))
            no_hint.setdefault(sig, {"count": 0, "reproducer": r["id"], "message": r.get("message", "")})["count"] += 1
    failing = [r for r in results if r.get("failures")]
    slow = sorted(results, key=lambda r: -(r.get("seconds") or 0))[:10]
    return {
        "cases": len(results), "failing_cases": len(failing), "wall_seconds": round(wall, 1), "workers": workers,
        "case_seconds": round(sum(r.get("seconds") or 0 for r in results), 1),
        "per_command": {c: dict(per_cmd[c]) for c in harness.COMMANDS if c in per_cmd},
        "failures_by_kind": dict(kinds.most_common()),
        "exit3": sum(1 for r in results if r.get("exit") == 3),
        "residue": kinds.get("residue", 0) + kinds.get("tmp-leak", 0) + kinds.get("input-modified", 0),
        "distinct_failures": sorted(distinct.values(), key=lambda d: (d["kind"], -d["count"])),
        "exit2_without_fix_hint": sorted(no_hint.values(), key=lambda d: -d["count"]),
        "stderr_noise_on_success": sorted(noisy.values(), key=lambda d: -d["count"]),
        "slowest": [{"id": r["id"], "seconds": r.get("seconds"), "exit": r.get("exit")} for r in slow],
    }


def markdown(s: dict) -> str:
    out = ["# onnxforge fuzz summary", "",
           f"{s['cases']:,} cases · {s['failing_cases']:,} failing · exit 3: {s['exit3']:,} · residue: "
           f"{s['residue']:,} · {s['wall_seconds']:.0f} s wall on {s['workers']} worker(s)", "",
           "| command | cases | " + " | ".join(f"exit {c}" for c in EXIT_COLS) + " |",
           "|---|---:|" + "---:|" * len(EXIT_COLS)]
    for cmd, c in s["per_command"].items():
        out.append(f"| {cmd} | {c.get('cases', 0)} | " + " | ".join(str(c.get(k, 0)) for k in EXIT_COLS) + " |")
    out += ["", "| failure kind | cases |", "|---|---:|"]
    out += [f"| {k} | {n} |" for k, n in s["failures_by_kind"].items()] or ["| (none) | 0 |"]
    out += ["", "## Distinct failures", "", "| kind | cases | reproducer | where | message |", "|---|---:|---|---|---|"]
    for d in s["distinct_failures"]:
        msg = d["message"].replace("|", "\\|").replace("\n", " ")[:200]
        out.append(f"| {d['kind']} | {d['count']} | `{d['reproducer']}` | {d.get('where') or ''} | {msg} |")
    if s["exit2_without_fix_hint"]:
        out += ["", "## Exit-2 messages without a fix (soft: not a failure)", "", "| cases | reproducer | message |",
                "|---:|---|---|"]
        for d in s["exit2_without_fix_hint"][:40]:
            out.append(f"| {d['count']} | `{d['reproducer']}` | {d['message'][:200].replace('|', '/')} |")
    if s["stderr_noise_on_success"]:
        out += ["", "## Warnings or native log lines on stderr in passing cases (soft)", "",
                "| cases | reproducer | exit | first line |", "|---:|---|---:|---|"]
        for d in s["stderr_noise_on_success"][:40]:
            out.append(f"| {d['count']} | `{d['reproducer']}` | {d['exit']} | {d['message'][:200].replace('|', '/')} |")
    out += ["", "## Slowest cases", "", "| case | seconds | exit |", "|---|---:|---:|"]
    out += [f"| `{x['id']}` | {x['seconds']} | {x['exit']} |" for x in s["slowest"]]
    out += ["", "Rerun one case: `.venv/bin/python tests/fuzz/run_fuzz.py --case ID --keep`"]
    return "\n".join(out) + "\n"


def table(s: dict) -> str:
    w = max(len(c) for c in [*s["per_command"], "command"])
    lines = [f"{'command':<{w}}  {'cases':>6}  " + "  ".join(f"{'exit ' + c:>10}" for c in EXIT_COLS)]
    for cmd, c in s["per_command"].items():
        lines.append(f"{cmd:<{w}}  {c.get('cases', 0):>6}  " + "  ".join(f"{c.get(k, 0):>10}" for k in EXIT_COLS))
    lines.append("")
    lines.append(f"cases {s['cases']:,}  failing {s['failing_cases']:,}  exit-3 {s['exit3']:,}  residue "
                 f"{s['residue']:,} (output/run folder, TMPDIR, inputs)  wall {s['wall_seconds']:.0f} s")
    for k, n in s["failures_by_kind"].items():
        lines.append(f"  {k:<15} {n:>6}")
    lines.append(f"\ndistinct failures ({len(s['distinct_failures'])}):")
    for d in s["distinct_failures"]:
        lines.append(f"  [{d['kind']}] ×{d['count']}  {d['reproducer']}  {d.get('where') or ''}\n      "
                     f"{d['message'][:220]}")
    lines.append("\nslowest: " + ", ".join(f"{x['id']} {x['seconds']}s" for x in s["slowest"][:5]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--cases", type=int, default=10_000)
    ap.add_argument("--start", type=int, default=0, help="index of the first case in the sequence")
    ap.add_argument("-j", "--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--case", action="append", default=[], help="run only this case (SEED-COMMAND-MUTATION)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fuzz")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case before the worker is killed")
    ap.add_argument("--keep", action="store_true", help="keep every case folder (failing ones are always kept)")
    args = ap.parse_args(argv)
    todo = [harness.Case.parse(c) for c in args.case] if args.case else harness.cases(args.cases, args.start)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "cases"
    q: queue.Queue = queue.Queue()
    for c in todo:
        q.put(c)
    results: list[dict] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    jsonl = open(args.out / ("case.jsonl" if args.case else "cases.jsonl"), "w")  # noqa: SIM115

    def drive(k: int) -> None:
        w = harness.Worker(work, timeout=args.timeout, log=args.out / f"worker{k}.log")
        try:
            while True:
                try:
                    case = q.get_nowait()
                except queue.Empty:
                    return
                res = w.run(case, keep=args.keep or bool(args.case))
                with lock:
                    results.append(res)
                    jsonl.write(json.dumps(res, default=str) + "\n")
                    jsonl.flush()
                    n = len(results)
                    if res.get("failures"):
                        print(harness.describe(res) if len(todo) <= 50 else
                              f"FAIL {res['id']}: " + "; ".join(f"{f['kind']}: {f['message'][:150]}"
                                                                for f in res["failures"]), flush=True)
                    if n % 250 == 0:
                        el = time.perf_counter() - t0
                        print(f"... {n:,}/{len(todo):,} cases, {el:.0f} s, ~{el / n * (len(todo) - n):.0f} s left",
                              flush=True)
        finally:
            w.close()

    threads = [threading.Thread(target=drive, args=(k,), daemon=True) for k in range(min(args.jobs, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jsonl.close()
    results.sort(key=lambda r: r["seed"])
    s = summarize(results, time.perf_counter() - t0, len(threads))
    if args.case:
        for r in results:
            if not r.get("failures"):
                print(f"case {r['id']}: ok (exit {r.get('exit')}: {r.get('message', '')})\n  argv: onnxforge "
                      f"{' '.join(r.get('argv', []))}\n  folder: {r.get('folder')}")
        return 1 if s["failing_cases"] else 0
    (args.out / "summary.json").write_text(json.dumps(s, indent=2, default=str) + "\n")
    (args.out / "summary.md").write_text(markdown(s))
    print("\n" + table(s))
    print(f"\nwrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 1 if s["failing_cases"] else 0


if __name__ == "__main__":
    sys.exit(main())

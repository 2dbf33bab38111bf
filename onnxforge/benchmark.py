"""Latency benchmarks: an ONNX artifact per batch size and thread setting, and the native framework's predict
measured in the same run, so every ratio compares numbers taken side by side. Used by `onnxforge bench` and by
the report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxforge.data import fixed_batch, tile_rows
from onnxforge.timing import paired, speed_text, stats

ORT = "onnxruntime"


# ------------------------------------------------------------------ inputs


def feeds_for(model, *, cfg=None, data: Path | None = None, rows: int = 64, seed: int = 0, path=None,
              shapes: dict | None = None):
    """Benchmark inputs: the given or configured data file, else synthesized from the input model (fine for
    latency). Returns (feeds, provenance, what was synthesized or None, the input specs)."""
    from onnxforge import data as d
    from onnxforge.inputspec import plan

    specs = plan(model, path, _with_overrides(cfg, shapes))
    path = data or (cfg.data.path if cfg is not None else None)
    if path is not None:
        return d.feeds_from_table(d.load_table(path), specs), str(path), None, specs
    feeds = d.synthesize(specs, rows, seed)
    return feeds, "synthetic", (specs.log[-1] if specs.log else None), specs


def inputs_label(feeds: dict[str, np.ndarray], batch: int, *, specs=None, source: str | None = None) -> str:
    """What a timing at `batch` was computed on: 'synthetic inputs: x float32[1, 64] in [0, 30522)' (the very
    shapes fed, symbolic dims as the input model resolved them), or 'real data: data/test.npz, 450 rows'."""
    from onnxforge import data as d
    from onnxforge.inputspec import describe, line

    if source is not None:
        return f"real data: {source}, {d.n_rows(feeds):,} rows"
    return "synthetic inputs: " + line(describe(tile_rows(feeds, batch), specs))


def _with_overrides(cfg, shapes: dict | None):
    """The config (or a bare stand-in) with --shape/--value merged into its input_shapes/input_values."""
    from types import SimpleNamespace

    if not shapes:
        return cfg
    base = SimpleNamespace(inputs=list(getattr(cfg, "inputs", None) or []),
                           input_shapes=dict(getattr(cfg, "input_shapes", None) or {}),
                           input_values=dict(getattr(cfg, "input_values", None) or {}))
    base.input_shapes.update(shapes.get("input_shapes") or {})
    base.input_values.update(shapes.get("input_values") or {})
    return base


# ------------------------------------------------------------------ progress


class _NoProgress:
    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


@contextlib.contextmanager
def progress_bar(console) -> Iterator[Any]:
    """A rich progress bar on the console (transient), or a silent stand-in when there is no console."""
    if console is None:
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as p:
        yield p


# ------------------------------------------------------------------ measuring


@dataclass
class Case:
    """One thing to time: a callable plus the row it becomes. `wrap` is entered around every block of calls; when
    it yields a ThreadLimit (a native framework's thread limit), the row says whether it held each time."""

    engine: str
    label: str
    batch: int
    threads: int | None
    fn: Callable[[], object]
    extra: dict = field(default_factory=dict)
    wrap: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    times: list[float] = field(default_factory=list)
    round_times: list[list[float]] = field(default_factory=list)  # the same calls by interleaved round
    limits: list = field(default_factory=list)

    def entered(self, got) -> None:
        if hasattr(got, "applied"):
            self.limits.append(got)

    def row_extra(self) -> dict:
        if not self.limits:
            return self.extra
        bad = next((g for g in self.limits if not g.applied), None)
        return {**self.extra, "threads_applied": bad is None, "threads_note": (bad or self.limits[-1]).how}


def run_cases(cases: list[Case], *, runs: int, warmup: int, max_seconds: float, rounds: int = 3,
              progress=None, task=None) -> list[dict]:
    """Time every case in `rounds` interleaved blocks (A B C, A B C, ...) rather than one after the other, so a
    noisy neighbour or a clock change hits all of them alike and the ratios stay fair. Each case gets `warmup`
    untimed calls (and one more at the start of each block), then up to `runs` timed calls in total, stopping a
    case early after max_seconds but keeping at least min(5, runs) calls."""
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    for c in cases:
        with c.wrap() as got:
            c.entered(got)
            for _ in range(warmup):
                c.fn()
    for n in per_round:
        for c in cases:
            with c.wrap() as got:
                c.entered(got)
                if warmup:
                    c.fn()  # the other cases ran in between: re-warm caches, untimed
                deadline = time.perf_counter() + max_seconds / rounds
                c.round_times.append([])
                for i in range(n):
                    t0 = time.perf_counter()
                    c.fn()
                    c.times.append(time.perf_counter() - t0)
                    c.round_times[-1].append(c.times[-1])
                    if i >= max(1, -(-5 // rounds)) - 1 and time.perf_counter() > deadline:
                        break
            if progress is not None:
                progress.advance(task, 1 / rounds)
    return [{"engine": c.engine, "label": c.label, "batch": c.batch, "threads": c.threads,
             **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats(c.times, c.batch).items()},
             "round_p50_ms": [round(float(np.median(t)) * 1e3, 6) for t in c.round_times if t],
             **c.row_extra()} for c in cases]


def onnx_cases(model_path: Path, feeds: dict[str, np.ndarray], *, batches: list[int], threads: list[int | None],
               providers: list[str] | None = None, label: str | None = None) -> list[Case]:
    """onnxruntime cases of one model for every (batch, threads) setting: one session per thread count."""
    from onnxforge import runtime
    from onnxforge.admission import open_session

    label = label or Path(model_path).name
    cases = []
    for t in threads:
        sess = open_session(model_path, provider_list=runtime.requested(providers), threads=t)  # admitted already
        names = [o.name for o in sess.get_outputs()]
        for b in batches:
            batch = tile_rows(feeds, b)
            runtime.run(sess, batch, names)  # inputs that do not fit the model: one line, exit 2, before timing
            # the provider that really ran it (the session's first active one), not the one asked for
            cases.append(Case(ORT, label, b, t, lambda s=sess, f=batch, n=names: s.run(n, f),
                              extra={"provider": runtime.ran_on(sess)}))
    return cases


def native_cases(fe, native, cfg, feeds: dict[str, np.ndarray], *, batches: list[int],
                 threads: list[int | None]) -> list[Case]:
    """The frontend's own predict (the reference validate uses), timed like the ONNX model. Each thread count is
    applied through the frontend's `threads` hook (XGBoost nthread, LightGBM num_threads, sklearn n_jobs plus
    OpenMP/BLAS pools, torch.set_num_threads, TensorFlow's pools); whether it held is read back and recorded in
    the row (`threads_applied`, `threads_note`), and a row whose limit did not hold gets no ratio."""
    cases = []
    for t in threads:
        for b in batches:
            batch = tile_rows(feeds, b)
            cases.append(Case(f"{fe.name} native", f"{fe.name} (native)", b, t,
                              lambda f=batch: fe.predict(native, f, cfg),
                              wrap=(lambda t=t: fe.threads(native, t)) if t is not None else contextlib.nullcontext))
    return cases


def applied(row: dict) -> bool:
    """False for a row whose thread limit was asked for but did not hold (the framework ran on its default)."""
    return row.get("threads_applied", True) is not False


def pick_baseline(rows: list[dict], preferred: str | None) -> str | None:
    """`preferred` when some of its rows held their thread limit, else the first label whose rows all did: a
    figure taken on an unknown number of threads is no baseline."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if preferred is not None and any(applied(r) for r in rows if r["label"] == preferred):
        return preferred
    return next((lab for lab in labels if all(applied(r) for r in rows if r["label"] == lab)), None)


def ratios(rows: list[dict], baseline: str) -> list[dict]:
    """Speed of every engine relative to the `baseline` label at the same batch and threads (>1 = faster). Rows
    whose thread limit did not hold (on either side) get none."""
    base = {(r["batch"], r["threads"]): r for r in rows if r["label"] == baseline and applied(r)}
    out = []
    for r in rows:
        b = base.get((r["batch"], r["threads"]))
        if b is None or r["label"] == baseline or not applied(r):
            continue
        ratio = {"label": r["label"], "baseline": baseline, "batch": r["batch"], "threads": r["threads"],
                 "p50_ms": r["p50_ms"], "baseline_p50_ms": b["p50_ms"],
                 "speedup": b["p50_ms"] / r["p50_ms"] if r["p50_ms"] > 0 else float("inf")}
        base_rounds, rounds = b.get("round_p50_ms") or [], r.get("round_p50_ms") or []
        if base_rounds and len(base_rounds) == len(rounds):
            # the rounds ran interleaved, so each gives a paired ratio: a speedup inside the noise says so
            pr = paired(base_rounds, rounds)
            ratio |= {"interval": pr.as_dict()["interval"], "rounds": pr.rounds, "verdict": pr.verdict()}
        out.append(ratio)
    return out


def usable_batches(model, batches: list[int]) -> tuple[list[int], list[int]]:
    """(batches the model accepts, batches skipped because its inputs pin another batch size)."""
    fixed = fixed_batch(model)
    if fixed is None:
        return list(dict.fromkeys(batches)), []
    ok = [b for b in dict.fromkeys(batches) if b == fixed]
    return (ok or [fixed]), [b for b in batches if b != fixed]


def unbatched(feeds) -> bool:
    """Whether no input has a batch axis (scalars, inputs fed whole): a call then runs one row whatever the batch
    asked, so the model pins batch 1 — never tiled or counted as more rows."""
    from onnxforge.data import whole

    skip = whole(feeds)
    return bool(feeds) and all(k in skip or not np.ndim(v) for k, v in feeds.items())


# ------------------------------------------------------------------ the `bench` command


def bench_cli(model: Path, *, batches: list[int], threads: list[int], runs: int, config: Path | None,
              console=None, warmup: int = 10, max_seconds: float = 10.0, rounds: int = 3,
              shapes: dict | None = None) -> dict:
    """`onnxforge bench`: latency of MODEL per batch and thread setting; with --config also the source's native
    predict (or, for an ONNX source, the source file itself in onnxruntime), with ratios."""
    from onnxforge.admission import admit, check_feeds
    from onnxforge.errors import UserError

    model = Path(model)
    if runs < 1:
        raise UserError(f"--runs {runs}: give at least 1 timed run")
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise UserError("--batch and --threads take positive integers, e.g. --batch 1 --batch 64 --threads 1")
    proto = admit(model, session=False).model  # onnx_cases builds the sessions, with the user's threads
    cfg = None
    if config is not None:
        from onnxforge.config import load_config

        cfg = load_config(config)
    ok, skipped = usable_batches(proto, batches)
    if skipped and console is not None:
        console.print(f"[yellow]{model.name} has a fixed batch of {ok[0]}: skipping batch {skipped}[/yellow]")
    # 64 rows at most, tiled up to each batch: latency does not need distinct rows, and the synthetic-input cap
    # then guards the model's declared shapes while the batch the user asked for meets the memory cap
    feeds, provenance, synthesized, specs = feeds_for(proto, cfg=cfg, rows=min(max(ok), 64), path=model,
                                                      shapes=shapes)
    check_feeds(feeds, proto, what=f"the inputs ({provenance})", model_name=model.name)
    if unbatched(feeds) and ok != [1]:  # every input fed whole (scalars, state): one call is one row at any "batch"
        skipped = [b for b in batches if b != 1]
        ok = [1]
        if console is not None:
            console.print(f"[yellow]{model.name} has no input with a batch axis (each is fed whole): timed at batch "
                          f"1, skipping batch {skipped}[/yellow]")
    source = None
    if provenance != "synthetic":
        from onnxforge.paths import shown

        source = shown(provenance, Path.cwd(), cfg.config_path.parent if cfg is not None and cfg.config_path else None)
    label = model.name
    providers = cfg.runtime.providers if cfg is not None else None
    native_kind, fe, native = None, None, None
    if cfg is not None:
        native_kind = "onnx-source" if cfg.source.framework == "onnx" else "native"
        if native_kind == "native":
            from onnxforge.registry import frontend

            fe = frontend(cfg.source.framework)
            fe.preset_threads(threads[0])  # TensorFlow fixes its pools when it starts: before the model loads
            native = fe.load(cfg)
        elif cfg.source.path is None or Path(cfg.source.path).resolve() == model.resolve():
            native_kind = None  # the source is this very file: nothing else to compare with
        else:
            admit(cfg.source.path, what="source model", session=False)
    cases = onnx_cases(model, feeds, batches=ok, threads=list(threads), providers=providers, label=label)
    baseline = None
    if native_kind == "native":
        native = native_cases(fe, native, cfg, feeds, batches=ok, threads=list(threads))
        baseline = native[0].label
        cases = native + cases
    elif native_kind == "onnx-source":
        baseline = f"source {Path(cfg.source.path).name}"
        if baseline == label:
            baseline = f"source {cfg.source.path}"
        cases = onnx_cases(Path(cfg.source.path), feeds, batches=ok, threads=list(threads), providers=providers,
                           label=baseline) + cases
    with progress_bar(console) as prog:
        task = prog.add_task(f"bench {label}", total=len(cases))
        rows = run_cases(cases, runs=runs, warmup=warmup, max_seconds=max_seconds, rounds=rounds, progress=prog,
                         task=task)
    shown_inputs = {b: inputs_label(feeds, b, specs=specs, source=source) for b in ok}
    for r in rows:
        r["inputs"] = shown_inputs[r["batch"]]
    asked = baseline
    baseline = pick_baseline(rows, baseline) if baseline else None
    if asked and baseline != asked:
        baseline = None  # the source is what a bench compares with: no ratio rather than one against another
    result = {"model": str(model), "inputs": provenance,
              "synthesized_inputs": synthesized, "inputs_by_batch": {str(b): v for b, v in shown_inputs.items()},
              "runs": runs, "warmup": warmup, "rounds": rounds, "batches": ok,
              "skipped_batches": skipped, "threads": list(threads), "baseline": baseline, "results": rows,
              "ratios": ratios(rows, baseline) if baseline else []}
    if console is not None:
        render(result, console)
    return result


def render(result: dict, console) -> None:
    from rich.table import Table

    from onnxforge.timing import threads_label as threads_text

    t = Table(title=f"latency of {Path(result['model']).name} — {result['runs']} timed runs after "
                    f"{result['warmup']} warm-up")
    for c in ("engine", "model", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "rows/s", "runs"):
        t.add_column(c, justify="left" if c in ("engine", "model") else "right")
    for r in result["results"]:
        engine = r["engine"] + (f" ({r['provider'].removesuffix('ExecutionProvider')})" if r.get("provider") else "")
        tail = [f"{r[k]:.3f}" if r[k] is not None else "—" for k in ("p90_ms", "p99_ms")]
        t.add_row(engine, r["label"], str(r["batch"]), threads_text(r), f"{r['p50_ms']:.3f}", *tail,
                  f"{r['mean_ms']:.3f}", f"{r['rows_per_s']:,.0f}", str(r["runs"]))
    console.print(t)
    if any(r[k] is None for r in result["results"] for k in ("p90_ms", "p99_ms")):
        console.print("— : p90 needs 10 timed runs and p99 100 (fewer make it the slowest run under another name); "
                      "raise --runs")
    for b, text in (result.get("inputs_by_batch") or {}).items():
        console.print(f"batch {b}: {text}", markup=False, soft_wrap=True)
    for r in result["results"]:
        if not applied(r) and r["batch"] == result["batches"][0]:
            console.print(f"{r['label']}, {r['threads']} thread(s) asked: not applied — {r.get('threads_note')}; "
                          "its figures ran on the framework's default threads and get no speed ratio",
                          markup=False, soft_wrap=True)
    if result["ratios"]:
        rt = Table(title=f"speed relative to {result['baseline']} (same run; >1 = faster)")
        for c in ("model", "batch", "threads", "p50 ms", "baseline p50 ms", "speedup"):
            rt.add_column(c, justify="left" if c == "model" else "right")
        for r in result["ratios"]:
            rt.add_row(r["label"], str(r["batch"]), str(r["threads"]), f"{r['p50_ms']:.3f}",
                       f"{r['baseline_p50_ms']:.3f}", speed_text(r))
        console.print(rt)

"""`onnxforge serve`: check the options and the artifact, bind the socket, run uvicorn (one process, or a
supervisor and N workers sharing the socket), drain on SIGTERM.

The artifact is loaded before the port is bound, so a bad model or option exits 2 with one line and nothing
listening. On SIGTERM uvicorn stops accepting, answers every request already accepted (queued ones included),
then the runners close; readiness fails meanwhile.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from onnxforge.errors import UserError

DRAIN_S = 30  # the longest a SIGTERM waits for accepted requests before closing them


def log_config(level: str) -> dict:
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(message)s"},
                       "named": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"access": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
                     "main": {"class": "logging.StreamHandler", "formatter": "named", "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["main"], "level": level.upper(), "propagate": False},
                    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
                    "onnxforge.serve": {"handlers": ["main"], "level": level.upper(), "propagate": False},
                    "onnxforge.serve.access": {"handlers": ["access"], "level": "INFO", "propagate": False}},
    }


def check_options(*, port: int, workers: int, threads: int | None, max_batch_size: int, max_queue_delay_ms: float,
                  max_queue: int, max_body_bytes: int) -> None:
    checks = [(0 <= port <= 65535, f"--port {port}: give 0-65535 (0 picks a free port)"),
              (workers >= 1, f"--workers {workers}: give 1 or more processes"),
              (threads is None or threads >= 1, f"--threads {threads}: give 1 or more onnxruntime threads"),
              (max_batch_size >= 0, f"--max-batch-size {max_batch_size}: give 0 (no batching) or more rows"),
              (0 <= max_queue_delay_ms <= 10_000, f"--max-queue-delay-ms {max_queue_delay_ms}: give 0-10000"),
              (max_queue >= 1, f"--max-queue {max_queue}: give 1 or more requests"),
              (max_body_bytes >= 1, f"--max-body-bytes {max_body_bytes}: give 1 or more bytes")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}) — choose another --port or --host"
                        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(opts, *, host: str, port: int, workers: int, log_level: str = "info", console=None) -> dict:
    import uvicorn

    from onnxforge.serve.app import ENV, create, options_env
    from onnxforge.serve.quota import threads_per_worker

    if opts.threads is None:
        opts.threads = threads_per_worker(workers)
    app = create(opts)  # the artifact is checked here, before anything listens (a bad one exits 2)
    sock = bind(host, port)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    srv = app.state.server
    line = (f"serving {srv.name} (versions {', '.join(srv.models)}; default {srv.plan.default}) at {where} — "
            f"{workers} worker(s) × {opts.threads} onnxruntime thread(s)"
            f"{'; playground ' + where + '/ui' if opts.ui else ''}")
    print(line, file=sys.stderr, flush=True)
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    common = dict(log_config=log_config(log_level), access_log=False, timeout_graceful_shutdown=DRAIN_S,
                  loop=loop, http=http, lifespan="on", server_header=False)
    # uvicorn re-raises the signal it drained on; a handler of ours turns that into a normal exit 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    tmp = None
    try:
        if workers == 1:
            uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            del app  # each worker builds its own sessions
            tmp = tempfile.mkdtemp(prefix="onnxforge-serve-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
            os.environ[ENV] = options_env(opts)
            config = uvicorn.Config("onnxforge.serve.app:from_env", factory=True, workers=workers, **common)
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        logging.getLogger("onnxforge.serve").debug("stopped")
    return {"url": where, "model": srv.name if workers == 1 else opts.name, "workers": workers,
            "threads": opts.threads}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None

"""A fork server ("zygote") for run_cli (issue #21): one long-lived helper per pytest process imports onnxforge.cli
and the heavy frameworks once, then forks a child per CLI call. The child gets the call's own env, cwd, argv and
fds 0/1/2, runs `python -m onnxforge` through runpy and leaves with os._exit(code), so exit codes, separate
stdout/stderr, crashes and timeouts behave as with a fresh `python -m onnxforge` process.

What a fork cannot reproduce goes to a real subprocess (see `unservable_keys`): a different interpreter start-up or
import-time environment, and anything that has to see a fresh hash seed (children share the zygote's)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading

# Import only: no TF context, no torch/ORT thread pools, nothing that runs ops. Not imported, on purpose:
# xgboost, lightgbm and onnxmltools — the tabular frontend records their versions only when they are in
# sys.modules (i.e. the model used them), so preloading them would change manifests.
PRELOAD = ("numpy", "pandas", "pyarrow", "onnx", "onnxruntime", "sklearn", "skl2onnx", "skops.io", "torch",
           "torch.onnx", "onnxscript", "onnxslim", "pytensor", "pymc", "xarray", "tensorflow", "keras", "tf2onnx")

# The keras frontend setdefaults these before importing TF; the zygote imports TF with them, so a call that does
# not set them is served exactly as a fresh process would be after the frontend's setdefault.
IMPORT_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

# Env read at interpreter start-up or when the preloaded frameworks import (thread pools, backends, caches,
# locale, temp dir): a call whose value differs from the zygote's gets a real subprocess.
_SENSITIVE_PREFIXES = ("PYTHON", "TF_", "KERAS", "PYTENSOR", "THEANO", "OMP_", "MKL_", "OPENBLAS", "GOTOBLAS",
                       "KMP_", "BLIS_", "VECLIB", "NUMEXPR", "CUDA", "XLA_", "JAX", "TORCH", "PYTORCH", "ORT_",
                       "MPL", "LD_", "MALLOC", "LC_", "XDG_", "ARROW", "JEMALLOC", "ONEDNN", "DNNL", "HDF5", "TPU_")
_SENSITIVE_KEYS = {"HOME", "TMPDIR", "TEMP", "TMP", "LANG", "LANGUAGE"}  # not PATH: commands look it up when they run
# read when used, not at import (torch's inductor sets it in the test process on first use; inductor isn't preloaded)
_RUNTIME_KEYS = {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"}


def _sensitive(key: str) -> bool:
    return key not in _RUNTIME_KEYS and (key in _SENSITIVE_KEYS or key.startswith(_SENSITIVE_PREFIXES))


def zygote_env(env: dict) -> dict:
    return {**IMPORT_DEFAULTS, **env}


def unservable_keys(env: dict, before: dict, after: dict) -> list[str]:
    """The env keys that keep a child forked from a zygote started with env `before` (`after` its imports) from
    seeing the import-time world a fresh process started with `env` would see; [] = servable. A value the imports set themselves (TF sets
    KMP_INIT_AT_FORK, TF2_BEHAVIOR, ... when a test imported it in-process, they reach every call's env) counts
    as the same: a fresh process's imports would find it already set to what they set."""
    bad = []
    for k in sorted({*env, *before, *after}):
        if _sensitive(k):
            v = env.get(k, IMPORT_DEFAULTS.get(k))
            if v != before.get(k) and not (k not in before and v == after.get(k)):
                bad.append(k)
    return bad


# ------------------------------------------------------------------ the helper process


def _child(req: dict, proto: tuple[int, int]) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # its own group: a timeout kills whatever the command started too
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's start-up defaults
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for fd in proto:
            os.close(fd)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["out"], os.O_WRONLY | os.O_TRUNC),
                                (2, req["err"], os.O_WRONLY | os.O_TRUNC)):
            f = os.open(path, flags)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(req["cwd"])
        os.environ.clear()  # os.environ writes through to the C environ, so native code sees the call's env too
        os.environ.update(req["env"])
        sys.path[0] = os.getcwd()  # as `python -m` sets it
        sys.argv = ["-m", *req["argv"]]
        # forked children would otherwise share the zygote's random streams; a fresh process seeds from the OS
        import random

        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        code = _run()
    finally:
        os._exit(code)


def _run() -> int:
    import atexit
    import runpy

    try:
        runpy.run_module("onnxforge", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # as the interpreter reports an uncaught exception
        code = 1
    # what the interpreter does on the way out: wait for non-daemon threads, atexit handlers, flush stdio
    try:
        threading._shutdown()
    except BaseException:
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            code = code or 120
    return code


def _exit_code(c) -> int:
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xFF
    try:
        print(c, file=sys.stderr)
    except BaseException:
        pass
    return 1


def serve() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # the zygote's own fd 1 no longer reaches the protocol pipe
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent shuts it down (EOF), not Ctrl-C
    import importlib

    import onnxforge.cli  # noqa: F401

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional framework that is absent stays absent for the children too
            pass
    rd = os.fdopen(proto_in, "rb", buffering=0)
    wr = os.fdopen(proto_out, "wb", buffering=0)

    def send(obj) -> None:
        wr.write(json.dumps(obj).encode() + b"\n")

    send({"ready": os.getpid(), "env": {k: v for k, v in os.environ.items() if _sensitive(k)}})
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = rd.read(65536)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, (proto_in, proto_out))
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        send({"code": os.waitstatus_to_exitcode(status)})


# ------------------------------------------------------------------ the pytest side


class ZygoteDied(RuntimeError):
    pass


class Zygote:
    def __init__(self, env: dict, cwd: str):
        self.env = env
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True)
        self._buf = b""
        self.after = self._recv(None)["env"]  # ready: the imports are done

    def _recv(self, deadline: float | None) -> dict:
        import time

        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ZygoteDied("the CLI zygote exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], env: dict, cwd: str, out: str, err: str, timeout: float | None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": cwd, "out": out,
                                              "err": err}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ZygoteDied(str(e)) from None
        pid = self._recv(None)["pid"]
        try:
            return self._recv(deadline)["code"]
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._recv(None)  # the zygote reaps it
            raise

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


_zygote: Zygote | None = None
_broken = False  # it failed to start once: don't pay the imports again on every call
_busy = threading.Lock()  # one call at a time; a concurrent one (a test running CLIs in threads) goes fresh


def _translate(data: bytes) -> str:
    # what subprocess.run(text=True) does
    import locale

    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def _log(msg: str) -> None:
    if log := os.environ.get("ONNXFORGE_TEST_ZYGOTE_LOG"):  # which calls went fresh, and why
        with open(log, "a") as f:
            f.write(msg + "\n")


def run(argv: list[str], env: dict, cwd: str, timeout: float | None, base_env: dict, start_cwd: str):
    """(code, stdout, stderr) through the zygote, or None when it cannot serve this call faithfully. The zygote
    starts (once) with `base_env`, the env a plain call gets."""
    if not _busy.acquire(blocking=False):
        _log(f"fresh: concurrent call {argv}")
        return None
    try:
        return _run_locked(argv, env, cwd, timeout, base_env, start_cwd)
    finally:
        _busy.release()


def _run_locked(argv, env, cwd, timeout, base_env, start_cwd):
    global _zygote, _broken
    if _broken or not os.path.isdir(cwd):  # subprocess.run raises for a missing cwd; let it
        return None
    if _zygote is not None and _zygote.proc.poll() is not None:
        _zygote = None
    if _zygote is None:
        try:
            _zygote = Zygote(zygote_env(base_env), start_cwd)
        except ZygoteDied:
            _log("the zygote did not start: every call runs fresh")
            _broken = True
            return None
    bad = unservable_keys(env, _zygote.env, _zygote.after)
    if bad:
        _log(f"fresh: {bad} {argv}")
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cli-zygote-") as d:
        out, err = os.path.join(d, "out"), os.path.join(d, "err")
        for p in (out, err):
            open(p, "wb").close()
        try:
            code = _zygote.run(argv, env, cwd, out, err, timeout)
        except ZygoteDied:
            _log(f"the zygote died: {argv} runs fresh")
            _zygote = None
            return None
        except TimeoutError:
            with open(out, "rb") as fo, open(err, "rb") as fe:
                raise subprocess.TimeoutExpired([sys.executable, "-m", "onnxforge", *argv], timeout,
                                                fo.read(), fe.read()) from None
        with open(out, "rb") as fo, open(err, "rb") as fe:
            return code, _translate(fo.read()), _translate(fe.read())


def shutdown() -> None:
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


if __name__ == "__main__":
    serve()

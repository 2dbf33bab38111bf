"""A real `onnxforge serve` process for the HTTP tests: bound to 127.0.0.1 on a free port (--port 0, read back
from its first line), its stderr drained into `lines` (access logs), always stopped (SIGTERM, then kill)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Served:
    def __init__(self, target, *args: str, timeout: float = 120):
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxforge", "serve", str(target), "--host", "127.0.0.1",
                                      "--port", "0", *map(str, args)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = None
        started = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if self.port is None and line.startswith("serving ") and " at http://127.0.0.1:" in line:
                    self.port = int(line.split(" at http://127.0.0.1:")[1].split()[0])
                    started.set()
            started.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + timeout
        while not started.wait(0.1):
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start:\n" + "\n".join(self.lines[-30:]))
        if self.port is None:
            self.stop()
            raise AssertionError("the server exited:\n" + "\n".join(self.lines[-30:]))

    def call(self, method: str, path: str, body=None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, dict | list):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **(headers or {})}
            chunked = body is not None and not isinstance(body, bytes | str)  # an iterator: sent chunked
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, _, raw = self.call(method, path, body, **kw)
        return status, json.loads(raw)

    def metrics(self) -> dict[str, float]:
        """Sample name with labels → value, from /metrics."""
        _, _, raw = self.call("GET", "/metrics")
        out = {}
        for line in raw.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(5)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

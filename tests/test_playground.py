"""The browser playground (`onnxforge serve --ui`) in headless Chromium: the page loads, builds its form from the
input spec, scores a row in the browser (onnxruntime-web, vendored and served by this server) and on the server,
and the outputs agree; every request the page makes goes to the server itself (no CDN)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from conftest import CONFIGS, run_cli
from serve_http_server import Served

from onnxforge.serve.playground import HERE, VENDORED

pytestmark = pytest.mark.browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed — run `make chromium`")


def _vendored() -> None:
    if not all((HERE / f).is_file() for f in VENDORED):
        pytest.fail("onnxruntime-web is not vendored — run `make playground`")


def _page_requests(netlog) -> list[str]:
    """Every URL request the page served from 127.0.0.1 initiated (Chromium's net log). Chromium's own requests
    (accounts, autofill predictions for a page with a form) carry no page initiator."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for ev in log["events"]:
        p = ev.get("params") or {}
        if ev["type"] == start and "url" in p and str(p.get("initiator", "")).startswith("http://127.0.0.1"):
            urls.append(p["url"])
    return urls


def _browse(url: str, tmp) -> tuple[dict, list[str]]:
    netlog = tmp / "net.json"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-features=AutofillServerCommunication", f"--user-data-dir={tmp / 'profile'}",
           "--virtual-time-budget=60000", f"--log-net-log={netlog}", "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'<pre id="result"[^>]*>(.*?)</pre>', p.stdout, re.S)
    assert m and m.group(1).strip(), p.stdout[-3000:]
    return json.loads(html.unescape(m.group(1))), _page_requests(netlog)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("playground")
    out = {}
    for config, name in (("sklearn_pipeline", "sklearn-pipeline"), ("torch_cnn", "torch-cnn")):
        res = run_cli("run", CONFIGS / f"{config}.yaml", "--until", "convert", cwd=work)
        assert res.code == 0, res.stderr
        out[config] = work / "runs" / name
    return out


@pytest.mark.slow  # two conversions, two servers, two browser runs: ~80 s on 2 cores
@pytest.mark.parametrize("config", ["sklearn_pipeline", "torch_cnn"])
def test_a_row_runs_in_the_browser_and_on_the_server_and_agrees(runs, config, tmp_path):
    _vendored()
    with Served(runs[config], "--ui") as s:
        result, urls = _browse(f"http://127.0.0.1:{s.port}/ui/?auto=1", tmp_path)
        assert "error" not in result, result
        assert result["agree"] is True and result["outputs"], result
        for name, o in result["outputs"].items():
            assert o["agree"] and o["browser"], (name, o)
        origin = f"http://127.0.0.1:{s.port}/"
        away = [u for u in urls if not u.startswith((origin, "blob:", "data:"))]  # blob/data: in-page, no network
        assert urls and not away, away  # nothing from a CDN
        assert any(u.endswith("ort-wasm-simd-threaded.wasm") for u in urls), urls
        assert any("/predict" in u for u in urls) and any("/ui/model.onnx" in u for u in urls), urls


def test_without_ui_nothing_of_the_playground_is_served(runs):
    with Served(runs["sklearn_pipeline"]) as s:
        assert s.call("GET", "/ui/")[0] == 404

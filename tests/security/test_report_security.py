"""`onnxforge report` treats a run folder as untrusted input (issue #20, report side): a run folder downloaded from
CI runs no code, cannot inject HTML or Markdown into report.html / report.md (the PR comment), cannot make the report
read files outside the folder or write outside its output folder, and nothing onnxforge writes names this machine's
absolute paths.

A real run folder is made once with `onnxforge run` (scikit-learn forest: convert → validate → report); each test
tampers a copy at test time. Payloads are harmless: code would create a marker file in the test's temp folder."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, FIXTURES, ROOT, assert_one_line_error, run_cli

REPORT_FILES = ("report.json", "report.md", "report.html")
SCRIPT = "<script>alert(1)</script>"
LINKS = "[x](http://evil.example/a) ![i](http://evil.example/img.png) <http://evil.example> www.evil.example a@evil.example"
RICH = "[link=http://evil.example]click[/link]"
CONTROL = "\x1b[2J\x1b]8;;http://evil.example\x07\u202e"  # clear screen, terminal hyperlink, bidi override
PAYLOAD = f"{SCRIPT} {LINKS} `tick` **b** # h | pipe {RICH} {CONTROL}"


# ------------------------------------------------------------------ one real run folder, copied per test


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report-sec")
    cfg = yaml.safe_load((CONFIGS / "sklearn_forest.yaml").read_text())
    cfg["source"]["path"] = str(FIXTURES / "tabular" / "cancer_forest.skops")  # outside the run folder and cwd
    cfg["data"]["path"] = str(FIXTURES / "data" / "cancer_test.csv")
    cfg["stages"]["report"] = {"bench": False}
    (d / "forest.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # key order is stage order
    res = run_cli("run", d / "forest.yaml", "--json", cwd=d)
    assert res.code == 0, (res.stdout[-2000:], res.stderr[-2000:])
    (d / "run.json").write_text(res.stdout)
    return d


@pytest.fixture
def run_dir(work, tmp_path) -> Path:
    d = tmp_path / "downloaded-run"
    shutil.copytree(work / "runs" / "sklearn-forest", d)
    shutil.rmtree(d / "03-report")
    return d


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _tamper(run_dir: Path, edit) -> None:
    man = _manifest(run_dir)
    edit(man)
    (run_dir / "manifest.json").write_text(json.dumps(man))


def _evil_config(folder: Path, marker: Path) -> Path:
    """A torch config whose factory, a .py file beside it, would create `marker` when imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "factory.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n\n"
                                       "def make():\n    raise RuntimeError('not a model')\n")
    (folder / "config.yaml").write_text("name: evil\nsource: {framework: torch, factory: factory.py:make}\n"
                                        "inputs: [{name: input, dtype: float32, shape: [batch, 10]}]\n"
                                        "outputs: [label]\n")
    return folder / "config.yaml"


# ------------------------------------------------------------------ 1. no code runs


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_report_runs_no_code_the_manifest_names(run_dir, tmp_path, where):
    marker = tmp_path / "PWNED"
    cfg = _evil_config(tmp_path / "evil", marker)
    named = str(cfg) if where == "absolute" else "../evil/config.yaml"
    _tamper(run_dir, lambda m: m.update(config=named))
    res = run_cli("report", run_dir, "--no-bench", "--json", cwd=tmp_path)
    time.sleep(0.2)
    assert res.code == 0, res.stderr[-2000:]
    assert not marker.exists()
    rep = res.json()["result"]
    assert rep["native"] is None
    (note,) = [n for n in rep["notes"] if n.startswith("native-model figures skipped")]
    assert "--config CONFIG.yaml --native" in note
    md = (run_dir / "report" / "report.md").read_text()
    assert "native-model figures skipped" in md and "\\-\\-native" not in md  # readable, not over-escaped


def test_report_runs_the_source_only_with_config_and_native(run_dir, tmp_path):
    """The positive control: the same payload runs once the user passes --config FILE --native themselves, so the
    refusal above is the policy working, not a broken payload; --native alone is a one-line error."""
    marker = tmp_path / "PWNED"
    cfg = _evil_config(tmp_path / "evil", marker)
    line = assert_one_line_error(run_cli("report", run_dir, "--no-bench", "--native", cwd=tmp_path), 2)
    assert "--native needs --config" in line and not marker.exists()
    res = run_cli("report", run_dir, "--no-bench", "--config", cfg, "--json", cwd=tmp_path)
    assert res.code == 0 and not marker.exists(), res.stderr[-2000:]  # --config alone reads it, runs nothing
    res = run_cli("report", run_dir, "--no-bench", "--config", cfg, "--native", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    assert marker.exists()  # the user asked for it: the factory was imported
    assert any("native reference unavailable" in n for n in res.json()["result"]["notes"])


def test_config_gives_data_without_running_code(run_dir, work, tmp_path):
    """--config without --native: the user's config supplies the data (accuracy appears), nothing is run."""
    res = run_cli("report", run_dir, "--no-bench", "--config", work / "forest.yaml", "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    rep = res.json()["result"]
    assert rep["data"]["eval"] == "cancer_test.csv" and rep["data"]["labels"] == "target"
    assert rep["native"] is None and rep["artifacts"][0]["metrics"]["accuracy"] > 0.8


# ------------------------------------------------------------------ 2. no injection into HTML or Markdown


def _poison(man: dict) -> None:
    man["name"] = PAYLOAD
    man["config"] = PAYLOAD
    man["verdict"] = PAYLOAD
    man["final_model"] = PAYLOAD
    man["versions"] = {PAYLOAD: PAYLOAD}
    for s in man["stages"]:
        s["message"] = PAYLOAD
        s["status"] = PAYLOAD
    val = next(s for s in man["stages"] if s["name"] == "validate")
    val["verdict"] = "fail"  # a failed stage's message leads both reports
    summ = val["summary"]
    summ.update(reference=PAYLOAD, data=PAYLOAD, against=PAYLOAD)
    for c in summ["comparisons"]:
        c.update(output=PAYLOAD, kind=PAYLOAD, max_abs=PAYLOAD, batch=PAYLOAD, reason=PAYLOAD)
    man["stages"].append({"name": PAYLOAD, "dir": PAYLOAD, "status": "ran", "verdict": "fail", "message": PAYLOAD,
                          "model": "01-convert/model.onnx",
                          "summary": {"before": {PAYLOAD: SCRIPT, "n": 1}, "after": {PAYLOAD: 2, "n": 2},
                                      PAYLOAD: [{PAYLOAD: SCRIPT, "x": 1}]}})


def _markdown_html(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(md)


def test_injected_fields_stay_text(run_dir, tmp_path):
    _tamper(run_dir, _poison)
    res = run_cli("report", run_dir, "--no-bench", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    out = run_dir / "report"

    page = (out / "report.html").read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "href=" not in page.lower() and "<a " not in page.lower()
    for img in re.findall(r"<img[^>]*>", page):  # only our own plots, inline
        assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]*"', img), img
    for attr in re.findall(r'\b(?:class|id|alt)="([^"]*)"', page):  # attributes hold no markup
        assert "<" not in attr and ">" not in attr, attr

    md = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)<script", md, re.I)  # only as escaped text
    assert not re.search(r"(?<!\\)\]\(", md) and not re.search(r"(?<!\\)!\[", md)  # no [text](url) / ![img](url)
    assert "http://" not in md and "www.evil" not in md  # bare URLs are autolinked by GitHub: defused
    raw_tags = set(re.findall(r"(?<!\\)</?[A-Za-z][^>\s]*", md))
    assert raw_tags <= {"<details", "<summary", "</summary", "</details"}, raw_tags
    rendered = _markdown_html(md)  # a real CommonMark renderer: no element the payload asked for
    for tag in ("<a ", "<img", "<script", "<h1", "<strong>b</strong>"):
        assert tag not in rendered, tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered  # still readable as text

    terminal = res.stdout + res.stderr
    assert RICH in terminal  # rich markup printed literally, not turned into a terminal hyperlink
    for text in (terminal, md, page):  # control sequences shown as text, never sent to a terminal
        assert "\x1b" not in text and "\u202e" not in text and "x1b" in text


def test_code_span_cannot_be_closed_early():
    from onnxforge.stages.report.markdown import code, text

    rendered = _markdown_html(f"{code('a`b``[x](http://evil)`')} and {text('![i](http://evil/i.png)')}")
    assert "<a " not in rendered and "<img" not in rendered


# ------------------------------------------------------------------ 3. no absolute machine paths


def _machine_prefixes(*extra: Path) -> list[str]:
    out = {str(ROOT), str(ROOT.resolve()), str(Path.home()), "/root/", "/home/"}
    for p in extra:
        out |= {str(p), str(p.resolve())}
    return sorted(out)


def test_run_writes_no_absolute_paths(work):
    run = work / "runs" / "sklearn-forest"
    files = [run / "manifest.json", run / "02-validate" / "validation.json", work / "run.json",
             *(run / "03-report" / f for f in REPORT_FILES)]
    for f in files:
        text = f.read_text()
        for prefix in _machine_prefixes(work, FIXTURES):
            assert prefix not in text, (f.name, prefix)
    man = _manifest(run)
    assert man["config"] == "forest.yaml"
    val = json.loads((run / "02-validate" / "validation.json").read_text())
    assert val["data"] == "cancer_test.csv"
    rep = json.loads((run / "03-report" / "report.json").read_text())
    assert rep["data"]["eval"] == "cancer_test.csv" and rep["run"]["path"] == "runs/sklearn-forest"


def test_report_command_writes_no_absolute_paths(run_dir, work, tmp_path):
    data = FIXTURES / "data" / "cancer_test.csv"
    out = tmp_path / "elsewhere" / "out"
    res = run_cli("report", run_dir, "--no-bench", "--out", out, "--data", data, "--config", work / "forest.yaml",
                  "--json", cwd=ROOT)
    assert res.code == 0, res.stderr[-2000:]
    for f in (out / f for f in REPORT_FILES):
        for prefix in _machine_prefixes(tmp_path, work):
            assert prefix not in f.read_text(), (f.name, prefix)
    assert res.json()["result"]["data"]["eval"] == "fixtures/data/cancer_test.csv"  # relative to the working directory


# ------------------------------------------------------------------ 4. paths stay inside the run folder


def _secret_model(tmp_path: Path, run_dir: Path) -> Path:
    """A readable ONNX file outside the run folder: a report that followed the path would succeed."""
    secret = tmp_path / "outside" / "secret.onnx"
    secret.parent.mkdir()
    shutil.copyfile(run_dir / "01-convert" / "model.onnx", secret)
    return secret


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_manifest_model_path_outside_the_run_is_refused(run_dir, tmp_path, how):
    secret = _secret_model(tmp_path, run_dir)
    if how == "symlink":
        (run_dir / "01-convert" / "model.onnx").unlink()
        (run_dir / "01-convert" / "model.onnx").symlink_to(secret)
        rel = "01-convert/model.onnx"
    else:
        rel = "../outside/secret.onnx" if how == "dotdot" else str(secret)
    _tamper(run_dir, lambda m: [s.update(model=rel) for s in m["stages"] if s.get("model")])
    before = hashlib.sha256(secret.read_bytes()).hexdigest()
    line = assert_one_line_error(run_cli("report", run_dir, "--no-bench", cwd=tmp_path), 2)
    assert "not a path inside the run folder" in line
    assert not (run_dir / "report").exists()  # refused before anything was measured or written
    assert hashlib.sha256(secret.read_bytes()).hexdigest() == before


def test_control_characters_in_a_refused_path_stay_on_one_line(run_dir, tmp_path):
    _tamper(run_dir, lambda m: m["stages"][0].update(model="/etc/passwd\nFAKE: all good\x1b[2J"))
    line = assert_one_line_error(run_cli("report", run_dir, "--no-bench", cwd=tmp_path), 2)
    assert "\\n" in line and "\x1b" not in line


def test_symlinked_manifest_is_refused(run_dir, tmp_path):
    real = tmp_path / "outside.json"
    shutil.move(run_dir / "manifest.json", real)
    (run_dir / "manifest.json").symlink_to(real)
    assert "not a path inside the run folder" in assert_one_line_error(
        run_cli("report", run_dir, "--no-bench", cwd=tmp_path), 2)


def test_oversized_manifest_is_refused_without_reading_it(run_dir, tmp_path):
    with open(run_dir / "manifest.json", "r+b") as f:
        f.truncate(65 << 20)  # sparse: cheap to make, 65 MiB to read
    assert "larger than any manifest" in assert_one_line_error(run_cli("report", run_dir, "--no-bench"), 2)


# ------------------------------------------------------------------ 5. writes only into its output folder


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_symlinked_report_folder_is_refused(run_dir, tmp_path):
    target = tmp_path / "victim"
    target.mkdir()
    (run_dir / "report").symlink_to(target)
    line = assert_one_line_error(run_cli("report", run_dir, "--no-bench", cwd=tmp_path), 2)
    assert "--out" in line and list(target.iterdir()) == []


def test_report_writes_only_into_its_output_folder(run_dir, tmp_path):
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.md").symlink_to(tmp_path / "victim.md")  # a planted link is replaced, not followed
    (tmp_path / "victim.md").write_text("keep")
    before = _snapshot(tmp_path)
    res = run_cli("report", run_dir, "--no-bench", cwd=tmp_path)
    assert res.code == 0, res.stderr[-2000:]
    after = _snapshot(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {f"downloaded-run/report/{f}" for f in REPORT_FILES}, changed
    assert (tmp_path / "victim.md").read_text() == "keep"
